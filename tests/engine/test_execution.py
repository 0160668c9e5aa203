"""The order manager against the fake broker: what reaches the broker, what is published,
how ambiguity is resolved (never by re-sending), and the views sizing uses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from brokers.config import BrokerConfig
from brokers.fake import FakeBroker
from engine.config import DaemonConfig
from engine.execution import OrderManager
from engine.system import SystemSpec, build_system
from kernel.broker import BrokerOrder
from kernel.clock import ReplayClock
from kernel.errors import AmbiguousSubmission, BrokerRejected, BrokerUnavailable
from kernel.events import (
    AlertRaised,
    BrokerStatusChanged,
    CancelAllOrders,
    CancelOrder,
    Event,
    OrderCanceled,
    OrderFilled,
    OrderIntent,
    OrderNew,
    OrderRejected,
    OrderSubmitted,
    SubmitOrder,
)
from kernel.model import Fill, OrderSide, OrderType, TimeInForce
from kernel.orders import Order, OrderStatus
from risk.config import RiskConfig

# 10:00 New York (EST) on a Tuesday
T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)


def intent(cid: str = "td-1", symbol: str = "AAPL", side: OrderSide = OrderSide.BUY,
           qty: int = 10) -> OrderIntent:
    return OrderIntent(client_order_id=cid, symbol=symbol, side=side, qty=qty,
                       order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY, ts=T0,
                       reference_price=Decimal("150.00"))


def filled(cid: str, exec_id: str, qty: int, price: str = "150.00",
           side: OrderSide = OrderSide.BUY, symbol: str = "AAPL") -> OrderFilled:
    return OrderFilled(client_order_id=cid, ts=T0, fill=Fill(
        execution_id=exec_id, client_order_id=cid, symbol=symbol, side=side, qty=qty,
        price=Decimal(price), ts=T0))


def broker_order(cid: str, status: OrderStatus, broker_id: str = "b-1") -> BrokerOrder:
    return BrokerOrder(client_order_id=cid, broker_order_id=broker_id, symbol="AAPL",
                       side=OrderSide.BUY, qty=10, order_type=OrderType.MARKET,
                       time_in_force=TimeInForce.DAY, status=status, filled_qty=0,
                       filled_avg_price=None, submitted_at=T0)


@dataclass
class Rig:
    broker: FakeBroker
    clock: ReplayClock
    manager: OrderManager
    published: list[Event] = field(default_factory=list)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.published if isinstance(e, kind)]


def build(**kwargs: object) -> Rig:
    """The order manager with its one collaborator, a fake broker that takes orders in
    silently (``report=False``): every report in these tests is the test's own."""
    broker = FakeBroker(report=False)
    clock = ReplayClock(T0)
    published: list[Event] = []
    manager = OrderManager(broker, clock=clock, publish=published.append, **kwargs)  # type: ignore[arg-type]
    broker.connect(manager.on_report)
    return Rig(broker, clock, manager, published)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = build(submit_timeout=0.2)
    async with r.manager:
        yield r


class TestOrderManagerLifecycle:
    @pytest.mark.parametrize("yields", [0, 1, 2, 3, 4])
    async def test_exit_when_cancelled_around_a_broker_call_then_returns(
        self, yields: int
    ) -> None:
        # Arrange: the exit lands at every point of a (fast) broker call in turn
        r = build(submit_timeout=5)
        await r.manager.__aenter__()
        r.manager.execute_submit(SubmitOrder(intent()))
        for _ in range(yields):
            await asyncio.sleep(0)

        # Act / Assert: leaving the context must cancel the worker, not hang
        await asyncio.wait_for(r.manager.__aexit__(None, None, None), 1)


