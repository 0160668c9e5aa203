"""Reconciliation: compare the daemon's books with the broker and settle every difference.

The one reconciliation authority: broker adapters only report what they see (stream
events, ``BrokerStatusChanged``, ``ReconcileRequested``) and answer queries; what to book
from REST and what counts as drift is decided here. Runs at start (after journal
recovery, before any signal is accepted), on every ``ReconcileTick``, after every
``BrokerStatusChanged(RECOVERING)`` from an adapter (a reconnected stream does not
replay what it missed), and shortly after a ``ReconcileRequested`` (an adapter saw the
broker report more filled than its stream delivered). Each difference is classified:

* **in flight**: expected and transient (an order just sent, a fill the stream has not
  delivered yet, a position that moves between two REST calls); re-checked next time.
* **explained**: a missed event. The broker's version is applied through the normal
  ``OrderManager.on_report`` path, so the order state machine de-duplicates it, the
  portfolio books it and the journal records it: a fill that happened while the daemon
  was down, a missed acknowledgement or cancel, an unacknowledged intent the broker
  never received (marked ``OrderAbandoned``, never re-sent).

Fills are identified by (order, cumulative filled quantity after the fill), never by
execution id alone: the same execution carries different ids on the stream and in the
broker's fill list. An order's fills are applied in cumulative order, and never beyond
the broker's own cumulative ``filled_qty`` for the order (a fill listed before the
order shows it is in flight, applied on a later pass).
* **unexplained drift**: a position or cash amount the books cannot account for, or an
  order/fill the daemon never placed. It is logged as ``reconcile.drift`` with both
  sides' numbers, an ``AlertRaised`` is published, trading moves to ``HALTED`` (position
  drift, unknown fills) or ``REDUCING`` (cash drift, unknown open orders) through
  ``TradingStatus.escalate``, and then the broker's positions and cash are adopted: the
  broker is the source of truth.

Readiness: ``ready`` is False until the start reconciliation has succeeded, and again
from every ``RECOVERING`` broker status until the reconciliation it triggers succeeds.
Each change is published as ``ReconciliationChanged``; the gate denies with
``RECONCILING`` while not ready.

Events published: ``ReconciliationChanged``, ``AlertRaised``, ``TradingStateChanged``
(via ``TradingStatus``), and (through the order manager) the ``OrderEvent``s that settle
explained differences.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Self

import structlog

from engine.execution import OrderManager, reports_for
from engine.journal import Journal
from engine.reconcile_report import (
    CASH_TOLERANCE,
    EXPLAINED,
    IN_FLIGHT,
    UNEXPLAINED,
    Difference,
    ReconcileReport,
    Snapshot,
    books_snapshot,
    cumulative_order,
    fill_of,
)
from kernel.broker import Broker, BrokerFill, BrokerOrder
from kernel.bus import Bus
from kernel.clock import Clock
from kernel.errors import BrokerError
from kernel.events import (
    AlertRaised,
    BrokerStatus,
    BrokerStatusChanged,
    Event,
    OrderAbandoned,
    OrderCanceled,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderNew,
    OrderRejected,
    OrderReplaced,
    ReconcileRequested,
    ReconcileTick,
    ReconciliationChanged,
    TradingState,
)
from kernel.model import AccountSnapshot, Position
from kernel.orders import TERMINAL, Order, OrderStatus
from portfolio import Portfolio
from risk.state import TradingStatus

log = structlog.get_logger("engine.reconcile")

_TERMINAL_EVENT: dict[OrderStatus, Callable[[str, datetime], OrderEvent]] = {
    OrderStatus.CANCELED: lambda cid, ts: OrderCanceled(cid, ts, reason="canceled at broker"),
    OrderStatus.EXPIRED: OrderExpired,
    OrderStatus.REJECTED: lambda cid, ts: OrderRejected(cid, ts, reason="rejected at broker"),
    OrderStatus.REPLACED: OrderReplaced,
}


class Reconciler:
    """Settles differences with the broker (see the module doc). Enter it (``async
    with``) to own its background task; ``await reconcile(...)`` runs one pass.

    Args:
        state: the trading state it escalates on drift (``TradingStatus.escalate``);
            None in tools and tests that only look.
        request_delay: how long a ``ReconcileRequested`` waits first (the stream often
            delivers what was missing a moment later).
    """

    def __init__(
        self,
        broker: Broker,
        *,
        orders: OrderManager,
        portfolio: Portfolio,
        clock: Clock,
        publish: Callable[[Event], None],
        journal: Journal | None = None,
        state: TradingStatus | None = None,
        on_failure: Callable[[BaseException], None] | None = None,
        grace_secs: float = 30.0,
        confirm_delay: float = 0.5,
        drain_timeout: float = 5.0,
        request_delay: float = 0.5,
    ) -> None:
        self._broker = broker
        self._orders = orders
        self._portfolio = portfolio
        self._clock = clock
        self._publish = publish
        self._journal = journal
        self._state = state
        self._on_failure = on_failure
        self._grace = timedelta(seconds=grace_secs)
        self._confirm_delay = confirm_delay
        self._drain_timeout = drain_timeout
        self._request_delay = request_delay
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._gate_pending = False
        self._rerun: str | None = None  # a request that arrived during a pass
        # Unacknowledged orders the broker did not know at the previous pass.
        self._unknown_before: set[str] = set()
        self._unknown_next: set[str] = set()
        self._last_ts: datetime | None = None
        # Told every account snapshot of a successful pass (recovery connects the equity
        # marks: the broker's start-of-day equity is the base of the daily loss limit).
        self.on_account: Callable[[AccountSnapshot], None] | None = None
        self.ready = False
        self.runs = 0
        self.last_report: ReconcileReport | None = None

    # -- lifecycle and triggers ----------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def attach(self, bus: Bus) -> None:
        bus.subscribe(ReconcileTick, self.on_tick)
        bus.subscribe(BrokerStatusChanged, self.on_broker_status)
        bus.subscribe(ReconcileRequested, self.on_request)

    def on_tick(self, tick: ReconcileTick) -> None:
        self._schedule("tick", gate=self._gate_pending)

    def on_broker_status(self, event: BrokerStatusChanged) -> None:
        if event.status == BrokerStatus.RECOVERING:
            self._set_ready(False, f"broker {event.broker} {event.status}: {event.detail}")
            self._schedule("broker_recovering", gate=True)

    def on_request(self, event: ReconcileRequested) -> None:
        log.info("reconcile.requested", who=event.who, why=event.why,
                 client_order_id=event.client_order_id)
        self._schedule("requested", gate=False, delay=self._request_delay)

    def _schedule(self, reason: str, *, gate: bool, delay: float = 0.0) -> None:
        if self._task is not None and not self._task.done():
            self._gate_pending = self._gate_pending or gate
            if reason != "tick":
                self._rerun = reason  # what it wants may have happened after the pass read
            log.debug("reconcile.busy", reason=reason)
            return
        self._task = asyncio.create_task(self._run(reason, gate, delay), name="reconcile.run")

    async def _run(self, reason: str, gate: bool, delay: float) -> None:
        try:
            while True:
                if delay:
                    await asyncio.sleep(delay)
                await self.reconcile(reason, gate=gate)
                if self._rerun is None:
                    return
                reason, gate, delay, self._rerun = self._rerun, False, self._request_delay, None
        except (BrokerError, TimeoutError):
            pass  # logged by reconcile; retried on the next tick
        except Exception as exc:
            log.error("reconcile.crashed", error=repr(exc), exc_info=exc)
            if self._on_failure is not None:
                self._on_failure(exc)

    # -- one pass ------------------------------------------------------------------------

    async def reconcile(self, reason: str, *, gate: bool = False,
                        startup: bool = False) -> ReconcileReport:
        """Compare everything with the broker and settle it; returns what was found.

        With ``gate``, ``ready`` is False during the pass and True after it succeeds.

        Raises:
            BrokerError, TimeoutError: the broker could not be queried (``ready`` stays
                False when gating; the next tick retries).
        """
        async with self._lock:
            if gate:
                self._set_ready(False, reason)
            report = ReconcileReport(reason, self._clock.now())
            try:
                await self._pass(report, startup=startup)
            except (BrokerError, TimeoutError) as exc:
                self._gate_pending = self._gate_pending or gate
                log.warning("reconcile.failed", reason=reason, error=repr(exc))
                raise
            self.runs += 1
            self._last_ts = report.ts
            self.last_report = report
            self._record(report)
            if self.on_account is not None and report.account is not None:
                self.on_account(report.account)
            if gate or self._gate_pending or not self.ready:
                self._gate_pending = False
                self._set_ready(True, reason)
            return report

    async def _pass(self, report: ReconcileReport, *, startup: bool) -> None:
        if not startup:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._orders.drained(), self._drain_timeout)
        snap = await self._snapshot()
        views = await self._broker_views(snap, report)
        self._unknown_next = set()
        self._settle_acks(views, report, startup=startup)  # acks first: they carry ids
        self._unknown_before = self._unknown_next
        await self._apply_fills(snap.fills, views, report)
        self._settle_statuses(views, report)
        drift = self._compare_books(snap)
        if drift:
            # A fill between two REST calls looks like drift: look again before judging,
            # and not at what traded while the broker was being read.
            await asyncio.sleep(self._confirm_delay)
            before = Counter(self._orders.fills_applied)
            snap = await self._snapshot()
            await self._apply_fills(snap.fills, views, report)
            confirmed = [d for d in self._compare_books(snap) if not self._moved(d, before)]
            for d in drift:
                if not any(c.what == d.what and c.symbol == d.symbol for c in confirmed):
                    report.add(IN_FLIGHT, d.what, symbol=d.symbol, local=d.local,
                               broker=d.broker, note="settled on second look")
            if confirmed:
                report.ok = False
                self._on_drift(confirmed, snap, report)
        report.account = snap.account

    async def _snapshot(self) -> Snapshot:
        b = self._broker
        since = self._fills_since()
        # Fills before orders: an order read after its fills shows at least their total,
        # so a fill is never held back as beyond the order's cumulative quantity.
        fills = await b.fills_since(since)
        open_orders = await b.open_orders()
        positions = await b.positions()
        account = await b.account()
        return Snapshot({o.client_order_id: o for o in open_orders}, fills,
                         {p.symbol: p for p in positions if p.qty}, account)

    def _fills_since(self) -> datetime:
        now = self._clock.now()
        starts = [o.created_ts for o in self._orders.open_orders()]
        if self._last_ts is not None:
            starts.append(self._last_ts)
        return min(starts, default=now) - timedelta(minutes=5)

    # -- fills and orders ----------------------------------------------------------------

    async def _apply_fills(self, fills: list[BrokerFill], views: dict[str, BrokerOrder | None],
                           report: ReconcileReport) -> None:
        """Book the fills the books lack, per order in cumulative order, capped at the
        broker's cumulative ``filled_qty`` for that order."""
        by_order: dict[str, list[BrokerFill]] = {}
        for bf in fills:
            by_order.setdefault(bf.client_order_id, []).append(bf)
        for cid, group in by_order.items():
            # Most listed fills were taken long ago, by orders that have left memory:
            # ask whether they were taken before rebuilding any order.
            if all(self._orders.has_fill(cid, fill_of(bf)) for bf in group):
                continue
            order = self._orders.lookup(cid)
            if order is None:
                for bf in group:
                    report.add(UNEXPLAINED, "unknown_fill", client_order_id=cid,
                               symbol=bf.symbol, broker=bf, note="a fill for an order never placed")
                continue
            missing = sorted((bf for bf in group if not order.has_fill(fill_of(bf))),
                             key=cumulative_order)
            if not missing:
                continue
            order = self._orders.find(cid) or order  # about to change: into memory
            cap = await self._broker_filled(cid, views)
            for bf in missing:
                self._book_fill(order, bf, cap, report)

    async def _broker_filled(self, cid: str, views: dict[str, BrokerOrder | None]) -> int | None:
        """The broker's cumulative filled quantity of an order (None: it does not say)."""
        bo = views.get(cid)
        if bo is None:
            bo = await self._broker.get_order(cid)
        return bo.filled_qty if bo is not None else None

    def _book_fill(self, order: Order, bf: BrokerFill, cap: int | None,
                   report: ReconcileReport) -> None:
        cid = order.client_order_id
        end = bf.cum_qty if bf.cum_qty is not None else order.filled_qty + bf.qty
        if cap is not None and end > cap:
            report.add(IN_FLIGHT, "fill_beyond_cumulative", client_order_id=cid,
                       symbol=bf.symbol, local=order.filled_qty, broker=cap,
                       note=f"a fill ending at {end} listed before the order shows it")
            return
        before = order.filled_qty
        self._orders.on_report(OrderFilled(cid, bf.ts, fill=fill_of(bf)))
        if order.filled_qty == before:
            report.add(UNEXPLAINED, "fill_not_applied", client_order_id=cid,
                       symbol=bf.symbol, local=str(order.status), broker=bf,
                       note="the order could not take this fill")
            return
        log.info("reconcile.missed_fill", client_order_id=cid, symbol=bf.symbol, qty=bf.qty,
                 price=str(bf.price), cum_qty=bf.cum_qty, execution_id=bf.execution_id)
        report.add(EXPLAINED, "missed_fill", client_order_id=cid, symbol=bf.symbol, broker=bf)

    async def _broker_views(self, snap: Snapshot,
                            report: ReconcileReport) -> dict[str, BrokerOrder | None]:
        """The broker's view of every order open in the books (None: it has none)."""
        for cid, theirs in snap.open_orders.items():
            order = self._orders.lookup(cid)
            if order is None:
                report.add(UNEXPLAINED, "unknown_order", client_order_id=cid,
                           symbol=theirs.symbol, broker=theirs,
                           note="an open order the daemon never placed")
            elif order.status is OrderStatus.ABANDONED:
                # Its request landed after the order was given up (a killed daemon's
                # POST still on its way): the broker has it, so the books do too.
                self._orders.on_report(OrderNew(cid, self._clock.now(),
                                                broker_order_id=theirs.broker_order_id))
                report.add(EXPLAINED, "landed_late", client_order_id=cid, symbol=theirs.symbol,
                           broker=str(theirs.status), note="abandoned, yet at the broker")
        views: dict[str, BrokerOrder | None] = {}
        for order in self._orders.open_orders():
            cid = order.client_order_id
            views[cid] = snap.open_orders.get(cid) or await self._broker.get_order(cid)
        return views

    def _settle_acks(self, views: dict[str, BrokerOrder | None], report: ReconcileReport, *,
                     startup: bool) -> None:
        now = self._clock.now()
        for cid, bo in views.items():
            order = self._orders.orders[cid]
            if bo is None:
                self._missing(order, report, startup=startup)
                continue
            for event in reports_for(bo, order, now):
                self._orders.on_report(event)
                report.add(EXPLAINED, "missed_ack", client_order_id=cid, symbol=order.symbol,
                           broker=str(bo.status))

    def _settle_statuses(self, views: dict[str, BrokerOrder | None],
                         report: ReconcileReport) -> None:
        for cid, bo in views.items():
            order = self._orders.orders.get(cid)
            if bo is not None and order is not None and order.is_open:
                self._settle(order, bo, report)

    def _missing(self, order: Order, report: ReconcileReport, *, startup: bool) -> None:
        cid, now = order.client_order_id, self._clock.now()
        if order.status is not OrderStatus.PENDING_NEW:
            report.add(UNEXPLAINED, "order_missing", client_order_id=cid, symbol=order.symbol,
                       local=str(order.status), note="acknowledged, yet unknown to the broker")
        elif startup or (cid in self._unknown_before and now - order.created_ts > self._grace):
            # At start nothing is in flight (a new process); while running, an intent may
            # still sit in the outbox, so it must be unknown on two passes and old.
            log.warning("reconcile.abandoned", client_order_id=cid, symbol=order.symbol,
                        qty=order.qty, side=str(order.side))
            why = "not at broker after restart" if startup else "never reached the broker"
            self._orders.on_report(OrderAbandoned(cid, now, reason=why))
            report.add(EXPLAINED, "abandoned", client_order_id=cid, symbol=order.symbol,
                       local=str(OrderStatus.PENDING_NEW), note=why)
        else:
            self._unknown_next.add(cid)
            report.add(IN_FLIGHT, "unacknowledged", client_order_id=cid, symbol=order.symbol)

    def _settle(self, order: Order, bo: BrokerOrder, report: ReconcileReport) -> None:
        cid, now = order.client_order_id, self._clock.now()
        if bo.filled_qty != order.filled_qty:
            report.add(IN_FLIGHT, "fill_gap", client_order_id=cid, symbol=order.symbol,
                       local=order.filled_qty, broker=bo.filled_qty)
            return
        make = _TERMINAL_EVENT.get(bo.status)
        if bo.status in TERMINAL and make is not None:
            self._orders.on_report(make(cid, now))
            report.add(EXPLAINED, "missed_status", client_order_id=cid, symbol=order.symbol,
                       local=str(order.status), broker=str(bo.status))

    # -- books ---------------------------------------------------------------------------

    def _moved(self, d: Difference, before: Counter[str]) -> bool:
        """The books changed under the comparison: fills were applied while the broker
        was read (their REST view and the books are of different moments), or orders
        are working in that symbol. It is looked at again on the next pass."""
        now = self._orders.fills_applied
        if d.symbol is None:  # cash: any fill moves it
            return now != before or bool(self._orders.open_orders())
        return now[d.symbol] != before[d.symbol] or bool(self._orders.open_orders(d.symbol))

    def _compare_books(self, snap: Snapshot) -> list[Difference]:
        p = self._portfolio
        out: list[Difference] = []
        for sym in sorted(set(snap.positions) | {s for s, v in p.positions.items() if v.qty}):
            local, bp = p.qty(sym), snap.positions.get(sym)
            broker = bp.qty if bp else 0
            if local != broker:
                out.append(Difference(UNEXPLAINED, "position", symbol=sym, local=local,
                                      broker=broker))
        if abs(p.cash - snap.account.cash) > CASH_TOLERANCE:
            out.append(Difference(UNEXPLAINED, "cash", local=str(p.cash),
                                  broker=str(snap.account.cash)))
        return out

    def _on_drift(self, drift: list[Difference], snap: Snapshot,
                  report: ReconcileReport) -> None:
        for d in drift:
            log.error("reconcile.drift", what=d.what, symbol=d.symbol, books=d.local,
                      broker=d.broker)
            report.differences.append(d)
        positions = any(d.what == "position" for d in drift) or any(
            d.what in ("unknown_fill", "fill_not_applied") for d in report.of(UNEXPLAINED))
        self._escalate(TradingState.HALTED if positions else TradingState.REDUCING,
                       "reconcile.drift: " + ", ".join(
                           f"{d.what} {d.symbol or ''} books={d.local} broker={d.broker}"
                           for d in drift))
        self._adopt(snap)

    def _adopt(self, snap: Snapshot) -> None:
        """The broker is the source of truth: take its positions and cash (keeping the
        realized P&L the books have per symbol)."""
        p = self._portfolio
        old = p.positions
        new = {s: Position(s, bp.qty, bp.avg_price,
                           old[s].realized_pnl if s in old else Decimal(0))
               for s, bp in snap.positions.items()}
        for s, pos in old.items():
            if s not in new and pos.realized_pnl:
                new[s] = Position(s, 0, Decimal(0), pos.realized_pnl)
        p.load(Decimal(snap.account.cash), new.values())
        log.warning("reconcile.adopted", cash=str(p.cash),
                    positions={s: v.qty for s, v in p.positions.items() if v.qty})

    def _escalate(self, new: TradingState, why: str) -> None:
        self._publish(AlertRaised(name="reconcile.drift", severity="critical",
                                  ts=self._clock.now(), detail={"why": why, "state": str(new)}))
        if self._state is not None:
            self._state.escalate(new, who="reconcile", why=why)

    # -- reporting -----------------------------------------------------------------------

    def _record(self, report: ReconcileReport) -> None:
        unexplained = report.of(UNEXPLAINED)
        if unexplained and report.ok:
            # Unknown orders and the like: not drift in the books, but not ours either.
            self._escalate(TradingState.REDUCING, "reconcile: " + ", ".join(
                f"{d.what} {d.client_order_id}" for d in unexplained))
        counts = {k: len(report.of(k)) for k in (IN_FLIGHT, EXPLAINED, UNEXPLAINED)}
        log.info("reconcile.done", reason=report.reason, ok=report.ok, **counts)
        if self._journal is not None and (report.differences or report.reason != "tick"):
            # A clean periodic pass is a log line; anything found (or a start/recovery
            # pass) is on the record.
            self._journal.append("ReconcileResult", report.payload(), ts=report.ts,
                                 durable=bool(unexplained))
            if unexplained:
                self._journal.append("BooksSnapshot", books_snapshot(self._portfolio),
                                     ts=report.ts, durable=True)

    def _set_ready(self, ready: bool, why: str) -> None:
        if ready == self.ready and not ready:
            return
        self.ready = ready
        log.info("reconcile.ready" if ready else "reconcile.recovering", why=why)
        self._publish(ReconciliationChanged(ready=ready, why=why, ts=self._clock.now()))


__all__ = ["Difference", "ReconcileReport", "Reconciler", "books_snapshot"]
