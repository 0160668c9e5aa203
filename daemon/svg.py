"""Dependency-free inline SVG charts for the HTML report: a line chart and a histogram.

Each function returns one ``<svg>`` element as a string, with a title, axis labels at
the extremes and a thin grid; values are plain floats. Nothing here knows about trading.
"""

from __future__ import annotations

import math
from html import escape

W, H = 720, 240
PAD_L, PAD_R, PAD_T, PAD_B = 70, 16, 28, 36


def _fmt(v: float) -> str:
    return f"{v:,.2f}" if abs(v) < 1e6 else f"{v:,.0f}"


def _frame(title: str, body: list[str], *, y_lo: float, y_hi: float, x_lo: str, x_hi: str,
           css: str) -> str:
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    grid = [f'<line x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="#ddd"/>'
            for y in (y0, (y0 + y1) / 2, y1)]
    labels = [
        f'<text x="{x0 - 6}" y="{y0 + 4}" text-anchor="end">{escape(_fmt(y_hi))}</text>',
        f'<text x="{x0 - 6}" y="{y1 + 4}" text-anchor="end">{escape(_fmt(y_lo))}</text>',
        f'<text x="{x0}" y="{H - 12}">{escape(x_lo)}</text>',
        f'<text x="{x1}" y="{H - 12}" text-anchor="end">{escape(x_hi)}</text>',
        f'<text x="{W / 2}" y="18" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
    ]
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{css}" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">'
            f'<title>{escape(title)}</title>' + "".join(grid + body + labels) + "</svg>")


def line_chart(title: str, xs: list[str], ys: list[float], *, css: str = "line",
               color: str = "#1f6feb", fill_to_zero: bool = False) -> str:
    """A polyline of ``ys`` (x labels only at both ends)."""
    if not ys:
        return _frame(title, ['<text x="50%" y="50%">no data</text>'], y_lo=0, y_hi=0,
                      x_lo="", x_hi="", css=css)
    lo, hi = min(ys), max(ys)
    if fill_to_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    span = (hi - lo) or 1.0
    n = max(len(ys) - 1, 1)
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B

    def pt(i: int, v: float) -> str:
        return f"{x0 + (x1 - x0) * i / n:.1f},{y1 - (y1 - y0) * (v - lo) / span:.1f}"

    points = " ".join(pt(i, v) for i, v in enumerate(ys))
    body = []
    if fill_to_zero:
        zero = y1 - (y1 - y0) * (0 - lo) / span
        body.append(f'<polygon points="{x0},{zero:.1f} {points} {x1},{zero:.1f}" '
                    f'fill="{color}" fill-opacity="0.25" stroke="none"/>')
    body.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"/>')
    return _frame(title, body, y_lo=lo, y_hi=hi, x_lo=xs[0], x_hi=xs[-1], css=css)


def histogram(title: str, values: list[float], *, bins: int = 20, css: str = "hist",
              color: str = "#8250df") -> str:
    """Counts of ``values`` in ``bins`` equal-width bins."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return _frame(title, ['<text x="50%" y="50%">no data</text>'], y_lo=0, y_hi=0,
                      x_lo="", x_hi="", css=css)
    lo, hi = min(finite), max(finite)
    width = (hi - lo) / bins if hi > lo else 1.0
    counts = [0] * bins
    for v in finite:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    top = max(counts)
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    bw = (x1 - x0) / bins
    body = [
        f'<rect x="{x0 + i * bw + 1:.1f}" y="{y1 - (y1 - y0) * c / top:.1f}" '
        f'width="{bw - 2:.1f}" height="{(y1 - y0) * c / top:.1f}" fill="{color}">'
        f"<title>{_fmt(lo + i * width)} .. {_fmt(lo + (i + 1) * width)}: {c}</title></rect>"
        for i, c in enumerate(counts)
    ]
    return _frame(title, body, y_lo=0, y_hi=top, x_lo=_fmt(lo), x_hi=_fmt(hi), css=css)


__all__ = ["histogram", "line_chart"]