class TestOrderManagerSubmit:
    async def test_submit_then_order_submitted_published_and_intent_reaches_broker(
        self, rig: Rig
    ) -> None:
        # Arrange
        order_intent = intent()

        # Act
        with capture_logs() as logs:
            rig.manager.execute_submit(SubmitOrder(order_intent))
            await asyncio.wait_for(rig.manager.drained(), 1)

        # Assert
        assert rig.published == [OrderSubmitted(client_order_id="td-1", ts=T0)]
        assert rig.broker.received == [order_intent]
        assert rig.manager.orders["td-1"].status is OrderStatus.PENDING_NEW
        assert [e["event"] for e in logs] == ["order.submitted"]

    async def test_submit_when_on_intent_hook_then_called_before_broker(self) -> None:
        r = build()
        seen_at_hook: list[int] = []
        r2 = OrderManager(r.broker, clock=r.clock, publish=r.published.append,
                          on_intent=lambda i: seen_at_hook.append(len(r.broker.submitted)))

        async with r2:
            r2.execute_submit(SubmitOrder(intent()))
            await asyncio.wait_for(r2.drained(), 1)

        assert seen_at_hook == [0]
        assert len(r.broker.submitted) == 1

    async def test_submit_when_duplicate_client_order_id_then_ignored(self, rig: Rig) -> None:
        rig.manager.execute_submit(SubmitOrder(intent()))
        with capture_logs() as logs:
            rig.manager.execute_submit(SubmitOrder(intent(qty=99)))
        await asyncio.wait_for(rig.manager.drained(), 1)

        assert len(rig.broker.submitted) == 1
        assert rig.manager.orders["td-1"].qty == 10
        assert rig.manager.stats["duplicate_id"] == 1
        assert [e["event"] for e in logs] == ["order.duplicate_id"]

    async def test_submit_when_broker_rejects_then_order_rejected_published(
        self, rig: Rig
    ) -> None:
        rig.broker.fail_next_submit(BrokerRejected("insufficient buying power", status=403))

        rig.manager.execute_submit(SubmitOrder(intent()))
        await asyncio.wait_for(rig.manager.drained(), 1)

        rejected = rig.of(OrderRejected)
        assert len(rejected) == 1
        assert "insufficient buying power" in rejected[0].reason  # type: ignore[attr-defined]
        assert rig.manager.orders["td-1"].status is OrderStatus.REJECTED

    async def test_submit_when_broker_unavailable_then_rejected_locally_not_retried(
        self, rig: Rig
    ) -> None:
        rig.broker.fail_next_submit(BrokerUnavailable("503"))

        rig.manager.execute_submit(SubmitOrder(intent()))
        await asyncio.wait_for(rig.manager.drained(), 1)

        assert len(rig.broker.submitted) == 1
        assert rig.manager.orders["td-1"].status is OrderStatus.REJECTED
        assert rig.broker.lookups == []

    async def test_submit_when_broker_refuses_with_code_then_rejection_carries_code(
        self, rig: Rig
    ) -> None:
        rig.broker.fail_next_submit(BrokerRejected(
            "submit_order: HTTP 422: qty must be a whole number", status=422, code=40010001))

        rig.manager.execute_submit(SubmitOrder(intent()))
        await asyncio.wait_for(rig.manager.drained(), 1)

        (rejected,) = rig.of(OrderRejected)
        assert rejected.code == 40010001  # type: ignore[attr-defined]
        assert "qty must be a whole number" in rejected.reason  # type: ignore[attr-defined]
        assert rig.broker.lookups == []  # a definite refusal is not looked up
        assert rig.manager.in_flight() == 0

    async def test_submit_when_broker_raises_outside_error_tree_then_rejected_worker_lives(
        self, rig: Rig
    ) -> None:
        # Arrange: building the first order fails in the adapter with a plain ValueError
        rig.broker.fail_next_submit(ValueError("limit order needs a limit_price"))

        # Act
        with capture_logs() as logs:
            rig.manager.execute_submit(SubmitOrder(intent("td-1")))
            await asyncio.wait_for(rig.manager.drained(), 1)
            rig.manager.execute_submit(SubmitOrder(intent("td-2")))
            await asyncio.wait_for(rig.manager.drained(), 1)

        # Assert: that order is rejected (the broker does not have it), the next one sent
        assert rig.manager.worker is not None and not rig.manager.worker.done()
        (rejected,) = rig.of(OrderRejected)
        assert rejected.client_order_id == "td-1"
        assert rejected.reason.startswith("SUBMIT_FAILED: ValueError")  # type: ignore[attr-defined]
        assert rig.broker.submitted == ["td-1", "td-2"]
        assert rig.broker.lookups == ["td-1"]
        assert rig.manager.stats["submit_failed"] == 1
        assert "order.submit_failed" in [e["event"] for e in logs]

    async def test_submit_when_unexpected_error_but_broker_has_order_then_adopted(
        self, rig: Rig
    ) -> None:
        # The exception came after the order reached the broker: it must not be rejected.
        rig.broker.fail_next_submit(RuntimeError("bug after the POST"))
        rig.broker.orders["td-1"] = broker_order("td-1", OrderStatus.NEW, broker_id="b-9")

        with capture_logs():
            rig.manager.execute_submit(SubmitOrder(intent()))
            await asyncio.wait_for(rig.manager.drained(), 1)

        assert rig.manager.orders["td-1"].status is OrderStatus.NEW
        assert rig.of(OrderRejected) == []

    async def test_submit_when_outbox_full_then_rejected_with_backpressure(self) -> None:
        # Arrange: the worker is not running, so the outbox cannot drain
        r = build(outbox_size=1)
        r.manager.execute_submit(SubmitOrder(intent("td-1")))

        # Act
        with capture_logs():
            r.manager.execute_submit(SubmitOrder(intent("td-2")))

        # Assert
        assert [type(e).__name__ for e in r.published] == [
            "OrderSubmitted", "OrderSubmitted", "OrderRejected"]
        assert r.published[-1].reason == "BACKPRESSURE"  # type: ignore[attr-defined]
        assert r.manager.orders["td-2"].status is OrderStatus.REJECTED
        assert r.manager.stats["backpressure"] == 1


