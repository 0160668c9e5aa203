"""``FakeBroker``: the test double of the ``kernel.broker.Broker`` protocol.

It is shipped beside the paper broker the way httpx ships ``MockTransport`` beside its
real transports: a sibling implementation of the same narrow protocol, for tests and
tools that need a broker which does exactly what it is told. The product never builds it
from configuration (``brokers.factory`` knows only ``paper`` and ``alpaca``); a test
hands it to ``engine.system.build_system`` instead::

    fake = FakeBroker(Decimal(100_000))
    system = build_system(spec, daemon=DaemonConfig(), clock=clock, broker=fake.connect)

It keeps its own books (orders, fills, positions, cash), independent of the daemon's,
and records every call. By itself it only acknowledges what is submitted (``OrderNew``);
everything else happens when the test says so:

* **the market**: ``fill(cid, qty, price)`` executes part or all of an order;
  ``fill_on_submit`` fills every order in full as soon as it is acknowledged.
* **behind the daemon's back**: ``report=False`` (per call or for the whole broker)
  changes the books without a report, as if the stream had dropped it or the daemon was
  down; ``accept`` takes an order the daemon never sent; ``set_status``,
  ``set_position`` and ``cash`` move the books directly.
* **faults**: ``fail_next_submit(exc)`` raises from the next ``submit`` (after recording
  it: a submit that raised was still attempted), ``hang_submit`` makes ``submit`` never
  return, ``cancel_error`` is raised by every ``cancel`` and ``cancel_all``.
* **any report**: ``emit(event)`` delivers an event through the sink, as a stream would.
* **Alpaca's quirks**: ``channel_ids`` names each execution differently in
  ``fills_since`` than on the stream (as Alpaca's FILL activities may); ``between_calls``
  runs a step between ``positions()`` and ``account()`` of one snapshot (a fill landing
  while the reconciler reads the broker).

Recorded calls: ``received`` (the intents, in order; ``submitted`` their ids),
``cancels``, ``cancel_alls``, ``replaces``, ``lookups`` (``get_order`` ids).

It keeps everything it is given, without a bound: a test double, not for long runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Self

from kernel.broker import BrokerFill, BrokerOrder, EventSink
from kernel.clock import Clock
from kernel.errors import BrokerError, BrokerRejected
from kernel.events import (
    Event,
    OrderCanceled,
    OrderFilled,
    OrderIntent,
    OrderNew,
    OrderReplaced,
)
from kernel.model import AccountSnapshot, BrokerPosition, Fill, MarketClock
from kernel.orders import TERMINAL, OrderStatus

# Timestamps when no clock is given: a Friday, 10:00 New York (a regular session).
EPOCH = datetime(2024, 3, 1, 15, 0, tzinfo=UTC)


@dataclass(slots=True)
class FakePosition:
    """A position in the fake's own books (average cost, no market marks)."""

    qty: int = 0
    avg: Decimal = Decimal(0)

    def apply(self, signed_qty: int, price: Decimal) -> None:
        """Book a fill: growing averages the cost in, reducing keeps it, flipping restarts
        it at ``price``."""
        new = self.qty + signed_qty
        if new == 0:
            self.avg = Decimal(0)
        elif self.qty == 0 or (self.qty > 0) == (signed_qty > 0):
            self.avg = (self.avg * abs(self.qty) + price * abs(signed_qty)) / abs(new)
        elif (self.qty > 0) != (new > 0):
            self.avg = price
        self.qty = new


