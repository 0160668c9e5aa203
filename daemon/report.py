"""``tradingd report``: one trading day from the journal, as text and as an HTML page.

Figures: orders, fills, fill rate (orders with a fill / orders; filled / ordered
shares), slippage of each fill against its signal's reference price in basis points
(positive = paid more than the reference on a buy, got less on a sell), rejects by
reason (gate denials, broker rejects, abandoned intents), P&L and exposure from the
``EquityMark`` rows. Besides: the P&L of each symbol and the day's orders with their
outcome. Times are New York time. ``daemon.report_html`` renders the page; ``write_day``
writes the day's HTML and JSON files (the live session does at each close, into the
account's ``reports/`` directory).

Per-symbol P&L replays the books the way recovery does: the newest ``BooksSnapshot``
resets them, every ``OrderFilled`` after it is booked by the portfolio's own average-cost
rules. For each symbol: realized today (realized at the end less realized when the day
began), unrealized at the day's last mark, and the day's P&L = realized today + the
change in unrealized since the day's first mark (positions carried overnight start from
their value at the first mark).
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.codec import EVENT_TYPES, decode
from engine.journal import Journal, JournalRow
from engine.recovery import ORDER_EVENT_TYPES
from kernel.errors import OrderError
from kernel.events import OrderEvent, OrderIntent
from kernel.model import CENT, Fill, Position, to_price
from kernel.orders import Order
from kernel.time import NEW_YORK, trading_day
from portfolio import Portfolio

ZERO = Decimal(0)
_TYPES = ("OrderIntent", "OrderDenied", "OrderAbandoned", "EquityMark", "Signal",
          "BooksSnapshot", *ORDER_EVENT_TYPES)


def ny_time(ts: datetime) -> str:
    return ts.astimezone(NEW_YORK).strftime("%H:%M:%S")


@dataclass(slots=True)
class SymbolPnl:
    """One symbol's day: fills, shares traded, position and P&L."""

    symbol: str
    fills: int = 0
    bought: int = 0
    sold: int = 0
    commission: Decimal = ZERO
    qty: int = 0
    avg_price: Decimal = ZERO
    last_price: Decimal | None = None
    realized: Decimal = ZERO
    unrealized: Decimal = ZERO
    day_pnl: Decimal = ZERO


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
    equity: list[tuple[datetime, float]] = field(default_factory=list)
    last_mark: dict[str, Any] | None = None
    start_equity: Decimal | None = None
    symbols: list[SymbolPnl] = field(default_factory=list)
    day_orders: list[Order] = field(default_factory=list)

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
            "start_equity": _q(self.start_equity), "end_equity": _q(_d(m.get("equity"))),
            "pnl": _q(self.pnl), "realized_pnl": _q(_d(m.get("realized_pnl"))),
            "unrealized_pnl": _q(_d(m.get("unrealized_pnl"))),
            "gross_exposure": _q(_d(m.get("gross_exposure"))),
            "net_exposure": _q(_d(m.get("net_exposure"))),
            "max_drawdown_pct": round(min(self.drawdown_pct(), default=0.0), 4),
        }


def _d(v: Any) -> Decimal | None:
    return None if v is None else Decimal(str(v))


def _q(v: Decimal | None) -> str | None:
    return None if v is None else str(v.quantize(CENT))


def last_day(journal: Journal) -> str | None:
    row = journal.last("EquityMark") or journal.last("OrderIntent")
    return trading_day(row.ts) if row else None