class TestOrderManagerAmbiguous:
    async def test_ambiguous_when_broker_knows_order_then_acknowledged(self, rig: Rig) -> None:
        # Arrange
        rig.broker.fail_next_submit(AmbiguousSubmission("read timeout"))
        rig.broker.orders["td-1"] = broker_order("td-1", OrderStatus.NEW, broker_id="b-77")

        # Act
        with capture_logs() as logs:
            rig.manager.execute_submit(SubmitOrder(intent()))
            await asyncio.wait_for(rig.manager.drained(), 1)

        # Assert
        order = rig.manager.orders["td-1"]
        assert order.status is OrderStatus.NEW
        assert order.broker_order_id == "b-77"
        assert rig.broker.lookups == ["td-1"]
        assert len(rig.broker.submitted) == 1
        assert [type(e) for e in rig.published] == [OrderSubmitted, OrderNew]
        assert "order.ambiguous" in [e["event"] for e in logs]

    async def test_ambiguous_when_broker_rejected_it_then_rejected(self, rig: Rig) -> None:
        rig.broker.fail_next_submit(AmbiguousSubmission("reset"))
        rig.broker.orders["td-1"] = broker_order("td-1", OrderStatus.REJECTED)

        rig.manager.execute_submit(SubmitOrder(intent()))
        await asyncio.wait_for(rig.manager.drained(), 1)

        assert rig.manager.orders["td-1"].status is OrderStatus.REJECTED

    async def test_ambiguous_when_broker_does_not_know_then_pending_and_never_resent(
        self, rig: Rig
    ) -> None:
        rig.broker.fail_next_submit(AmbiguousSubmission("502 after send"))

        rig.manager.execute_submit(SubmitOrder(intent()))
        await asyncio.wait_for(rig.manager.drained(), 1)
        await asyncio.sleep(0.05)  # give a (wrong) retry every chance to happen

        assert rig.manager.orders["td-1"].status is OrderStatus.PENDING_NEW
        assert len(rig.broker.submitted) == 1
        assert rig.broker.lookups == ["td-1"]
        assert rig.of(OrderRejected) == []

    async def test_submit_when_broker_hangs_then_timeout_treated_as_ambiguous(
        self, rig: Rig
    ) -> None:
        rig.broker.hang_submit = True
        rig.broker.orders["td-1"] = broker_order("td-1", OrderStatus.ACCEPTED)

        rig.manager.execute_submit(SubmitOrder(intent()))
        await asyncio.wait_for(rig.manager.drained(), 2)

        assert rig.manager.stats["ambiguous"] == 1
        assert rig.broker.lookups == ["td-1"]
        assert len(rig.broker.submitted) == 1
        assert rig.manager.orders["td-1"].status is OrderStatus.NEW


