"""The fake broker: its own books, what it records, its fault controls, and how a trading
system built by ``build_system`` connects to it."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from brokers.config import BrokerConfig
from brokers.fake import EPOCH, FakeBroker
from engine.config import DaemonConfig
from engine.system import SystemSpec, build_system
from kernel.broker import Broker
from kernel.clock import ReplayClock
from kernel.errors import BrokerRejected, BrokerUnavailable
from kernel.events import (
    Event,
    OrderCanceled,
    OrderFilled,
    OrderNew,
    OrderReplaced,
    SubmitOrder,
)
from kernel.model import OrderSide, OrderType
from kernel.orders import OrderStatus
from risk.config import RiskConfig
from tests.kit import intent

D = Decimal


def connected(**kwargs: object) -> tuple[FakeBroker, list[Event]]:
    reports: list[Event] = []
    return FakeBroker(**kwargs).connect(reports.append), reports  # type: ignore[arg-type]


class TestFakeBrokerOrders:
    def test_fake_when_checked_then_satisfies_broker_protocol(self) -> None:
        assert isinstance(FakeBroker(), Broker)

    async def test_submit_then_recorded_acknowledged_and_on_the_books(self) -> None:
        # Arrange
        broker, reports = connected()
        i = intent("c1", qty=7)
        # Act
        await broker.submit(i)
        # Assert
        assert broker.received == [i] and broker.submitted == ["c1"]
        assert reports == [OrderNew("c1", EPOCH, broker_order_id="B1")]
        order = await broker.get_order("c1")
        assert order is not None
        assert (order.status, order.qty, order.filled_qty, order.broker_order_id) == (
            OrderStatus.NEW, 7, 0, "B1")
        assert [o.client_order_id for o in await broker.open_orders()] == ["c1"]
        assert broker.lookups == ["c1"]

    async def test_submit_when_not_reporting_then_books_change_silently(self) -> None:
        broker, reports = connected(report=False)
        await broker.submit(intent("c1"))
        broker.fill("c1", 10, D(100))
        assert reports == []
        assert (await broker.get_order("c1")).status is OrderStatus.FILLED  # type: ignore[union-attr]

    async def test_submit_when_id_used_before_then_rejected_and_books_unchanged(self) -> None:
        broker, _ = connected()
        await broker.submit(intent("c1", qty=10))
        with pytest.raises(BrokerRejected, match="unique"):
            await broker.submit(intent("c1", qty=99))
        assert (await broker.get_order("c1")).qty == 10  # type: ignore[union-attr]
        assert broker.submitted == ["c1", "c1"]  # both calls are on the record

    async def test_fail_next_submit_then_raises_once_and_takes_nothing_in(self) -> None:
        broker, reports = connected()
        broker.fail_next_submit(BrokerUnavailable("503"))
        with pytest.raises(BrokerUnavailable):
            await broker.submit(intent("c1"))
        await broker.submit(intent("c2"))
        assert broker.submitted == ["c1", "c2"]
        assert await broker.get_order("c1") is None
        assert [r.client_order_id for r in reports] == ["c2"]  # type: ignore[attr-defined]

    async def test_hang_submit_then_call_never_returns(self) -> None:
        broker, reports = connected()
        broker.hang_submit = True
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(broker.submit(intent("c1")), 0.05)
        assert broker.submitted == ["c1"] and reports == []

    async def test_fill_on_submit_then_filled_at_limit_else_reference(self) -> None:
        broker, reports = connected(fill_on_submit=True)
        await broker.submit(intent("m1", qty=3, price="50"))
        await broker.submit(replace(intent("l1", symbol="MSFT", qty=2),
                                    order_type=OrderType.LIMIT, limit_price=D("99.5")))
        fills = [r.fill for r in reports if isinstance(r, OrderFilled)]
        assert [(f.client_order_id, f.qty, f.price) for f in fills] == [
            ("m1", 3, D(50)), ("l1", 2, D("99.5"))]


class TestFakeBrokerBooks:
    async def test_fill_when_partial_then_order_fills_position_and_cash_follow(self) -> None:
        # Arrange
        broker, reports = connected(cash=D(10_000))
        await broker.submit(intent("c1", qty=10))
        # Act
        broker.fill("c1", 4, D(100))
        broker.fill("c1", 6, D(105), EPOCH + timedelta(minutes=1))
        # Assert
        order = await broker.get_order("c1")
        assert order is not None
        assert (order.status, order.filled_qty, order.filled_avg_price) == (
            OrderStatus.FILLED, 10, D(103))
        fills = [r.fill for r in reports if isinstance(r, OrderFilled)]
        assert [(f.execution_id, f.qty, f.cum_qty) for f in fills] == [
            ("B1-1", 4, 4), ("B1-2", 6, 10)]
        assert [f.qty for f in await broker.fills_since(EPOCH + timedelta(seconds=1))] == [6]
        assert broker.cash == D(10_000) - D(400) - D(630)
        (pos,) = await broker.positions()
        assert (pos.symbol, pos.qty, pos.avg_price) == ("AAPL", 10, D(103))

    async def test_fill_when_sell_crosses_zero_then_short_at_the_sell_price(self) -> None:
        broker, _ = connected()
        await broker.submit(intent("b", qty=10))
        broker.fill("b", 10, D(100))
        await broker.submit(intent("s1", qty=4, side=OrderSide.SELL))
        broker.fill("s1", 4, D(120))  # reducing keeps the cost
        assert [(p.qty, p.avg_price) for p in await broker.positions()] == [(6, D(100))]
        await broker.submit(intent("s2", qty=9, side=OrderSide.SELL))
        broker.fill("s2", 9, D(110))  # flips short: the cost restarts
        assert [(p.qty, p.avg_price) for p in await broker.positions()] == [(-3, D(110))]

    async def test_account_when_holding_then_equity_is_cash_plus_positions_at_cost(
            self) -> None:
        broker, _ = connected(cash=D(1_000))
        broker.set_position("AAPL", 5, D(20))
        broker.cash -= D(100)
        account = await broker.account()
        assert (account.cash, account.equity, account.buying_power) == (D(900), D(1000), D(900))
        assert [(p.symbol, p.qty) for p in account.positions] == [("AAPL", 5)]

    async def test_accept_when_told_then_an_order_the_daemon_never_sent(self) -> None:
        broker, reports = connected()
        broker.accept(intent("manual-1"), report=False)
        assert broker.submitted == [] and reports == []
        assert [o.client_order_id for o in await broker.open_orders()] == ["manual-1"]


class TestFakeBrokerCancelReplace:
    async def test_cancel_when_open_then_canceled_and_reported(self) -> None:
        broker, reports = connected()
        await broker.submit(intent("c1"))
        await broker.cancel("c1")
        assert broker.cancels == ["c1"]
        assert isinstance(reports[-1], OrderCanceled)
        assert await broker.open_orders() == []

    async def test_cancel_when_unknown_or_done_then_rejected(self) -> None:
        broker, _ = connected()
        with pytest.raises(BrokerRejected) as unknown:
            await broker.cancel("nope")
        assert unknown.value.status == 404
        await broker.submit(intent("c1"))
        broker.fill("c1", 10, D(100))
        with pytest.raises(BrokerRejected, match="filled"):
            await broker.cancel("c1")

    async def test_cancel_error_when_set_then_raised_by_cancel_and_cancel_all(self) -> None:
        broker, _ = connected()
        await broker.submit(intent("c1"))
        broker.cancel_error = BrokerUnavailable("503")
        with pytest.raises(BrokerUnavailable):
            await broker.cancel("c1")
        with pytest.raises(BrokerUnavailable):
            await broker.cancel_all()
        assert (broker.cancels, broker.cancel_alls) == (["c1"], 1)
        assert [o.client_order_id for o in await broker.open_orders()] == ["c1"]

    async def test_cancel_all_then_every_open_order_canceled(self) -> None:
        broker, reports = connected()
        for cid in ("a", "b", "c"):
            await broker.submit(intent(cid))
        broker.fill("b", 10, D(100))
        await broker.cancel_all()
        assert [r.client_order_id for r in reports if isinstance(r, OrderCanceled)] == [
            "a", "c"]
        assert await broker.open_orders() == []

    async def test_replace_when_partly_filled_then_new_order_works_the_rest(self) -> None:
        broker, reports = connected()
        await broker.submit(intent("c1", qty=10))
        broker.fill("c1", 4, D(100))
        await broker.replace("c1", "c2", qty=12, limit_price=D("99"))
        assert broker.replaces == [("c1", "c2")]
        assert (await broker.get_order("c1")).status is OrderStatus.REPLACED  # type: ignore[union-attr]
        new = await broker.get_order("c2")
        assert new is not None and (new.qty, new.limit_price, new.status) == (
            8, D(99), OrderStatus.NEW)
        assert [type(r) for r in reports[-2:]] == [OrderReplaced, OrderNew]
        with pytest.raises(BrokerRejected, match="must exceed"):
            await broker.replace("c2", "c3", qty=0)


class TestFakeBrokerInASystem:
    async def test_build_system_when_given_connect_then_reports_reach_the_books(
            self, tmp_path: Path) -> None:
        # Arrange: the fake handed to build_system as a factory of the system's sink
        broker = FakeBroker(report=True)
        system = build_system(
            SystemSpec(name="fake", broker=BrokerConfig(), risk=RiskConfig(),
                       state_dir=tmp_path),
            daemon=DaemonConfig(state_dir=tmp_path), clock=ReplayClock(EPOCH), environ={},
            broker=broker.connect, journaling=False)
        assert system.broker is broker
        async with system:
            # Act: an order reaches the broker, which acknowledges and fills it
            system.bus.send(SubmitOrder(intent("c1", qty=10)))
            await system.orders.drained()
            broker.fill("c1", 10, D(100))
        # Assert: the system's order manager and portfolio took both reports
        assert system.orders.orders["c1"].status is OrderStatus.FILLED
        assert system.portfolio.qty("AAPL") == 10
        assert system.portfolio.cash == D(100_000) - D(1_000)

    async def test_build_system_when_given_a_broker_then_uses_it_as_is(
            self, tmp_path: Path) -> None:
        broker = FakeBroker()
        system = build_system(
            SystemSpec(name="fake", broker=BrokerConfig(), risk=RiskConfig(),
                       state_dir=tmp_path),
            daemon=DaemonConfig(state_dir=tmp_path), clock=ReplayClock(EPOCH), environ={},
            broker=broker, journaling=False)
        assert system.broker is broker