class FakeBroker:
    """A recording broker with its own books and fault controls (see the module doc).

    Args:
        cash: the account's starting cash.
        report: whether changes are reported through the sink by default (each call
            can say otherwise with its own ``report=``).
        fill_on_submit: fill every acknowledged order in full at once, at its limit price
            (else its reference price).
        clock: where timestamps come from; without one they are ``EPOCH`` (acks carry the
            intent's own time).
    """

    name = "fake"

    def __init__(self, cash: Decimal = Decimal(100_000), *, report: bool = True,
                 fill_on_submit: bool = False, clock: Clock | None = None,
                 channel_ids: bool = False) -> None:
        self.cash = cash
        self.report = report
        self.fill_on_submit = fill_on_submit
        self.channel_ids = channel_ids
        # Called as ``account()`` is asked, after ``positions()`` was read: what happens
        # at the broker (and on its stream) between two REST calls of one snapshot.
        self.between_calls: list[Callable[[], None]] = []
        self._clock = clock
        self.sink: EventSink = self._drop
        self.orders: dict[str, BrokerOrder] = {}
        self.fills: list[BrokerFill] = []
        self.pos: dict[str, FakePosition] = {}
        self.received: list[OrderIntent] = []
        self.cancels: list[str] = []
        self.cancel_alls = 0
        self.replaces: list[tuple[str, str]] = []
        self.lookups: list[str] = []
        self.hang_submit = False
        self.submit_gate: asyncio.Event | None = None  # submit waits for it, then accepts
        self.cancel_error: BrokerError | None = None
        self._next_submit_error: Exception | None = None
        self._seq = 0

    # -- wiring and test controls ----------------------------------------------------------

    def connect(self, sink: EventSink) -> Self:
        """Send reports to ``sink`` from now on and return the broker: a factory for
        ``build_system(broker=fake.connect)``. A restarted daemon connects again."""
        self.sink = sink
        return self

    @staticmethod
    def _drop(event: Event) -> None:
        """Reports before anyone connected go nowhere, like a stream nobody listens to."""

    def emit(self, event: Event) -> None:
        """Deliver ``event`` through the sink, as the broker's stream would."""
        self.sink(event)

    def fail_next_submit(self, exc: Exception) -> None:
        """Make the next ``submit`` raise ``exc`` (once)."""
        self._next_submit_error = exc

    @property
    def submitted(self) -> list[str]:
        """The client order ids of every ``submit`` call, in order."""
        return [i.client_order_id for i in self.received]

    def _now(self, default: datetime = EPOCH) -> datetime:
        return self._clock.now() if self._clock is not None else default

    def _reports(self, report: bool | None) -> bool:
        return self.report if report is None else report

    # -- acting as the broker and the market -----------------------------------------------

    def accept(self, intent: OrderIntent, *, report: bool | None = None) -> BrokerOrder:
        """Take ``intent`` in as a NEW order (reported as ``OrderNew`` if ``report``).

        Raises:
            BrokerRejected: the client order id was used before.
        """
        cid = intent.client_order_id
        if cid in self.orders:
            raise BrokerRejected(f"client_order_id must be unique: {cid!r} was used before",
                                 status=422)
        self._seq += 1
        now = self._now(intent.ts)
        bo = BrokerOrder(cid, f"B{self._seq}", intent.symbol, intent.side, intent.qty,
                         intent.order_type, intent.time_in_force, OrderStatus.NEW, 0, None,
                         now, limit_price=intent.limit_price, stop_price=intent.stop_price)
        self.orders[cid] = bo
        if self._reports(report):
            self.sink(OrderNew(cid, now, broker_order_id=bo.broker_order_id))
        return bo

    def fill(self, cid: str, qty: int, price: Decimal, ts: datetime | None = None, *,
             report: bool | None = None) -> BrokerFill:
        """Execute ``qty`` of order ``cid`` at ``price``: the order, the position and the
        cash change; an ``OrderFilled`` is reported if ``report``."""
        bo = self.orders[cid]
        when = ts or self._now()
        filled = bo.filled_qty + qty
        n = sum(1 for f in self.fills if f.client_order_id == cid) + 1
        bf = BrokerFill(f"{bo.broker_order_id}-{n}", cid, bo.symbol, bo.side, qty, price, when,
                        cum_qty=filled, broker_order_id=bo.broker_order_id)
        self.fills.append(bf)
        avg = (((bo.filled_avg_price or Decimal(0)) * bo.filled_qty + price * qty) / filled)
        self.orders[cid] = replace(bo, filled_qty=filled, filled_avg_price=avg,
                                   status=OrderStatus.FILLED if filled >= bo.qty
                                   else OrderStatus.PARTIALLY_FILLED)
        self.pos.setdefault(bo.symbol, FakePosition()).apply(qty * bo.side.sign, price)
        self.cash -= price * qty * bo.side.sign
        if self._reports(report):
            self.sink(OrderFilled(cid, when, fill=Fill(bf.execution_id, cid, bo.symbol, bo.side,
                                                       qty, price, when, cum_qty=filled)))
        return bf

    def set_status(self, cid: str, status: OrderStatus) -> None:
        """Change an order's status without a report (a missed cancel, an expiry)."""
        self.orders[cid] = replace(self.orders[cid], status=status)

    def set_position(self, symbol: str, qty: int, avg: Decimal) -> None:
        """Change a position behind the daemon's back (a manual trade, a corporate action)."""
        self.pos[symbol] = FakePosition(qty, avg)

    def _open(self, cid: str) -> BrokerOrder:
        bo = self.orders.get(cid)
        if bo is None:
            raise BrokerRejected(f"order {cid!r} not found", status=404)
        if bo.status in TERMINAL:
            raise BrokerRejected(f'order is already in "{bo.status.value}" state', status=422)
        return bo

    def _cancel(self, cid: str, reason: str) -> None:
        self.set_status(cid, OrderStatus.CANCELED)
        if self.report:
            self.sink(OrderCanceled(cid, self._now(), reason=reason))

    # -- Broker protocol ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def submit(self, intent: OrderIntent) -> None:
        """Record the call, apply any fault, then ``accept`` (and fill, if
        ``fill_on_submit``)."""
        self.received.append(intent)
        if self._next_submit_error is not None:
            exc, self._next_submit_error = self._next_submit_error, None
            raise exc
        if self.hang_submit:
            await asyncio.Event().wait()
        if self.submit_gate is not None:
            await self.submit_gate.wait()
        self.accept(intent)
        if self.fill_on_submit:
            self.fill(intent.client_order_id, intent.qty,
                      intent.limit_price or intent.reference_price)

    async def cancel(self, client_order_id: str) -> None:
        """Cancel an open order (``OrderCanceled`` if reporting).

        Raises:
            BrokerRejected: unknown or already terminal order.
        """
        self.cancels.append(client_order_id)
        if self.cancel_error is not None:
            raise self.cancel_error
        self._open(client_order_id)
        self._cancel(client_order_id, "canceled")

    async def cancel_all(self) -> None:
        """Cancel every open order."""
        self.cancel_alls += 1
        if self.cancel_error is not None:
            raise self.cancel_error
        for cid, bo in list(self.orders.items()):
            if bo.status not in TERMINAL:
                self._cancel(cid, "cancel_all")

    async def replace(self, client_order_id: str, new_client_order_id: str, *,
                      qty: int | None = None, limit_price: Decimal | None = None,
                      stop_price: Decimal | None = None) -> None:
        """Replace an open order as the paper broker does: the old one is REPLACED
        (``OrderReplaced``), the new one works ``qty - filled`` (``OrderNew``).

        Raises:
            BrokerRejected: unknown or terminal order, a used new id, or ``qty`` not above
                the filled quantity.
        """
        self.replaces.append((client_order_id, new_client_order_id))
        old = self._open(client_order_id)
        total = old.qty if qty is None else qty
        if total <= old.filled_qty:
            raise BrokerRejected(f"qty {total} must exceed the filled qty {old.filled_qty}",
                                 status=422)
        if new_client_order_id in self.orders:
            raise BrokerRejected("client_order_id must be unique", status=422)
        now = self._now()
        self.set_status(client_order_id, OrderStatus.REPLACED)
        if self.report:
            self.sink(OrderReplaced(client_order_id, now,
                                    new_client_order_id=new_client_order_id))
        self.accept(OrderIntent(
            new_client_order_id, old.symbol, old.side, total - old.filled_qty, old.order_type,
            old.time_in_force, now, limit_price or old.limit_price or Decimal(0),
            limit_price=limit_price or old.limit_price,
            stop_price=stop_price or old.stop_price))

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        self.lookups.append(client_order_id)
        return self.orders.get(client_order_id)

    async def open_orders(self) -> list[BrokerOrder]:
        return [o for o in self.orders.values() if o.status not in TERMINAL]

    async def fills_since(self, since: datetime) -> list[BrokerFill]:
        listed = [f for f in self.fills if f.ts >= since]
        if self.channel_ids:  # the fill list names executions unlike the stream (Alpaca)
            listed = [replace(f, execution_id=f"activity::{f.execution_id[::-1]}")
                      for f in listed]
        return listed

    async def positions(self) -> list[BrokerPosition]:
        return [BrokerPosition(s, p.qty, p.avg) for s, p in sorted(self.pos.items()) if p.qty]

    async def account(self) -> AccountSnapshot:
        """Cash, and equity with positions at their average cost (the fake has no market
        data); buying power is the cash."""
        positions = tuple(await self.positions())
        equity = self.cash + sum((p.qty * p.avg_price for p in positions), Decimal(0))
        snap = AccountSnapshot(self._now(), self.cash, equity, self.cash, positions)
        if self.between_calls:
            self.between_calls.pop(0)()
        return snap

    async def clock(self) -> MarketClock | None:
        """None: no market clock (the gate uses its own market hours)."""
        return None


__all__ = ["EPOCH", "FakeBroker", "FakePosition"]