class TestOrderManagerReports:
    async def test_report_when_duplicate_fill_then_published_once_and_booked_once(
        self, tmp_path: Path
    ) -> None:
        # Arrange: the order manager in a trading system, with the portfolio behind it
        broker = FakeBroker(report=False)
        system = build_system(
            SystemSpec(name="fake", broker=BrokerConfig(), risk=RiskConfig(),
                       state_dir=tmp_path),
            daemon=DaemonConfig(state_dir=tmp_path), clock=ReplayClock(T0), environ={},
            broker=broker.connect, journaling=False)
        portfolio, manager = system.portfolio, system.orders
        fills: list[Event] = []
        system.bus.subscribe(OrderFilled, fills.append)
        system.bus.send(SubmitOrder(intent(qty=10)))
        broker.emit(OrderNew(client_order_id="td-1", ts=T0))

        # Act: the stream delivers the same execution twice
        with capture_logs() as logs:
            broker.emit(filled("td-1", "exec-1", 4, "150.00"))
            broker.emit(filled("td-1", "exec-1", 4, "150.00"))

        # Assert
        assert len(fills) == 1
        assert portfolio.qty("AAPL") == 4
        assert portfolio.cash == Decimal(100_000) - Decimal("600.00")
        assert manager.orders["td-1"].filled_qty == 4
        assert manager.stats["duplicate_fill"] == 1
        assert "order.duplicate_fill" in [e["event"] for e in logs]

    async def test_report_when_unknown_order_then_kept_not_published(self, rig: Rig) -> None:
        stray = OrderCanceled(client_order_id="not-ours", ts=T0)

        with capture_logs() as logs:
            rig.broker.emit(stray)

        assert list(rig.manager.unknown_reports) == [stray]
        assert rig.manager.stats["unknown_report"] == 1
        assert rig.published == []
        assert [e["event"] for e in logs] == ["order.unknown_report"]

    async def test_report_when_illegal_transition_then_counted_not_published(
        self, rig: Rig
    ) -> None:
        rig.manager.execute_submit(SubmitOrder(intent()))
        rig.broker.emit(OrderCanceled(client_order_id="td-1", ts=T0))
        rig.published.clear()

        with capture_logs():
            rig.broker.emit(OrderNew(client_order_id="td-1", ts=T0))

        assert rig.published == []
        assert rig.manager.stats["illegal_transition"] == 1
        assert rig.manager.orders["td-1"].status is OrderStatus.CANCELED

    async def test_report_when_overfill_then_alert_not_fill(self, rig: Rig) -> None:
        rig.manager.execute_submit(SubmitOrder(intent(qty=5)))
        rig.published.clear()

        with capture_logs():
            rig.broker.emit(filled("td-1", "x1", 6))

        assert [type(e) for e in rig.published] == [AlertRaised]
        assert rig.published[0].severity == "critical"  # type: ignore[attr-defined]
        assert rig.manager.orders["td-1"].filled_qty == 0

    async def test_report_when_not_an_order_event_then_passed_through(self, rig: Rig) -> None:
        status = BrokerStatusChanged(broker="fake", status="connected", ts=T0)

        rig.broker.emit(status)

        assert rig.published == [status]