class _Builder:
    """One pass over the journal, in order."""

    def __init__(self, day: str) -> None:
        self.rep = DayReport(day)
        self.refs: dict[str, tuple[Decimal, int]] = {}  # cid -> (reference price, sign)
        self.filled: set[str] = set()
        self.orders: dict[str, Order] = {}  # the day's orders, by id
        self.books = Portfolio(ZERO)
        self.prices: dict[str, Decimal] = {}
        self.start_prices: dict[str, Decimal] | None = None
        self.day_start: dict[str, Position] | None = None  # the books as the day began
        self.traded: dict[str, SymbolPnl] = {}

    def take(self, row: JournalRow) -> None:
        today = trading_day(row.ts) == self.rep.day
        if today and self.day_start is None:
            self.day_start = {s: Position(s, p.qty, p.avg_price, p.realized_pnl)
                              for s, p in self.books.positions.items()}
        if row.type == "OrderIntent":
            p = row.payload
            self.refs[p["client_order_id"]] = (Decimal(p["reference_price"]),
                                              1 if p["side"] == "buy" else -1)
        self._books(row, today)
        if row.type in ORDER_EVENT_TYPES and row.client_order_id in self.orders:
            self._apply(row)
        if today:
            self._figures(row)

    def _books(self, row: JournalRow, today: bool) -> None:
        p = row.payload
        if row.type == "BooksSnapshot":
            self.books.load(Decimal(p["cash"]), [
                Position(s, int(v["qty"]), Decimal(v["avg_price"]), Decimal(v["realized_pnl"]))
                for s, v in p["positions"].items()])
            self.prices.update({s: to_price(v) for s, v in p.get("prices", {}).items()})
        elif row.type == "OrderFilled":
            fill = decode(Fill, p["fill"])
            self.books.apply_fill(fill)
            self.prices.setdefault(fill.symbol, fill.price)
            if today:
                t = self.traded.setdefault(fill.symbol, SymbolPnl(fill.symbol))
                t.fills += 1
                t.commission += fill.commission
                if fill.side.sign > 0:
                    t.bought += fill.qty
                else:
                    t.sold += fill.qty
        elif row.type == "EquityMark":
            marks = {s: to_price(v) for s, v in p.get("prices", {}).items()}
            self.prices.update(marks)
            if today and self.start_prices is None:
                self.start_prices = dict(self.prices)

    def _apply(self, row: JournalRow) -> None:
        event = decode(EVENT_TYPES[row.type], row.payload)
        if isinstance(event, OrderEvent):
            # The journal keeps what the state machine refused; so does audit.
            with contextlib.suppress(OrderError):
                self.orders[row.client_order_id or ""].apply(event)

    def _figures(self, row: JournalRow) -> None:
        rep, p, t = self.rep, row.payload, row.type
        if t == "Signal":
            rep.signals += 1
        elif t == "OrderIntent":
            rep.orders += 1
            rep.ordered_shares += int(p["qty"])
            intent = decode(OrderIntent, p)
            self.orders[intent.client_order_id] = Order.from_intent(intent, created_ts=row.ts)
        elif t == "OrderFilled":
            f = p["fill"]
            rep.fills += 1
            rep.filled_shares += int(f["qty"])
            self.filled.add(f["client_order_id"])
            ref = self.refs.get(f["client_order_id"])
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
            rep.equity.append((row.ts, float(p["equity"])))
            rep.last_mark = p

    def finish(self) -> DayReport:
        rep = self.rep
        rep.filled_orders = len(self.filled)
        rep.day_orders = sorted(self.orders.values(), key=lambda o: o.created_ts)
        rep.symbols = self._symbols()
        return rep

    def _symbols(self) -> list[SymbolPnl]:
        start = self.day_start or {}
        start_px = self.start_prices or {}
        held = {s for s, p in self.books.positions.items() if p.qty}
        names = sorted(set(self.traded) | held | {s for s, p in start.items() if p.qty})
        out = []
        for sym in names:
            row = self.traded.get(sym) or SymbolPnl(sym)
            end = self.books.positions.get(sym) or Position(sym)
            was = start.get(sym) or Position(sym)
            row.qty, row.avg_price = end.qty, end.avg_price
            row.last_price = self.prices.get(sym)
            row.realized = end.realized_pnl - was.realized_pnl
            row.unrealized = ((row.last_price - end.avg_price) * end.qty
                              if row.last_price is not None and end.qty else ZERO)
            was_px = start_px.get(sym)
            was_unrealized = ((was_px - was.avg_price) * was.qty
                              if was_px is not None and was.qty else ZERO)
            row.day_pnl = row.realized + row.unrealized - was_unrealized
            out.append(row)
        return out


