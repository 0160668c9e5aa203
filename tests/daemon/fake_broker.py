"""A recording fake broker (a sibling of the paper broker behind ``Broker``), for tests.

It keeps orders, fills, positions and cash in memory, reports through its sink only
when told to (``report``), and lets a test act behind the daemon's back: fill an order
silently (a fill while the daemon was down), move a position, change cash.

Every fill carries its identity (``cum_qty``). With ``channel_ids`` the fill list
(``fills_since``) names each execution differently from the report stream, as Alpaca's
FILL activities may.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from types import TracebackType
from typing import Self

from kernel.broker import BrokerFill, BrokerOrder, EventSink
from kernel.events import Event, OrderFilled, OrderIntent, OrderNew
from kernel.model import AccountSnapshot, BrokerPosition, Fill, MarketClock, OrderSide
from kernel.orders import TERMINAL, OrderStatus

T0 = datetime(2024, 3, 1, 15, 0, tzinfo=UTC)


@dataclass
class _Pos:
    qty: int = 0
    avg: Decimal = Decimal(0)


class FakeBroker:
    name = "fake"

    def __init__(self, cash: Decimal = Decimal(100_000), *, report: bool = True,
                 channel_ids: bool = False) -> None:
        self.cash = cash
        self.report = report
        self.channel_ids = channel_ids
        self.sink: EventSink = self._drop
        self.orders: dict[str, BrokerOrder] = {}
        self.fills: list[BrokerFill] = []
        self.pos: dict[str, _Pos] = {}
        self.submitted: list[str] = []
        # Called as ``account()`` is asked, after ``positions()`` was read: what happens
        # at the broker (and on its stream) between two REST calls of one snapshot.
        self.between_calls: list[Callable[[], None]] = []
        self._seq = 0

    def _drop(self, event: Event) -> None:
        pass

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def submit(self, intent: OrderIntent) -> None:
        self.submitted.append(intent.client_order_id)
        self.accept(intent)

    def accept(self, intent: OrderIntent, *, report: bool | None = None) -> BrokerOrder:
        """Record ``intent`` as a NEW order (the broker received it)."""
        self._seq += 1
        bo = BrokerOrder(intent.client_order_id, f"B{self._seq}", intent.symbol, intent.side,
                         intent.qty, intent.order_type, intent.time_in_force, OrderStatus.NEW,
                         0, None, intent.ts)
        self.orders[intent.client_order_id] = bo
        if self.report if report is None else report:
            self.sink(OrderNew(intent.client_order_id, intent.ts,
                               broker_order_id=bo.broker_order_id))
        return bo

    def fill(self, cid: str, qty: int, price: Decimal, ts: datetime = T0, *,
             report: bool | None = None) -> BrokerFill:
        """Execute ``qty`` of an order at ``price`` (reported only if ``report``)."""
        bo = self.orders[cid]
        n = sum(1 for f in self.fills if f.client_order_id == cid) + 1
        filled = bo.filled_qty + qty
        bf = BrokerFill(f"{bo.broker_order_id}-{n}", cid, bo.symbol, bo.side, qty, price, ts,
                        cum_qty=filled, broker_order_id=bo.broker_order_id)
        self.fills.append(bf)
        self.orders[cid] = replace(bo, filled_qty=filled, filled_avg_price=price,
                                   status=OrderStatus.FILLED if filled == bo.qty
                                   else OrderStatus.PARTIALLY_FILLED)
        signed = qty * bo.side.sign
        p = self.pos.setdefault(bo.symbol, _Pos())
        if p.qty + signed and (p.qty == 0 or (p.qty > 0) == (signed > 0)):
            p.avg = (p.avg * abs(p.qty) + price * qty) / abs(p.qty + signed)
        p.qty += signed
        self.cash -= price * signed
        if self.report if report is None else report:
            self.sink(OrderFilled(cid, ts, fill=Fill(bf.execution_id, cid, bo.symbol, bo.side,
                                                      qty, price, ts, cum_qty=filled)))
        return bf

    def set_status(self, cid: str, status: OrderStatus) -> None:
        self.orders[cid] = replace(self.orders[cid], status=status)

    def set_position(self, symbol: str, qty: int, avg: Decimal) -> None:
        """Change a position behind the daemon's back (a manual trade, a corporate action)."""
        self.pos[symbol] = _Pos(qty, avg)

    async def cancel(self, client_order_id: str) -> None:
        self.set_status(client_order_id, OrderStatus.CANCELED)

    async def cancel_all(self) -> None:
        for cid, bo in self.orders.items():
            if bo.status not in TERMINAL:
                self.set_status(cid, OrderStatus.CANCELED)

    async def replace(self, client_order_id: str, new_client_order_id: str, *,
                      qty: int | None = None, limit_price: Decimal | None = None,
                      stop_price: Decimal | None = None) -> None:
        raise NotImplementedError

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        return self.orders.get(client_order_id)

    async def open_orders(self) -> list[BrokerOrder]:
        return [o for o in self.orders.values() if o.status not in TERMINAL]

    async def fills_since(self, since: datetime) -> list[BrokerFill]:
        listed = [f for f in self.fills if f.ts >= since]
        if self.channel_ids:
            listed = [replace(f, execution_id=f"activity::{f.execution_id[::-1]}")
                      for f in listed]
        return listed

    async def positions(self) -> list[BrokerPosition]:
        return [BrokerPosition(s, p.qty, p.avg) for s, p in sorted(self.pos.items()) if p.qty]

    async def account(self) -> AccountSnapshot:
        snap = AccountSnapshot(T0, self.cash, self.cash, self.cash, tuple(await self.positions()))
        if self.between_calls:
            self.between_calls.pop(0)()
        return snap

    async def clock(self) -> MarketClock | None:
        return None


def intent(cid: str, symbol: str = "AAPL", qty: int = 10, side: OrderSide = OrderSide.BUY,
           price: str = "100", ts: datetime = T0) -> OrderIntent:
    from kernel.model import OrderType, TimeInForce

    return OrderIntent(cid, symbol, side, qty, OrderType.MARKET, TimeInForce.DAY, ts,
                       Decimal(price))