class TestOrderManagerCancel:
    async def test_cancel_when_order_open_then_broker_asked_to_cancel(self, rig: Rig) -> None:
        rig.manager.execute_submit(SubmitOrder(intent()))
        await asyncio.wait_for(rig.manager.drained(), 1)

        with capture_logs():
            rig.manager.execute_cancel(CancelOrder("td-1", reason="operator"))
            await asyncio.sleep(0.01)

        assert rig.broker.cancels == ["td-1"]

    async def test_cancel_when_broker_fails_then_logged_and_order_still_open(
        self, rig: Rig
    ) -> None:
        rig.manager.execute_submit(SubmitOrder(intent()))
        await asyncio.wait_for(rig.manager.drained(), 1)
        rig.broker.cancel_error = BrokerUnavailable("503")

        with capture_logs() as logs:
            rig.manager.execute_cancel(CancelOrder("td-1"))
            await asyncio.sleep(0.01)

        assert rig.broker.cancels == ["td-1"]
        assert rig.manager.orders["td-1"].is_open
        assert "order.cancel_failed" in [e["event"] for e in logs]

    async def test_cancel_when_order_done_then_broker_not_called(self, rig: Rig) -> None:
        rig.manager.execute_submit(SubmitOrder(intent()))
        rig.broker.emit(OrderCanceled(client_order_id="td-1", ts=T0))

        with capture_logs() as logs:
            rig.manager.execute_cancel(CancelOrder("td-1"))
            await asyncio.sleep(0.01)

        assert rig.broker.cancels == []
        assert [e["event"] for e in logs] == ["order.cancel_skipped"]

    async def test_cancel_when_queued_not_sent_then_never_sent_and_canceled(
        self, rig: Rig
    ) -> None:
        # Arrange: the first order's submission hangs at the broker; the second waits
        rig.broker.submit_gate = asyncio.Event()
        rig.manager.execute_submit(SubmitOrder(intent("td-1")))
        rig.manager.execute_submit(SubmitOrder(intent("td-2")))
        await asyncio.sleep(0.01)
        # Act
        with capture_logs() as logs:
            rig.manager.execute_cancel(CancelOrder("td-2", reason="session closing"))
            rig.broker.submit_gate.set()
            await asyncio.wait_for(rig.manager.drained(), 1)
        # Assert: the broker never heard of td-2, which is canceled here
        assert [i.client_order_id for i in rig.broker.received] == ["td-1"]
        assert rig.broker.cancels == []
        assert rig.manager.orders["td-2"].status is OrderStatus.CANCELED
        assert [e.client_order_id for e in rig.of(OrderCanceled)] == ["td-2"]
        assert "order.cancel_unsent" in [e["event"] for e in logs]
        assert rig.manager.orders_today() == 1, "the day counts the orders sent"

    async def test_cancel_when_submission_in_flight_then_sent_once_it_is_placed(
        self, rig: Rig
    ) -> None:
        # Arrange: td-1's submission is at the broker, not answered yet
        rig.broker.submit_gate = asyncio.Event()
        rig.manager.execute_submit(SubmitOrder(intent("td-1")))
        await asyncio.sleep(0.01)
        assert rig.broker.received and not rig.broker.orders
        # Act: the cancel comes while the order is being placed
        with capture_logs() as logs:
            rig.manager.execute_cancel(CancelOrder("td-1", reason="session closing"))
            await asyncio.sleep(0.01)
            assert rig.broker.cancels == [], "a cancel before the order exists is refused"
            rig.broker.submit_gate.set()
            await asyncio.wait_for(rig.manager.drained(), 1)
            await asyncio.sleep(0.01)
        # Assert: the cancel followed the placement
        assert rig.broker.cancels == ["td-1"]
        assert "order.cancel_deferred" in [e["event"] for e in logs]

    async def test_cancel_all_then_broker_asked_once(self, rig: Rig) -> None:
        with capture_logs():
            rig.manager.execute_cancel_all(CancelAllOrders(reason="halt"))
            await asyncio.sleep(0.01)

        assert rig.broker.cancel_alls == 1


