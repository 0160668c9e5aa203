"""The order manager: the one owner of orders between the gate and the broker.

It handles ``SubmitOrder`` (from the gate only), ``CancelOrder`` and ``CancelAllOrders``;
hands orders to the broker from a worker task (broker calls do I/O, bus handlers don't
await); and is the single consumer of broker reports: each report is applied to its
``Order`` (the state machine de-duplicates fills and refuses illegal transitions) and
only reports that changed something are published on the bus. So a duplicated fill from
a broker stream never reaches the portfolio.

Submission outcomes: a definite refusal (``BrokerRejected``, or anything the broker
certainly did not take) becomes ``OrderRejected`` with the broker's code and message;
an ambiguous one (``AmbiguousSubmission``, a timeout) is looked up by
``client_order_id`` and never re-sent; any other exception from building or sending one
order is looked up too and, when the broker does not have the order, becomes that
order's rejection (``SUBMIT_FAILED``). The worker never dies of one order.

Outbox policy: bounded (``outbox_size``). Orders are never dropped silently: when full,
the order is rejected locally with reason ``BACKPRESSURE`` (an ``OrderRejected`` report),
logged and counted, and the next signal can try again.

Memory: open orders stay in ``orders``; terminal ones leave it once more than
``retain_done`` orders have ended after them (they stay in the journal). An order asked
for after that (a late broker report, a reconciliation, a re-used ``client_order_id``)
is found through ``history`` (the journal, set by recovery) and taken back in, so
de-duplication never depends on what is still in memory.

Events published: ``OrderSubmitted``, and every broker ``OrderEvent`` that changed an order.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Coroutine, Iterable
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self

import structlog

from kernel.broker import Broker, BrokerOrder
from kernel.clock import Clock
from kernel.errors import (
    AmbiguousSubmission,
    BrokerError,
    BrokerRejected,
    InvalidOrderTransition,
    OverfillError,
)
from kernel.events import (
    AlertRaised,
    CancelAllOrders,
    CancelOrder,
    Event,
    OrderAccepted,
    OrderCanceled,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderIntent,
    OrderNew,
    OrderRejected,
    OrderSubmitted,
    SubmitOrder,
)
from kernel.logging import debug_enabled
from kernel.model import Fill, OrderType
from kernel.orders import Order, OrderStatus
from kernel.time import trading_day

log = structlog.get_logger("engine.execution")

SUBMIT_FAILED = "SUBMIT_FAILED"


class OrderHistory(Protocol):
    """Orders that left memory, on disk (the journal)."""

    def known(self, client_order_id: str) -> bool:
        """True if an order with this id was ever placed."""
        ...

    def load(self, client_order_id: str) -> Order | None:
        """The order rebuilt from its journaled intent and events."""
        ...

    def has_fill(self, client_order_id: str, fill: Fill) -> bool:
        """True if the order took this execution (``Order.has_fill`` on its record)."""
        ...


class OrderManager:
    """Owns every order of the session. Enter it (``async with``) to run its worker."""

    def __init__(
        self,
        broker: Broker,
        *,
        clock: Clock,
        publish: Callable[[Event], None],
        submit_timeout: float = 30.0,
        outbox_size: int = 1024,
        on_intent: Callable[[OrderIntent], None] | None = None,
        retain_done: int = 1000,
        unknown_kept: int = 256,
    ) -> None:
        self._broker = broker
        self._clock = clock
        self._publish = publish
        self._timeout = submit_timeout
        self._outbox: deque[OrderIntent] = deque()
        self._outbox_size = outbox_size
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._reported = asyncio.Event()  # set whenever a report changed an order
        self._in_flight = 0
        # The order whose submission is at the broker now, and cancels asked meanwhile: a
        # cancel sent before the broker has the order is refused ("not found") and the
        # order would then be placed and work on (found at a session's close under load).
        self._sending: str | None = None
        self._cancel_when_sent: dict[str, str] = {}  # client_order_id -> reason
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        # Called with each intent before it goes to the broker (the journal writes it
        # durably here, so a crash after the broker call can still be resolved).
        self._on_intent = on_intent
        self.history: OrderHistory | None = None
        self.orders: dict[str, Order] = {}
        # Terminal orders still in memory, oldest first (evicted beyond ``retain_done``).
        self._done: OrderedDict[str, None] = OrderedDict()
        self._retain_done = retain_done
        # Open orders by symbol: sizing and the gate ask per symbol on the hot path, and
        # scanning every order of the session there would grow with the day.
        self._open: dict[str, dict[str, Order]] = {}
        # Reports for orders nobody placed: the newest few, for diagnosis (counted).
        self.unknown_reports: deque[OrderEvent] = deque(maxlen=unknown_kept)
        self._day = ""
        self._per_symbol_today: Counter[str] = Counter()
        self.submitted_today = 0
        self.stats: Counter[str] = Counter()
        # Fills applied per symbol (reconciliation tells a position that moved while it
        # was reading the broker from one that drifted).
        self.fills_applied: Counter[str] = Counter()

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._worker(), name="orders.submit")
        return self

    @property
    def worker(self) -> asyncio.Task[None] | None:
        """The submission task; the daemon watches it (a dead worker stops the daemon)."""
        return self._task

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def in_flight(self, *, market: bool = True) -> int:
        """Orders whose outcome is imminent: not yet acknowledged, and (with ``market``)
        market orders still open, whose fills are on the way. Resting limit and stop
        orders are not counted."""
        return sum(1 for o in self.open_orders()
                   if o.status is OrderStatus.PENDING_NEW
                   or (market and o.order_type is OrderType.MARKET))

    async def settled(self, *, market: bool = True) -> None:
        """Wait until every order has reached the broker and no outcome is imminent.

        ``market=False`` when no market data will come any more (a finished replay): a
        simulated market order then only fills on a bar that will never arrive."""
        await self.drained()
        while self.in_flight(market=market):
            self._reported.clear()
            await self._reported.wait()

    async def drained(self) -> None:
        """Wait until every handed-over order has reached the broker (or failed)."""
        while self._outbox or self._in_flight:
            self._idle.clear()
            await self._idle.wait()

    # -- commands ------------------------------------------------------------------------

    def execute_submit(self, cmd: SubmitOrder) -> None:
        intent = cmd.intent
        cid = intent.client_order_id
        if cid in self.orders or (self.history is not None and self.history.known(cid)):
            log.warning("order.duplicate_id", client_order_id=cid)
            self.stats["duplicate_id"] += 1
            return
        # Created now by the daemon's clock, not at the signal's (market data) time: broker
        # queries for this order's fills are anchored on it.
        order = Order.from_intent(intent, created_ts=self._clock.now())
        self._track(order)
        self._count(intent)
        if len(self._outbox) >= self._outbox_size:
            self.stats["backpressure"] += 1
            self._publish(OrderSubmitted(client_order_id=cid, ts=intent.ts))
            self.on_report(OrderRejected(client_order_id=cid, ts=self._clock.now(),
                                         reason="BACKPRESSURE"))
            return
        if self._on_intent is not None:
            self._on_intent(intent)
        log.info("order.submitted", client_order_id=cid, symbol=order.symbol,
                 side=str(order.side), qty=order.qty, type=str(order.order_type),
                 reference_price=str(intent.reference_price),
                 signal_id=order.signal_id)
        self._publish(OrderSubmitted(client_order_id=cid, ts=intent.ts))
        self._outbox.append(intent)
        self._idle.clear()
        self._wake.set()

    def execute_cancel(self, cmd: CancelOrder) -> None:
        order = self.orders.get(cmd.client_order_id)
        if order is None or not order.is_open:
            log.info("order.cancel_skipped", client_order_id=cmd.client_order_id,
                     status=str(order.status) if order else "unknown")
            return
        cid = cmd.client_order_id
        queued = next((i for i in self._outbox if i.client_order_id == cid), None)
        if queued is not None:  # never sent: it ends here, the broker never hears of it
            self._outbox.remove(queued)
            self._uncount(queued)
            log.info("order.cancel_unsent", client_order_id=cid, reason=cmd.reason)
            self.on_report(OrderCanceled(client_order_id=cid, ts=self._clock.now(),
                                         reason=f"canceled before it was sent: {cmd.reason}"))
            return
        if cid == self._sending:  # at the broker now: cancel once the placement answers
            log.info("order.cancel_deferred", client_order_id=cid, reason=cmd.reason)
            self._cancel_when_sent[cid] = cmd.reason
            return
        log.info("order.cancel", client_order_id=cid, reason=cmd.reason)
        self._spawn(self._cancel(cid), "orders.cancel")

    def execute_cancel_all(self, cmd: CancelAllOrders) -> None:
        log.info("order.cancel_all", reason=cmd.reason, open=len(self.open_orders()))
        self._spawn(self._cancel_all(), "orders.cancel_all")

    # -- broker reports ------------------------------------------------------------------

    def on_report(self, event: Event) -> None:
        """Apply a broker report; publish it only if it changed an order."""
        if not isinstance(event, OrderEvent):
            self._publish(event)
            return
        order = self.find(event.client_order_id)
        if order is None:
            self.unknown_reports.append(event)
            self.stats["unknown_report"] += 1
            log.warning("order.unknown_report", client_order_id=event.client_order_id,
                        event_type=type(event).__name__)
            return
        was_open = order.is_open
        try:
            changed = order.apply(event)
        except InvalidOrderTransition as exc:
            # Streams replay and reorder; reconciliation with the broker settles it.
            self.stats["illegal_transition"] += 1
            log.warning("order.illegal_transition", client_order_id=order.client_order_id,
                        status=str(order.status), event_type=type(event).__name__, error=str(exc))
            return
        except OverfillError as exc:
            self.stats["overfill"] += 1
            log.error("order.overfill", client_order_id=order.client_order_id, error=str(exc))
            self._publish(AlertRaised(name="order.overfill", severity="critical",
                                      ts=self._clock.now(),
                                      detail={"client_order_id": order.client_order_id}))
            return
        if not changed:
            self.stats["duplicate_fill"] += 1
            log.info("order.duplicate_fill", client_order_id=order.client_order_id)
            return
        if not order.is_open:
            self._open.get(order.symbol, {}).pop(order.client_order_id, None)
        elif not was_open:  # an abandoned order the broker had after all
            self._done.pop(order.client_order_id, None)
            self._open.setdefault(order.symbol, {})[order.client_order_id] = order
            log.warning("order.landed_late", client_order_id=order.client_order_id,
                        status=str(order.status))
        self._reported.set()
        if isinstance(event, OrderFilled):
            self.fills_applied[order.symbol] += 1
        self._log_report(order, event)
        self._publish(event)
        if not order.is_open:
            self._retire(order)

    def find(self, client_order_id: str) -> Order | None:
        """The order in memory, else rebuilt from the history and taken back in (a
        report is about to change it)."""
        order = self.orders.get(client_order_id)
        if order is None and self.history is not None:
            order = self.history.load(client_order_id)
            if order is not None:
                self.stats["reloaded"] += 1
                log.info("order.reloaded", client_order_id=client_order_id,
                         status=str(order.status))
                self._track(order)
        return order

    def has_fill(self, client_order_id: str, fill: Fill) -> bool:
        """True when the books have taken this execution: the order in memory says so,
        else its history does, without rebuilding the order (reconciliation asks this of
        every fill the broker lists, most of them for orders that ended long ago)."""
        order = self.orders.get(client_order_id)
        if order is not None:
            return order.has_fill(fill)
        return self.history is not None and self.history.has_fill(client_order_id, fill)

    def lookup(self, client_order_id: str) -> Order | None:
        """The order in memory, else a copy rebuilt from the history, for a look only
        (memory does not change; ``on_report`` takes it back in if it must change)."""
        order = self.orders.get(client_order_id)
        if order is None and self.history is not None:
            order = self.history.load(client_order_id)
        return order

    def adopt(self, order: Order) -> None:
        """Take over an order rebuilt elsewhere (recovery from the journal)."""
        self._track(order)

    def _track(self, order: Order) -> None:
        self.orders[order.client_order_id] = order
        if order.is_open:
            self._open.setdefault(order.symbol, {})[order.client_order_id] = order
        else:
            self._retire(order)

    def _retire(self, order: Order) -> None:
        """An ended order stays in memory while ``retain_done`` later ones have not ended
        (late reports for it are common then); after that only in the history."""
        done = self._done
        done[order.client_order_id] = None
        done.move_to_end(order.client_order_id)
        while len(done) > self._retain_done:
            cid, _ = done.popitem(last=False)
            old = self.orders.get(cid)
            if old is not None and not old.is_open:
                del self.orders[cid]

    # -- views for sizing and the gate ---------------------------------------------------

    def open_orders(self, symbol: str | None = None) -> list[Order]:
        if symbol is not None:
            return list(self._open.get(symbol, {}).values())
        return [o for by_symbol in self._open.values() for o in by_symbol.values()]

    def working_qty(self, symbol: str) -> int:
        """Signed quantity still to fill in open orders for ``symbol``."""
        open_here = self._open.get(symbol)
        if not open_here:
            return 0
        return sum(o.leaves_qty * o.side.sign for o in open_here.values())

    def orders_today(self, symbol: str | None = None) -> int:
        self._roll_day()
        return self._per_symbol_today[symbol] if symbol else self.submitted_today

    def roll_day(self) -> int:
        """Start the clock's trading day (the session lifecycle calls it at each new
        session; the counters also roll by themselves on the first order of a day).

        Orders that ended on an earlier day are forgotten here (the journal keeps them),
        so a daemon that runs for weeks holds about one day of orders. Returns how many
        were forgotten.
        """
        self._roll_day()
        day = self._day
        stale = [cid for cid, o in self.orders.items()
                 if not o.is_open and trading_day(o.created_ts) < day]
        for cid in stale:
            del self.orders[cid]
        return len(stale)

    def restore_counters(self, day: str, per_symbol: dict[str, int]) -> None:
        self._day = day
        self._per_symbol_today = Counter(per_symbol)
        self.submitted_today = sum(per_symbol.values())

    # -- internals -----------------------------------------------------------------------

    def _count(self, intent: OrderIntent) -> None:
        self._roll_day()
        self._per_symbol_today[intent.symbol] += 1
        self.submitted_today += 1

    def _uncount(self, intent: OrderIntent) -> None:
        """An order canceled before it was sent never reached the broker: the day's
        counts (the gate's order caps, the day's summary) are of orders sent."""
        if self._per_symbol_today[intent.symbol] > 0:
            self._per_symbol_today[intent.symbol] -= 1
            self.submitted_today -= 1

    def _roll_day(self) -> None:
        day = trading_day(self._clock.now())
        if day != self._day:
            self._day = day
            self._per_symbol_today.clear()
            self.submitted_today = 0

    def _log_report(self, order: Order, event: OrderEvent) -> None:
        if isinstance(event, OrderFilled):
            f = event.fill
            log.info("order.filled" if order.status is OrderStatus.FILLED else "order.partial_fill",
                     client_order_id=order.client_order_id, symbol=order.symbol,
                     side=str(order.side), qty=f.qty, price=str(f.price),
                     filled_qty=order.filled_qty, order_qty=order.qty,
                     cum_qty=f.cum_qty, execution_id=f.execution_id)
        elif isinstance(event, OrderRejected):
            self.stats["rejected"] += 1
            log.warning("order.rejected", client_order_id=order.client_order_id,
                        symbol=order.symbol, reason=event.reason, code=event.code)
        elif isinstance(event, OrderAccepted | OrderNew):
            if debug_enabled():
                log.debug("order.acknowledged", client_order_id=order.client_order_id,
                          status=str(order.status))
        elif isinstance(event, OrderCanceled | OrderExpired):
            log.info("order." + str(order.status), client_order_id=order.client_order_id,
                     filled_qty=order.filled_qty, order_qty=order.qty)
        else:
            log.info("order.status", client_order_id=order.client_order_id,
                     status=str(order.status), event_type=type(event).__name__)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel(self, client_order_id: str) -> None:
        """Ask the broker to cancel; the ``canceled`` report comes back as usual. A refusal
        means the order is already done at the broker: read it back and adopt that."""
        try:
            async with asyncio.timeout(self._timeout):
                await self._broker.cancel(client_order_id)
        except BrokerRejected as exc:
            log.info("order.cancel_refused", client_order_id=client_order_id, error=str(exc))
            await self.resolve(client_order_id)
        except (BrokerError, TimeoutError) as exc:
            # Still open here; the next cancel or reconciliation settles it.
            log.warning("order.cancel_failed", client_order_id=client_order_id, error=repr(exc))

    async def _cancel_all(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await self._broker.cancel_all()
        except (BrokerError, TimeoutError) as exc:
            log.warning("order.cancel_all_failed", error=repr(exc))

    async def _worker(self) -> None:
        while True:
            while not self._outbox:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
            intent = self._outbox.popleft()
            cid = intent.client_order_id
            self._in_flight += 1
            self._sending = cid
            try:
                await self._submit(intent)
            finally:
                self._in_flight -= 1
                self._sending = None
            reason = self._cancel_when_sent.pop(cid, None)
            if reason is not None:
                self.execute_cancel(CancelOrder(cid, reason=reason))

    async def _submit(self, intent: OrderIntent) -> None:
        cid = intent.client_order_id
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that
            # arrives as the call completes, and __aexit__ would then wait forever.
            async with asyncio.timeout(self._timeout):
                await self._broker.submit(intent)
        except BrokerRejected as exc:
            self._reject(cid, str(exc), exc.code)
        except (AmbiguousSubmission, TimeoutError) as exc:
            self.stats["ambiguous"] += 1
            log.warning("order.ambiguous", client_order_id=cid, error=repr(exc))
            await self.resolve(cid)
        except BrokerError as exc:
            # Certainly not at the broker (e.g. unavailable before sending): reject
            # locally; the next signal may try again with a new intent.
            self._reject(cid, f"broker error: {exc}", exc.code)
        except Exception as exc:  # one order's bug must not kill the worker
            await self._submit_failed(cid, exc)

    async def _submit_failed(self, cid: str, exc: Exception) -> None:
        """An exception outside the broker error tree: the order may or may not have been
        sent, so look it up; the broker not having it makes it this order's rejection."""
        self.stats["submit_failed"] += 1
        log.error("order.submit_failed", client_order_id=cid, error=repr(exc), exc_info=exc)
        found, certain = await self._lookup(cid)
        if found is not None:
            self._adopt_snapshot(cid, found)
        elif certain:
            self._reject(cid, f"{SUBMIT_FAILED}: {type(exc).__name__}: {exc}"[:300], None)
        # else: unknown, stays in flight; reconciliation adopts or abandons it

    def _reject(self, cid: str, reason: str, code: int | None) -> None:
        self.on_report(OrderRejected(client_order_id=cid, ts=self._clock.now(),
                                     reason=reason, code=code))

    async def resolve(self, client_order_id: str) -> BrokerOrder | None:
        """Look an in-flight order up at the broker and adopt what the broker says.

        Never re-sends: an order the broker does not know stays in flight until
        reconciliation marks it abandoned.
        """
        found, _ = await self._lookup(client_order_id)
        if found is not None:
            self._adopt_snapshot(client_order_id, found)
        log.info("order.resolved", client_order_id=client_order_id,
                 found=found is not None, status=str(found.status) if found else None)
        return found

    async def _lookup(self, cid: str) -> tuple[BrokerOrder | None, bool]:
        """The broker's order and whether the answer is certain (False: lookup failed)."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._broker.get_order(cid), True
        except (BrokerError, TimeoutError) as exc:
            log.warning("order.lookup_failed", client_order_id=cid, error=repr(exc))
            return None, False

    def _adopt_snapshot(self, cid: str, found: BrokerOrder) -> None:
        for event in reports_for(found, self.orders.get(cid), self._clock.now()):
            self.on_report(event)


def reports_for(found: BrokerOrder, order: Order | None, ts: datetime) -> Iterable[OrderEvent]:
    """The acknowledgement implied by a broker snapshot (fills come from fill records)."""
    if order is None:
        return []
    out: list[OrderEvent] = []
    cid = found.client_order_id
    if order.status is OrderStatus.PENDING_NEW and found.status is not OrderStatus.PENDING_NEW:
        if found.status is OrderStatus.REJECTED:
            out.append(OrderRejected(client_order_id=cid, ts=ts, reason="rejected at broker"))
        else:
            out.append(OrderNew(client_order_id=cid, ts=ts,
                                broker_order_id=found.broker_order_id))
    return out


__all__ = ["SUBMIT_FAILED", "OrderHistory", "OrderManager", "reports_for"]
