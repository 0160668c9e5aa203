"""Dependency-free inline SVG charts for the HTML report: a line chart and a histogram.

Each function returns one ``<svg>`` element as a string: a title, "nice" value ticks on
the y axis (formatted by the caller: money, percent, ...), labelled x ticks, a light grid
and, for lines, an optional area fill. Values are plain floats; nothing here knows about
trading. A plotting library would add tens of megabytes for three small charts that this
draws just as legibly, and the page must stay one self-contained file.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from html import escape

W, H = 860, 260
PAD_L, PAD_R, PAD_T, PAD_B = 84, 18, 34, 40
Fmt = Callable[[float], str]


def plain(v: float) -> str:
    return f"{v:,.2f}" if abs(v) < 1e6 else f"{v:,.0f}"


def money(v: float) -> str:
    return f"-${-v:,.2f}" if v < 0 else f"${v:,.2f}"


def percent(v: float) -> str:
    return f"{v:.2f}%"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (steps of 1, 2 or 5 x 10^k)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) * 0.01 or 1.0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step) * step
    ticks, v = [], first
    while v < hi + step * 0.999:
        ticks.append(round(v, 10))
        v += step
    return ticks


def _frame(title: str, body: list[str], *, css: str, y_ticks: list[tuple[float, str]],
           x_ticks: list[tuple[float, str]]) -> str:
    x0, x1, y1 = PAD_L, W - PAD_R, H - PAD_B
    grid = [f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e6e9ee"/>'
            for y, _ in y_ticks]
    labels = [f'<text x="{x0 - 8}" y="{y + 4:.1f}" text-anchor="end" fill="#57606a">'
              f"{escape(t)}</text>" for y, t in y_ticks]
    labels += [f'<line x1="{x:.1f}" y1="{y1}" x2="{x:.1f}" y2="{y1 + 4}" stroke="#8c959f"/>'
               f'<text x="{x:.1f}" y="{y1 + 18}" text-anchor="middle" fill="#57606a">'
               f"{escape(t)}</text>" for x, t in x_ticks]
    axis = f'<line x1="{x0}" y1="{y1}" x2="{x1}" y2="{y1}" stroke="#8c959f"/>'
    head = (f'<text x="{x0}" y="20" font-weight="600" font-size="13" fill="#24292f">'
            f"{escape(title)}</text>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{css}" width="{W}" height="{H}" '
            f'viewBox="0 0 {W} {H}" font-family="system-ui, sans-serif" font-size="11" '
            f'role="img"><title>{escape(title)}</title>'
            + "".join([*grid, axis, *body, *labels, head]) + "</svg>")


def _empty(title: str, css: str) -> str:
    return _frame(title, [f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" '
                          'fill="#57606a">no data</text>'], css=css, y_ticks=[], x_ticks=[])


def line_chart(title: str, xs: list[str], ys: list[float], *, css: str = "line",
               color: str = "#1f6feb", fill_to_zero: bool = False, area: bool = False,
               y_fmt: Fmt = plain, baseline: float | None = None, x_labels: int = 7) -> str:
    """A line of ``ys``; ``xs`` label the points (about ``x_labels`` of them are shown).

    ``fill_to_zero`` shades between the line and 0 (drawdowns); ``area`` shades under the
    line; ``baseline`` draws a dashed reference line (e.g. the start-of-day equity).
    """
    if not ys:
        return _empty(title, css)
    lo, hi = min(ys), max(ys)
    if fill_to_zero:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    if baseline is not None:
        lo, hi = min(lo, baseline), max(hi, baseline)
    ticks = nice_ticks(lo, hi)
    lo, hi = ticks[0], ticks[-1]
    span = (hi - lo) or 1.0
    n = max(len(ys) - 1, 1)
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B

    def px(i: int) -> float:
        return x0 + (x1 - x0) * i / n

    def py(v: float) -> float:
        return y1 - (y1 - y0) * (v - lo) / span

    points = " ".join(f"{px(i):.1f},{py(v):.1f}" for i, v in enumerate(ys))
    body = []
    if fill_to_zero or area:
        floor = py(0.0) if fill_to_zero else y1
        body.append(f'<polygon points="{x0},{floor:.1f} {points} {px(len(ys) - 1):.1f},'
                    f'{floor:.1f}" fill="{color}" fill-opacity="0.15" stroke="none"/>')
    if baseline is not None:
        body.append(f'<line x1="{x0}" y1="{py(baseline):.1f}" x2="{x1}" y2="{py(baseline):.1f}" '
                    'stroke="#8c959f" stroke-dasharray="4 4"/>')
    body.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.6"/>')
    step = max(1, math.ceil(len(xs) / max(x_labels - 1, 1)))
    idx = sorted({*range(0, len(xs), step), len(xs) - 1})
    return _frame(title, body, css=css,
                  y_ticks=[(py(t), y_fmt(t)) for t in ticks],
                  x_ticks=[(px(i), xs[i]) for i in idx])


def histogram(title: str, values: list[float], *, bins: int = 20, css: str = "hist",
              color: str = "#8250df", x_fmt: Fmt = plain) -> str:
    """Counts of ``values`` in ``bins`` equal-width bins (each bar titled with its range)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return _empty(title, css)
    lo, hi = min(finite), max(finite)
    width = (hi - lo) / bins if hi > lo else 1.0
    counts = [0] * bins
    for v in finite:
        counts[min(int((v - lo) / width), bins - 1)] += 1
    ticks = [t for t in nice_ticks(0, max(counts)) if t == int(t)]
    top = max(ticks[-1], 1.0)
    x0, x1, y0, y1 = PAD_L, W - PAD_R, PAD_T, H - PAD_B
    bw = (x1 - x0) / bins
    body = [
        f'<rect x="{x0 + i * bw + 1:.1f}" y="{y1 - (y1 - y0) * c / top:.1f}" '
        f'width="{bw - 2:.1f}" height="{(y1 - y0) * c / top:.1f}" fill="{color}">'
        f"<title>{x_fmt(lo + i * width)} .. {x_fmt(lo + (i + 1) * width)}: {c}</title></rect>"
        for i, c in enumerate(counts)
    ]
    x_ticks = [(x0 + i * bw, x_fmt(lo + i * width)) for i in range(0, bins + 1, 5)]
    return _frame(title, body, css=css,
                  y_ticks=[(y1 - (y1 - y0) * t / top, f"{int(t)}") for t in ticks],
                  x_ticks=x_ticks)


__all__ = ["histogram", "line_chart", "money", "nice_ticks", "percent", "plain"]