class TestOrderManagerViews:
    async def test_working_qty_when_partially_filled_then_signed_leaves(self, rig: Rig) -> None:
        # Arrange
        rig.manager.execute_submit(SubmitOrder(intent("b1", qty=10)))
        rig.manager.execute_submit(SubmitOrder(intent("s1", side=OrderSide.SELL, qty=3)))
        rig.manager.execute_submit(SubmitOrder(intent("m1", symbol="MSFT", qty=7)))

        # Act
        rig.broker.emit(filled("b1", "x1", 4))
        rig.broker.emit(filled("s1", "x2", 3, side=OrderSide.SELL))

        # Assert: 6 left to buy; the sell is done; MSFT is another symbol
        assert rig.manager.working_qty("AAPL") == 6
        assert rig.manager.working_qty("MSFT") == 7
        assert rig.manager.working_qty("IBM") == 0

    async def test_working_qty_when_sell_open_then_negative(self, rig: Rig) -> None:
        rig.manager.execute_submit(SubmitOrder(intent("s1", side=OrderSide.SELL, qty=3)))

        assert rig.manager.working_qty("AAPL") == -3

    def test_orders_today_when_new_york_date_changes_then_rolls_over(self) -> None:
        # Arrange: 22:00 New York on March 5th is already March 6th in UTC
        r = build()
        r.clock.set(datetime(2024, 3, 6, 3, 0, tzinfo=UTC))
        r.manager.execute_submit(SubmitOrder(intent("a1", symbol="AAPL")))
        r.manager.execute_submit(SubmitOrder(intent("a2", symbol="AAPL")))
        r.manager.execute_submit(SubmitOrder(intent("m1", symbol="MSFT")))

        # Act / Assert: still March 5th in New York one hour before its midnight
        r.clock.set(datetime(2024, 3, 6, 4, 59, tzinfo=UTC))
        assert (r.manager.orders_today(), r.manager.orders_today("AAPL")) == (3, 2)

        # New York midnight (05:00 UTC in winter): a new trading day
        r.clock.set(datetime(2024, 3, 6, 5, 0, tzinfo=UTC))
        assert (r.manager.orders_today(), r.manager.orders_today("AAPL")) == (0, 0)

        r.manager.execute_submit(SubmitOrder(intent("a3", symbol="AAPL")))
        assert (r.manager.orders_today(), r.manager.orders_today("AAPL")) == (1, 1)

    def test_orders_today_when_summer_time_then_rolls_at_04_utc(self) -> None:
        r = build()
        r.clock.set(datetime(2024, 7, 9, 3, 59, tzinfo=UTC))
        r.manager.execute_submit(SubmitOrder(intent("a1")))

        r.clock.set(datetime(2024, 7, 9, 4, 0, tzinfo=UTC))

        assert r.manager.orders_today() == 0

    async def test_drained_when_several_orders_then_returns_after_all_reached_broker(
        self, rig: Rig
    ) -> None:
        for n in range(5):
            rig.manager.execute_submit(SubmitOrder(intent(f"td-{n}")))
        assert len(rig.broker.submitted) == 0  # the handler does not await the broker

        await asyncio.wait_for(rig.manager.drained(), 1)

        assert rig.broker.submitted == [f"td-{n}" for n in range(5)]

    async def test_drained_when_nothing_submitted_then_returns_at_once(self, rig: Rig) -> None:
        await asyncio.wait_for(rig.manager.drained(), 0.5)

    async def test_drained_when_worker_waits_on_broker_then_not_yet(self, rig: Rig) -> None:
        rig.broker.hang_submit = True
        rig.manager.execute_submit(SubmitOrder(intent()))

        waiter = asyncio.create_task(rig.manager.drained())
        await asyncio.sleep(0.05)
        done_early = waiter.done()
        with capture_logs():
            await asyncio.wait_for(waiter, 2)  # the 0.2 s submit timeout ends it

        assert not done_early


