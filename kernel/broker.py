"""The narrow boundary every broker implements: the paper simulator, the Alpaca adapter,
the IB adapter and test fakes are siblings behind this ``Broker`` protocol.

The adapter contract
--------------------

An adapter reports what it sees and answers queries; it decides nothing about the
books. What to book from a query and what counts as drift is decided by the engine's
reconciler alone (``engine.reconcile``).

* **Submission is fire-and-report.** ``submit`` hands the order over and returns; what
  the broker does with it comes back as domain ``OrderEvent``s through the
  ``EventSink`` the adapter was built with, always on the event loop's thread. A
  definite refusal raises ``BrokerRejected`` (with the broker's HTTP ``status`` and error
  ``code``): the order never existed. ``AmbiguousSubmission``: it may exist, resolve with
  ``get_order``. ``BrokerUnavailable``: it certainly does not exist.
* **Reports may repeat, arrive out of order or not at all**: the order manager applies
  them through the order state machine, which de-duplicates fills. Each ``Fill`` carries
  the order's cumulative filled quantity after it (``cum_qty``) when the broker says:
  that, with the order, is the fill's identity across channels. An execution id is only
  a fast path and may differ between the stream and ``fills_since``.
* **Connection status** is ``BrokerStatusChanged``: ``CONNECTED`` once up,
  ``DISCONNECTED`` when the report stream drops, ``RECOVERING`` after a reconnect (the
  reports of the gap are unknown). An adapter does not catch up on its own: the
  reconciler answers ``RECOVERING`` with a pass over the queries below, and it says when
  the books are confirmed (``ReconciliationChanged``). An adapter that sees a hint of a
  gap (the broker showing more filled than it reported) may publish a
  ``ReconcileRequested``.
* **Queries** return snapshots: ``get_order`` (any status; None only on a definite
  "not found"), ``open_orders``, ``fills_since`` (every execution with ``ts >= since``,
  with ``cum_qty``, ``broker_order_id`` and ``commission``), ``positions``, ``account``
  (``last_equity``, the equity at the previous close, when the broker reports it) and
  ``clock``. Errors are ``kernel.errors.BrokerError`` subclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from kernel.events import Event, OrderIntent
from kernel.model import (
    AccountSnapshot,
    BrokerPosition,
    MarketClock,
    OrderSide,
    OrderType,
    TimeInForce,
)
from kernel.orders import OrderStatus

# Brokers report ``OrderEvent``s, ``BrokerStatusChanged`` and ``ReconcileRequested``
# through the sink, always on the event loop's thread (adapters with SDK threads hop with
# call_soon_threadsafe).
EventSink = Callable[[Event], None]


@dataclass(frozen=True, slots=True)
class BrokerOrder:
    """An order as the broker sees it now (for lookups and reconciliation)."""

    client_order_id: str
    broker_order_id: str
    symbol: str
    side: OrderSide
    qty: int
    order_type: OrderType
    time_in_force: TimeInForce
    status: OrderStatus
    filled_qty: int
    filled_avg_price: Decimal | None
    submitted_at: datetime
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None


@dataclass(frozen=True, slots=True)
class BrokerFill:
    """One execution as the broker lists it (for reconciling fills missed on a stream).

    Identity: (``broker_order_id`` / ``client_order_id``, ``cum_qty``), the order's
    cumulative filled quantity after this execution; ``execution_id`` is this listing's
    own id and need not match the stream's. ``commission`` defaults to zero so adapters
    without fees need not set it; a broker that charges must report it, or
    reconciliation sees the fee as cash drift.
    """

    execution_id: str
    client_order_id: str
    symbol: str
    side: OrderSide
    qty: int
    price: Decimal
    ts: datetime
    commission: Decimal = Decimal(0)
    cum_qty: int | None = None  # the order's filled quantity after this fill (identity)
    broker_order_id: str = ""


@runtime_checkable
class Broker(Protocol):
    """What the daemon needs from a broker. Enter it (``async with``) before use."""

    name: str

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def submit(self, intent: OrderIntent) -> None:
        """Send an order identified by ``intent.client_order_id``.

        Raises:
            BrokerRejected: refused synchronously (the order never existed).
            AmbiguousSubmission: it may exist; resolve with ``get_order``.
            BrokerUnavailable: it certainly does not exist; may be retried.
        """
        ...

    async def cancel(self, client_order_id: str) -> None: ...

    async def cancel_all(self) -> None: ...

    async def replace(
        self,
        client_order_id: str,
        new_client_order_id: str,
        *,
        qty: int | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> None: ...

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        """The order by client id, in any status; None if the broker never had it."""
        ...

    async def open_orders(self) -> list[BrokerOrder]: ...

    async def fills_since(self, since: datetime) -> list[BrokerFill]: ...

    async def positions(self) -> list[BrokerPosition]: ...

    async def account(self) -> AccountSnapshot: ...

    async def clock(self) -> MarketClock | None:
        """The broker's market clock, or None when it has none (paper: calendar)."""
        ...
