"""Recording fakes: sibling implementations of our protocols, for tests (no mocks)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Self

from kernel.broker import BrokerFill, BrokerOrder, EventSink
from kernel.errors import BrokerError
from kernel.events import Event, OrderIntent
from kernel.model import AccountSnapshot, BrokerPosition, MarketClock


class RecordingBroker:
    """A ``kernel.broker.Broker`` that records every call and does only what it is told.

    * ``submitted`` / ``cancels`` / ``cancel_alls`` / ``lookups`` record the calls.
    * ``fail_next_submit(exc)`` makes the next ``submit`` raise ``exc`` (after recording
      the intent: a submit that raises was still attempted).
    * ``hang_submit = True`` makes ``submit`` never return (to exercise timeouts).
    * ``cancel_error`` (when set) is raised by every ``cancel`` and ``cancel_all``.
    * ``known`` holds the ``BrokerOrder`` snapshots ``get_order`` answers from.
    * ``report(event)`` sends a report through the sink, as a broker stream would.
    """

    name = "recording"

    def __init__(self, sink: EventSink | None = None, *, cash: Decimal = Decimal(100_000)):
        self.sink = sink
        self.cash = cash
        self.submitted: list[OrderIntent] = []
        self.cancels: list[str] = []
        self.cancel_alls = 0
        self.lookups: list[str] = []
        self.known: dict[str, BrokerOrder] = {}
        self.hang_submit = False
        self.cancel_error: BrokerError | None = None
        self._next_submit_error: Exception | None = None
        self.entered = False

    # -- test controls -------------------------------------------------------------------

    def fail_next_submit(self, exc: Exception) -> None:
        self._next_submit_error = exc

    def report(self, event: Event) -> None:
        assert self.sink is not None, "connect the sink first"
        self.sink(event)

    # -- Broker protocol -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.entered = False

    async def submit(self, intent: OrderIntent) -> None:
        self.submitted.append(intent)
        if self._next_submit_error is not None:
            exc, self._next_submit_error = self._next_submit_error, None
            raise exc
        if self.hang_submit:
            await asyncio.Event().wait()

    async def cancel(self, client_order_id: str) -> None:
        self.cancels.append(client_order_id)
        if self.cancel_error is not None:
            raise self.cancel_error

    async def cancel_all(self) -> None:
        self.cancel_alls += 1
        if self.cancel_error is not None:
            raise self.cancel_error

    async def replace(
        self,
        client_order_id: str,
        new_client_order_id: str,
        *,
        qty: int | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> None:
        raise NotImplementedError("not needed by these tests")

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        self.lookups.append(client_order_id)
        return self.known.get(client_order_id)

    async def open_orders(self) -> list[BrokerOrder]:
        return list(self.known.values())

    async def fills_since(self, since: datetime) -> list[BrokerFill]:
        return []

    async def positions(self) -> list[BrokerPosition]:
        return []

    async def account(self) -> AccountSnapshot:
        return AccountSnapshot(ts=datetime(1970, 1, 1, tzinfo=UTC), cash=self.cash,
                               equity=self.cash, buying_power=self.cash)

    async def clock(self) -> MarketClock | None:
        return None
