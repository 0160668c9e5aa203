"""``tradingd audit``: what happened to a signal or an order, and why, from the journal.

Rows are selected by order id, signal id, symbol and time, and each is summarized in
one line (a denial with its reason code, limit and observed value; an intent with its
side, size and reference price; an acknowledgement; each fill with price and execution
id). ``--order`` also states the outcome (final status, filled quantity, average
price, or the denial reason).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from engine.codec import EVENT_TYPES, decode
from engine.journal import Journal, JournalRow
from kernel.errors import OrderError
from kernel.events import OrderEvent, OrderIntent
from kernel.orders import Order

COLUMNS = ("seq", "ts", "type", "client_order_id", "symbol", "detail")


def summarize(row: JournalRow) -> str:
    """One human line for a journal row."""
    p, t = row.payload, row.type
    if t == "Signal":
        return (f"signal {p['id']} strength={p['strength']} price={p['price']} "
                f"source={p['source']}")
    if t == "OrderDenied":
        i = p["intent"]
        return (f"DENIED reason={p['reason']} limit={p['limit']} observed={p['observed']} "
                f"({i['side']} {i['qty']} ref={i['reference_price']}{_signal(i)})")
    if t == "OrderApproved":
        return f"approved qty={p['intent']['qty']} (asked {p['original_qty']})"
    if t == "OrderIntent":
        return (f"intent {p['side']} {p['qty']} {p['order_type']} {p['time_in_force']} "
                f"ref={p['reference_price']}{_signal(p)} (journaled before the broker call)")
    if t in ("OrderNew", "OrderAccepted"):
        return f"ack {t[5:].lower()} broker_order_id={p['broker_order_id']}"
    if t == "OrderFilled":
        f = p["fill"]
        return (f"fill {f['side']} {f['qty']} @ {f['price']} exec={f['execution_id']} "
                f"commission={f['commission']}")
    if t in ("OrderRejected", "OrderCanceled", "OrderAbandoned", "SignalRejected",
             "OrderCancelRejected"):
        return f"{t} reason={p.get('reason', '')}"
    if t == "TradingStateChanged":
        return f"state {p['old']} -> {p['new']} by {p['who']}: {p['why']}"
    if t == "ReconcileResult":
        return f"reconcile {p['reason']} ok={p['ok']} {p['counts']}"
    return json.dumps(p, separators=(",", ":"))[:160]


def _signal(p: dict[str, Any]) -> str:
    s = p.get("signal")
    return f" signal={s['id']} strength={s['strength']}" if s else ""


def select(
    journal: Journal,
    *,
    symbol: str | None = None,
    order: str | None = None,
    signal: str | None = None,
    since: datetime | None = None,
) -> list[JournalRow]:
    """The rows about an order (and its signal), a signal, or a symbol, in order."""
    if order is not None:
        rows = list(journal.rows(client_order_id=order, since=since))
        sig = _signal_id(rows)
        if sig is not None:
            rows = _signal_rows(journal, sig, rows[0].symbol) + rows
        return rows
    if signal is not None:
        found = _signal_rows(journal, signal, symbol)
        cids = {r.client_order_id for r in journal.rows(types=("OrderIntent", "OrderDenied"),
                                                       symbol=symbol)
                if _signal_id([r]) == signal}
        for cid in sorted(c for c in cids if c):
            found += list(journal.rows(client_order_id=cid, since=since))
        return sorted(found, key=lambda r: r.seq)
    return list(journal.rows(symbol=symbol, since=since))


def _signal_id(rows: list[JournalRow]) -> str | None:
    for r in rows:
        holder = r.payload.get("intent", r.payload)
        if isinstance(holder, dict) and holder.get("signal"):
            return str(holder["signal"]["id"])
    return None


def _signal_rows(journal: Journal, signal_id: str, symbol: str | None) -> list[JournalRow]:
    return [r for r in journal.rows(types=("Signal",), symbol=symbol)
            if r.payload.get("id") == signal_id]


def outcome(rows: Iterable[JournalRow]) -> str:
    """The final word on an order: its status and fills, or why it was refused."""
    order: Order | None = None
    for r in rows:
        if r.type == "OrderDenied":
            p = r.payload
            return (f"denied by the gate: {p['reason']} (limit {p['limit']}, "
                    f"observed {p['observed']})")
        if r.type == "OrderIntent":
            order = Order.from_intent(decode(OrderIntent, r.payload))
        elif order is not None and r.type in EVENT_TYPES and r.type != "OrderSubmitted":
            event = decode(EVENT_TYPES[r.type], r.payload)
            if isinstance(event, OrderEvent):
                with contextlib.suppress(OrderError):  # the journal keeps what was refused
                    order.apply(event)
    if order is None:
        return "no such order in the journal"
    avg = order.avg_fill_price
    return (f"{order.status}: filled {order.filled_qty}/{order.qty}"
            + (f" at avg {avg.quantize(avg.__class__('0.0001'))}" if avg is not None else ""))


def render(rows: list[JournalRow], fmt: str) -> str:
    """``table`` (aligned text), ``json`` (a list of objects) or ``csv``."""
    records = [{**r.as_dict(), "detail": summarize(r)} for r in rows]
    if fmt == "json":
        return json.dumps(records, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        w = csv.DictWriter(out, fieldnames=[*COLUMNS, "payload"], extrasaction="ignore")
        w.writeheader()
        for rec in records:
            w.writerow({**rec, "payload": json.dumps(rec["payload"], separators=(",", ":"))})
        return out.getvalue()
    lines = [f"{'seq':>6}  {'ts':<25} {'type':<20} {'client_order_id':<26} {'symbol':<7} detail"]
    for rec in records:
        lines.append(f"{rec['seq']:>6}  {rec['ts'][:25]:<25} {rec['type']:<20} "
                     f"{(rec['client_order_id'] or '-'):<26} {(rec['symbol'] or '-'):<7} "
                     f"{rec['detail']}")
    return "\n".join(lines)


__all__ = ["outcome", "render", "select", "summarize"]
