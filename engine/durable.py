"""``DurableBroker``: the broker as the order manager sees it when the journal group-commits.

Every call is passed through unchanged, except ``submit``, which first makes every owed
order intent durable (one fsync for all intents journaled since the last commit). So the
rule "an intent is on disk before the broker hears of it" holds however intents are
batched, and a burst of orders from one signal batch costs one fsync.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Self

from engine.journal import Journal
from kernel.broker import Broker, BrokerFill, BrokerOrder
from kernel.events import OrderIntent
from kernel.model import AccountSnapshot, BrokerPosition, MarketClock


class DurableBroker:
    """Wraps ``broker``; ``submit`` waits for the journal's owed intents to be durable."""

    def __init__(self, broker: Broker, journal: Journal) -> None:
        self._broker = broker
        self._journal = journal
        self.name = broker.name

    async def __aenter__(self) -> Self:
        return self  # the daemon enters the wrapped broker itself

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    async def submit(self, intent: OrderIntent) -> None:
        self._journal.ensure_durable()
        await self._broker.submit(intent)

    async def cancel(self, client_order_id: str) -> None:
        await self._broker.cancel(client_order_id)

    async def cancel_all(self) -> None:
        await self._broker.cancel_all()

    async def replace(self, client_order_id: str, new_client_order_id: str, *,
                      qty: int | None = None, limit_price: Decimal | None = None,
                      stop_price: Decimal | None = None) -> None:
        await self._broker.replace(client_order_id, new_client_order_id, qty=qty,
                                   limit_price=limit_price, stop_price=stop_price)

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        return await self._broker.get_order(client_order_id)

    async def open_orders(self) -> list[BrokerOrder]:
        return await self._broker.open_orders()

    async def fills_since(self, since: datetime) -> list[BrokerFill]:
        return await self._broker.fills_since(since)

    async def positions(self) -> list[BrokerPosition]:
        return await self._broker.positions()

    async def account(self) -> AccountSnapshot:
        return await self._broker.account()

    async def clock(self) -> MarketClock | None:
        return await self._broker.clock()


__all__ = ["DurableBroker"]
