"""``tradingd report``: one trading day from the journal, as text and as an HTML page.

Figures: orders, fills, fill rate (orders with a fill / orders; filled / ordered
shares), slippage of each fill against its signal's reference price in basis points
(positive = paid more than the reference on a buy, got less on a sell), rejects by
reason (gate denials, broker rejects, abandoned intents), P&L and exposure from the
``EquityMark`` rows. The HTML page carries three inline SVG charts: the equity curve,
the drawdown from the running peak, and the slippage histogram.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from html import escape
from typing import Any

from daemon.svg import histogram, line_chart
from engine.journal import Journal, JournalRow
from kernel.time import trading_day

_TYPES = ("OrderIntent", "OrderFilled", "OrderDenied", "OrderRejected", "OrderAbandoned",
          "EquityMark", "Signal")


@dataclass(slots=True)
class DayReport:
    """Everything ``tradingd report`` prints for one New York trading day."""

    day: str
    signals: int = 0
    orders: int = 0
    ordered_shares: int = 0
    filled_orders: int = 0
    fills: int = 0
    filled_shares: int = 0
    slippage_bps: list[float] = field(default_factory=list)
    rejects: Counter[str] = field(default_factory=Counter)
    equity: list[tuple[str, float]] = field(default_factory=list)
    last_mark: dict[str, Any] | None = None
    start_equity: Decimal | None = None

    @property
    def fill_rate(self) -> float:
        return self.filled_orders / self.orders if self.orders else 0.0

    @property
    def share_fill_rate(self) -> float:
        return self.filled_shares / self.ordered_shares if self.ordered_shares else 0.0

    @property
    def pnl(self) -> Decimal | None:
        if self.last_mark is None or self.start_equity is None:
            return None
        return Decimal(self.last_mark["equity"]) - self.start_equity

    def drawdown_pct(self) -> list[float]:
        peak, out = float("-inf"), []
        for _, eq in self.equity:
            peak = max(peak, eq)
            out.append((eq / peak - 1.0) * 100 if peak > 0 else 0.0)
        return out

    def figures(self) -> dict[str, Any]:
        s = self.slippage_bps
        m = self.last_mark or {}
        return {
            "day": self.day, "signals": self.signals, "orders": self.orders,
            "fills": self.fills, "filled_orders": self.filled_orders,
            "fill_rate": round(self.fill_rate, 4),
            "share_fill_rate": round(self.share_fill_rate, 4),
            "slippage_bps_mean": round(statistics.fmean(s), 3) if s else None,
            "slippage_bps_median": round(statistics.median(s), 3) if s else None,
            "rejects_by_reason": dict(sorted(self.rejects.items())),
            "start_equity": _q(self.start_equity), "end_equity": m.get("equity"),
            "pnl": _q(self.pnl), "realized_pnl": m.get("realized_pnl"),
            "unrealized_pnl": m.get("unrealized_pnl"),
            "gross_exposure": m.get("gross_exposure"), "net_exposure": m.get("net_exposure"),
            "max_drawdown_pct": round(min(self.drawdown_pct(), default=0.0), 4),
        }


def _q(v: Decimal | None) -> str | None:
    return None if v is None else str(v.quantize(Decimal("0.01")))


def last_day(journal: Journal) -> str | None:
    row = journal.last("EquityMark") or journal.last("OrderIntent")
    return trading_day(row.ts) if row else None


def build(journal: Journal, day: str) -> DayReport:
    """Compute the day's figures from the journal."""
    rep = DayReport(day)
    refs: dict[str, tuple[Decimal, int]] = {}  # cid -> (reference price, side sign)
    filled: set[str] = set()
    for row in journal.rows(types=_TYPES):
        if row.type == "OrderIntent":
            p = row.payload
            refs[p["client_order_id"]] = (Decimal(p["reference_price"]),
                                         1 if p["side"] == "buy" else -1)
        if trading_day(row.ts) == day:
            _take(rep, row, refs, filled)
    rep.filled_orders = len(filled)
    return rep


def _take(rep: DayReport, row: JournalRow, refs: dict[str, tuple[Decimal, int]],
          filled: set[str]) -> None:
    p, t = row.payload, row.type
    if t == "Signal":
        rep.signals += 1
    elif t == "OrderIntent":
        rep.orders += 1
        rep.ordered_shares += int(p["qty"])
    elif t == "OrderFilled":
        f = p["fill"]
        rep.fills += 1
        rep.filled_shares += int(f["qty"])
        filled.add(f["client_order_id"])
        ref = refs.get(f["client_order_id"])
        if ref is not None and ref[0] > 0:
            rep.slippage_bps.append(float((Decimal(f["price"]) - ref[0]) / ref[0]
                                          * 10_000 * ref[1]))
    elif t == "OrderDenied":
        rep.rejects[f"gate:{p['reason']}"] += 1
    elif t in ("OrderRejected", "OrderAbandoned"):
        rep.rejects[f"{'broker' if t == 'OrderRejected' else 'abandoned'}:"
                    f"{p.get('reason') or '-'}"] += 1
    elif t == "EquityMark":
        if rep.start_equity is None:
            rep.start_equity = Decimal(p["start_of_day_equity"])
        rep.equity.append((row.ts.strftime("%H:%M"), float(p["equity"])))
        rep.last_mark = p


def render_text(rep: DayReport) -> str:
    f = rep.figures()
    rows = [(k, v) for k, v in f.items() if k != "rejects_by_reason"]
    width = max(len(k) for k, _ in rows)
    lines = [f"tradingd report for {rep.day}", "-" * (width + 24)]
    lines += [f"{k:<{width}}  {'-' if v is None else v!s:>20}" for k, v in rows]
    lines.append("rejects by reason:" + ("" if rep.rejects else " none"))
    lines += [f"  {reason:<{width}}{n:>20}" for reason, n in sorted(rep.rejects.items())]
    return "\n".join(lines)


def render_html(rep: DayReport) -> str:
    """A self-contained page: the figures table and three inline SVG charts."""
    f = rep.figures()
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape('-' if v is None else str(v))}</td></tr>"
                    for k, v in f.items() if k != "rejects_by_reason")
    rejects = "".join(f"<tr><th>{escape(r)}</th><td>{n}</td></tr>"
                      for r, n in sorted(rep.rejects.items())) or "<tr><td>none</td></tr>"
    xs = [x for x, _ in rep.equity]
    charts = [
        line_chart("Equity", xs, [e for _, e in rep.equity], css="equity"),
        line_chart("Drawdown (%)", xs, rep.drawdown_pct(), css="drawdown", color="#cf222e",
                   fill_to_zero=True),
        histogram("Slippage vs signal reference (bps)", rep.slippage_bps, css="slippage"),
    ]
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tradingd report {escape(rep.day)}</title>
<style>body{{font-family:sans-serif;margin:24px}}table{{border-collapse:collapse}}
th,td{{padding:2px 12px;border-bottom:1px solid #eee;text-align:left}}</style></head>
<body><h1>tradingd report {escape(rep.day)}</h1>
<h2>Figures</h2><table id="figures">{cells}</table>
<h2>Rejects by reason</h2><table id="rejects">{rejects}</table>
<h2>Charts</h2>{"".join(f"<div>{c}</div>" for c in charts)}
</body></html>
"""


__all__ = ["DayReport", "build", "last_day", "render_html", "render_text"]
