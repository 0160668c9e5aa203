"""TWS's order messages, read at the source, into the shadow book.

The adapter chains ``IbFeed`` onto the ib_async wrapper's handlers (``openOrder``,
``completedOrder``, ``orderStatus``, ``execDetails``, ``commissionReport``): each runs
after the SDK's own handler, with the same decoded arguments, whether the message is a
live update or part of a reply. So the tracker sees exactly what TWS sent, not ib_async's
inferred trade states (ib_async, for instance, marks a trade cancelled on any error).

No ``ib_async`` import: the SDK's objects are read by attribute (``brokers._ib_map``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from brokers._ib_map import (
    IbExecution,
    IbOrderView,
    IbStatus,
    dec,
    execution_of,
    order_view,
    shares,
)
from brokers._ib_track import IbTracker

log = structlog.get_logger("brokers.ib")

_SDK_FILLS_KEPT = 2000
_SDK_DONE_TRADES_KEPT = 1000


@dataclass(slots=True)
class Timings:
    """Where time goes, for the benchmark (ns; the last 10,000 of each).

    ``submit_ns``: the whole ``submit`` call; ``sdk_ns``: inside ib_async's
    ``placeOrder`` (encoding and the socket write); ``wait_ns``: awaiting TWS's first
    answer. ``event_ns``: our handling of one TWS message (after the SDK decoded it).
    """

    submit_ns: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))
    sdk_ns: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))
    wait_ns: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))
    event_ns: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))


class IbFeed:
    """The SDK callbacks: filter by account, convert, hand to the tracker.

    Args:
        tracker: the shadow book.
        timings: where our per-message handling time is recorded.
        on_next_valid_id: told each ``nextValidId`` TWS sends.
    """

    def __init__(self, tracker: IbTracker, timings: Timings, *,
                 on_next_valid_id: Callable[[int], None]) -> None:
        self._tracker = tracker
        self._timings = timings
        self._on_next_id = on_next_valid_id
        self.account = ""
        self.last_fill_ts: datetime | None = None
        self.commission_seen = asyncio.Event()
        # While a completed-orders request is in flight its views are collected here
        # (ib_async's Trade objects drop the completed status text).
        self.collecting: list[IbOrderView] | None = None

    def install(self, wrapper: Any) -> None:
        for name, handler in (("openOrder", self._open_order),
                              ("completedOrder", self._completed_order),
                              ("orderStatus", self._order_status),
                              ("execDetails", self._exec_details),
                              ("commissionReport", self._commission),
                              ("nextValidId", self._on_next_id)):
            _chain(wrapper, name, handler, self._timings)

    def mine(self, account: str) -> bool:
        """Messages of other accounts of a multi-account login are not ours."""
        return not account or not self.account or account == self.account

    def _open_order(self, order_id: int, contract: Any, order: Any, state: Any) -> None:
        view = order_view(contract, order, state)
        if self.mine(view.account):
            self._tracker.on_open_order(view)

    def _completed_order(self, contract: Any, order: Any, state: Any) -> None:
        view = order_view(contract, order, state, completed=True)
        if not self.mine(view.account):
            return
        if self.collecting is not None:
            self.collecting.append(view)
        self._tracker.on_completed(view)

    def _order_status(self, *args: Any) -> None:
        # orderStatus(orderId, status, filled, remaining, avgFillPrice, permId, parentId,
        #             lastFillPrice, clientId, whyHeld, mktCapPrice)
        order_id, status, filled, remaining, avg_price, perm_id, _p, _l, client_id = args[:9]
        self._tracker.on_status(IbStatus(
            order_id=int(order_id), perm_id=int(perm_id), client_id=int(client_id),
            status=str(status), filled=shares(filled), remaining=shares(remaining),
            avg_fill_price=dec(avg_price)))

    def _exec_details(self, req_id: int, contract: Any, execution: Any) -> None:
        ex = execution_of(contract, execution)
        if not self.mine(ex.account):
            return
        if self.last_fill_ts is None or ex.ts > self.last_fill_ts:
            self.last_fill_ts = ex.ts
        self._tracker.on_execution(ex, live=req_id == -1)

    def _commission(self, report: Any) -> None:
        self._tracker.on_commission(str(report.execId), dec(report.commission) or Decimal(0))
        self.commission_seen.set()

    def trade_view(self, trade: Any) -> IbOrderView | None:
        """An ib_async ``Trade`` (open-order reply) as a view; None if not our account."""
        view = order_view(trade.contract, trade.order, trade.orderStatus)
        return view if self.mine(view.account) else None


def prune_sdk(wrapper: Any) -> None:
    """ib_async keeps every trade and fill of a connection: keep the recent ones."""
    fills: dict[str, Any] = wrapper.fills
    if len(fills) > _SDK_FILLS_KEPT:
        for exec_id in list(fills)[: len(fills) - _SDK_FILLS_KEPT // 2]:
            del fills[exec_id]
    trades: dict[Any, Any] = wrapper.trades
    done = [k for k, t in trades.items() if t.isDone()]
    if len(done) > _SDK_DONE_TRADES_KEPT:
        for key in done[: len(done) - _SDK_DONE_TRADES_KEPT // 2]:
            trade = trades.pop(key)
            wrapper.permId2Trade.pop(trade.order.permId, None)


def account_values(values: Iterable[Any], currency: str) -> dict[str, Decimal]:
    """Tag -> amount in ``currency``, falling back to IB's ``BASE`` currency."""
    out: dict[str, Decimal] = {}
    for v in sorted(values, key=lambda v: v.currency == currency):  # ours last: it wins
        if v.currency in (currency, "BASE"):
            amount = dec(v.value)
            if amount is not None:
                out[str(v.tag)] = amount
    return out


def one_per_fill(execs: list[IbExecution]) -> list[IbExecution]:
    """The latest record per (order, cumulative quantity): an IB correction re-sends a
    fill under a new execId with the same ``cumQty``."""
    latest: dict[tuple[str, int] | str, IbExecution] = {}
    for e in execs:
        latest[(e.client_order_id, e.cum_qty) if e.cum_qty else e.exec_id] = e
    return list(latest.values())


def _chain(obj: Any, name: str, after: Callable[..., None], timings: Timings) -> None:
    """Call ``after`` with the same arguments once the SDK's own handler has run; a
    failure in ours is logged, never raised into the SDK's message loop."""
    original = getattr(obj, name)

    def call(*args: Any) -> None:
        original(*args)
        t = time.perf_counter_ns()
        try:
            after(*args)
        except Exception as exc:
            log.error("ib.callback_failed", callback=name, error=repr(exc))
        timings.event_ns.append(time.perf_counter_ns() - t)

    setattr(obj, name, call)


__all__ = ["IbFeed", "Timings", "account_values", "one_per_fill", "prune_sdk"]