def build(journal: Journal, day: str) -> DayReport:
    """Compute the day's figures, per-symbol P&L and orders from the journal."""
    b = _Builder(day)
    for row in journal.rows(types=_TYPES):
        if trading_day(row.ts) <= day:  # later days change nothing of this one
            b.take(row)
    return b.finish()


def as_json(rep: DayReport) -> dict[str, Any]:
    """The day as one JSON document: the figures, P&L by symbol and the day's orders."""
    return {
        **rep.figures(),
        "symbols": [{"symbol": s.symbol, "fills": s.fills, "bought": s.bought, "sold": s.sold,
                     "position": s.qty, "avg_price": str(s.avg_price),
                     "last_price": None if s.last_price is None else str(s.last_price),
                     "realized": _q(s.realized), "unrealized": _q(s.unrealized),
                     "day_pnl": _q(s.day_pnl), "commission": str(s.commission)}
                    for s in rep.symbols],
        "day_orders": [{"client_order_id": o.client_order_id, "symbol": o.symbol,
                    "side": str(o.side), "qty": o.qty, "filled_qty": o.filled_qty,
                    "status": str(o.status), "type": str(o.order_type),
                    "time_in_force": str(o.time_in_force), "created": o.created_ts.isoformat(),
                    "signal_id": o.signal_id} for o in rep.day_orders],
    }


def write_day(journal_path: Path, day: str, out_dir: Path) -> tuple[Path, Path, DayReport]:
    """Build ``day`` from the journal at ``journal_path`` (opened read-only, so a running
    daemon may call it from a thread while it writes) and write ``report-<day>.html`` and
    ``report-<day>.json`` into ``out_dir``, each replaced whole. Returns both paths and
    the report."""
    journal = Journal(journal_path).open(read_only=True)
    try:
        rep = build(journal, day)
    finally:
        journal.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    html = out_dir / f"report-{day}.html"
    doc = out_dir / f"report-{day}.json"
    _write_whole(html, render_html(rep))
    _write_whole(doc, json.dumps(as_json(rep), indent=1) + "\n")
    return html, doc, rep


def _write_whole(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def render_text(rep: DayReport) -> str:
    f = rep.figures()
    rows = [(k, v) for k, v in f.items() if k != "rejects_by_reason"]
    width = max([len(k) for k, _ in rows] + [len(r) + 2 for r in rep.rejects])
    lines = [f"tradingd report for {rep.day} (New York)", "-" * (width + 22)]
    lines += [f"{k:<{width}}  {'-' if v is None else v!s:>20}" for k, v in rows]
    lines.append("rejects by reason:" + ("" if rep.rejects else " none"))
    lines += [f"  {reason:<{width - 2}}  {n:>20}" for reason, n in sorted(rep.rejects.items())]
    if rep.symbols:
        lines.append(f"{'symbol':<8}{'fills':>6}{'position':>10}{'realized':>12}"
                     f"{'unrealized':>12}{'day P&L':>12}")
        lines += [f"{s.symbol:<8}{s.fills:>6}{s.qty:>10}{s.realized.quantize(CENT)!s:>12}"
                  f"{s.unrealized.quantize(CENT)!s:>12}{s.day_pnl.quantize(CENT)!s:>12}"
                  for s in rep.symbols]
    return "\n".join(lines)


def render_html(rep: DayReport) -> str:
    from daemon.report_html import render

    return render(rep)


__all__ = ["DayReport", "SymbolPnl", "as_json", "build", "last_day", "ny_time",
           "render_html", "render_text", "write_day"]