class TestOrderManagerMemory:
    async def test_many_orders_when_ended_then_memory_bounded_and_history_dedupes(
            self, tmp_path: Path) -> None:
        from tests.daemon.session import Session
        from tests.kit import FakeBroker
        from tests.kit import intent as fake_intent

        # Arrange: memory for 3 ended orders; 12 orders placed and filled
        broker = FakeBroker()
        s = Session(tmp_path, broker, retain_done=3)
        await s.start()
        for n in range(12):
            s.bus.send(SubmitOrder(fake_intent(f"c{n}", qty=1)))
            await s.orders.drained()
            broker.fill(f"c{n}", 1, Decimal("100"))
        assert len(s.orders.orders) == 3
        # Act: the stream replays an old fill; an old id is submitted again; a pass runs
        with capture_logs():
            broker.sink(filled("c0", "B1-1", 1, "100.00"))
            s.bus.send(SubmitOrder(fake_intent("c1", qty=1)))
            await s.orders.drained()
        report = await s.reconciler.reconcile("tick")
        # Assert: nothing booked twice, nothing sent twice, nothing unexplained
        assert s.portfolio.qty("AAPL") == 12
        assert s.orders.stats["duplicate_fill"] == 1
        assert s.orders.stats["duplicate_id"] == 1
        assert broker.submitted.count("c1") == 1
        assert report.ok and report.differences == []
        await s.stop()

    async def test_reconcile_when_fills_of_ended_orders_listed_then_no_order_rebuilt(
            self, tmp_path: Path) -> None:
        from engine.recovery import JournalHistory
        from tests.daemon.session import Session
        from tests.kit import FakeBroker
        from tests.kit import intent as fake_intent

        # Arrange: memory for 3 ended orders; 12 orders placed and filled, so the
        # broker lists 12 fills and 9 of their orders are on disk only
        broker = FakeBroker()
        s = Session(tmp_path, broker, retain_done=3)
        await s.start()
        rebuilt: list[str] = []

        class Counting(JournalHistory):
            def load(self, client_order_id: str) -> Order | None:
                rebuilt.append(client_order_id)
                return super().load(client_order_id)

        s.orders.history = Counting(s.journal)
        for n in range(12):
            s.bus.send(SubmitOrder(fake_intent(f"c{n}", qty=1)))
            await s.orders.drained()
            broker.fill(f"c{n}", 1, Decimal("100"))
        # Act
        report = await s.reconciler.reconcile("tick")
        # Assert: every fill is known as taken without rebuilding its order
        assert rebuilt == []
        assert report.ok and report.differences == []
        assert len(s.orders.orders) == 3
        await s.stop()

    async def test_reconcile_when_ended_order_on_disk_missed_a_fill_then_booked(
            self, tmp_path: Path) -> None:
        from tests.daemon.session import Session
        from tests.kit import FakeBroker
        from tests.kit import intent as fake_intent

        # Arrange: c0 (2 shares) got its first share on the stream, then ended
        # (canceled) and left memory; its second execution never reached the stream
        broker = FakeBroker()
        s = Session(tmp_path, broker, retain_done=1)
        await s.start()
        s.bus.send(SubmitOrder(fake_intent("c0", qty=2)))
        await s.orders.drained()
        broker.fill("c0", 1, Decimal("100"))
        broker.emit(OrderCanceled("c0", T0, reason="test"))
        for n in range(1, 4):
            s.bus.send(SubmitOrder(fake_intent(f"c{n}", qty=1)))
            await s.orders.drained()
            broker.fill(f"c{n}", 1, Decimal("100"))
        assert "c0" not in s.orders.orders
        broker.fill("c0", 1, Decimal("101"), report=False)
        # Act
        with capture_logs():
            report = await s.reconciler.reconcile("tick")
        # Assert: the missed execution is booked once, the rest is known
        assert [(d.what, d.client_order_id) for d in report.differences] == [
            ("missed_fill", "c0")]
        assert s.portfolio.qty("AAPL") == 5
        assert s.orders.orders["c0"].filled_qty == 2
        await s.stop()
