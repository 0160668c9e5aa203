"""Reconciliation: each class of difference (in flight, explained, unexplained drift)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

from structlog.testing import capture_logs

from brokers.fake import FakeBroker
from kernel.events import (
    AlertRaised,
    BrokerStatusChanged,
    ReconcileTick,
    ReconciliationChanged,
    SubmitOrder,
    TradingStateChanged,
)
from kernel.orders import OrderStatus
from tests.daemon.session import Session
from tests.kit import intent


async def _started(tmp_path: Path, broker: FakeBroker | None = None) -> Session:
    s = Session(tmp_path, broker or FakeBroker())
    await s.start()
    return s


async def _trade(s: Session, cid: str, qty: int = 10) -> None:
    s.bus.send(SubmitOrder(intent(cid, qty=qty)))
    await s.orders.drained()


class TestReconcileInFlight:
    async def test_unacked_young_order_when_unknown_to_broker_then_in_flight(
            self, tmp_path: Path):
        s = await _started(tmp_path)
        s.journal.record_intent(intent("c1"))
        from kernel.orders import Order

        s.orders.adopt(Order.from_intent(intent("c1")))  # handed over, not sent yet
        report = await s.reconciler.reconcile("tick")
        assert [d.what for d in report.of("in_flight")] == ["unacknowledged"]
        assert s.orders.orders["c1"].status is OrderStatus.PENDING_NEW
        await s.stop()

    async def test_unacked_old_order_when_unknown_on_two_passes_then_abandoned(
            self, tmp_path: Path):
        s = await _started(tmp_path)
        from kernel.orders import Order

        s.orders.adopt(Order.from_intent(intent("c1")))
        s.clock.advance(120)
        first = await s.reconciler.reconcile("tick")  # could still be in the outbox
        assert [d.what for d in first.of("in_flight")] == ["unacknowledged"]
        s.clock.advance(60)
        report = await s.reconciler.reconcile("tick")
        assert [d.what for d in report.of("explained")] == ["abandoned"]
        assert s.orders.orders["c1"].status is OrderStatus.ABANDONED
        assert s.broker.submitted == []
        await s.stop()


class TestReconcileLandedLate:
    async def test_abandoned_order_when_it_lands_later_then_adopted_and_booked(
            self, tmp_path: Path):
        # Arrange: an intent whose POST was still on its way when the daemon died
        broker = FakeBroker()
        s1 = await _started(tmp_path, broker)
        s1.journal.record_intent(intent("c1"))
        s1.journal.ensure_durable()  # as the submit path does before the POST
        await s1.crash()
        s2 = await _started(tmp_path, broker)
        assert s2.orders.orders["c1"].status is OrderStatus.ABANDONED
        # Act: the request lands now; the order fills partly, then a pass runs
        broker.accept(intent("c1"), report=False)
        broker.fill("c1", 4, Decimal("100"), report=False)
        report = await s2.reconciler.reconcile("tick")
        # Assert
        assert [d.what for d in report.of("explained")] == ["landed_late", "missed_fill"]
        assert report.ok and not report.of("unexplained")
        assert s2.orders.orders["c1"].status is OrderStatus.PARTIALLY_FILLED
        assert [o.client_order_id for o in s2.orders.open_orders()] == ["c1"]
        assert s2.portfolio.qty("AAPL") == 4
        assert s2.state == "ACTIVE"
        await s2.stop()

    async def test_abandoned_order_when_it_landed_and_filled_then_fills_booked(
            self, tmp_path: Path):
        broker = FakeBroker()
        s1 = await _started(tmp_path, broker)
        s1.journal.record_intent(intent("c1"))
        s1.journal.ensure_durable()  # as the submit path does before the POST
        await s1.crash()
        s2 = await _started(tmp_path, broker)
        broker.accept(intent("c1"), report=False)
        broker.fill("c1", 10, Decimal("100"), report=False)  # done before anyone looked
        report = await s2.reconciler.reconcile("tick")
        assert report.ok and not report.of("unexplained")
        assert s2.orders.orders["c1"].status is OrderStatus.FILLED
        assert s2.portfolio.qty("AAPL") == 10
        assert s2.state == "ACTIVE"
        await s2.stop()


class TestReconcileExplained:
    async def test_fill_missed_on_the_stream_when_reconciled_then_booked_and_journaled(
            self, tmp_path: Path):
        s = await _started(tmp_path)
        await _trade(s, "c1")
        s.broker.fill("c1", 10, Decimal("100"), report=False)  # the stream dropped it
        report = await s.reconciler.reconcile("tick")
        assert [d.what for d in report.of("explained")] == ["missed_fill"]
        assert report.ok and not report.of("unexplained")
        assert s.portfolio.qty("AAPL") == 10
        assert s.orders.orders["c1"].status is OrderStatus.FILLED
        assert any(r.type == "OrderFilled" for r in s.journal.rows(client_order_id="c1"))
        assert s.state == "ACTIVE"
        await s.stop()

    async def test_fill_while_daemon_down_when_restarted_then_booked_without_drift(
            self, tmp_path: Path):
        broker = FakeBroker()
        s1 = await _started(tmp_path, broker)
        await _trade(s1, "c1")
        await s1.stop()
        broker.fill("c1", 4, Decimal("100.25"), report=False)
        broker.fill("c1", 6, Decimal("100.75"), report=False)
        s2 = await _started(tmp_path, broker)
        report = s2.reconciler.last_report
        assert report is not None and report.ok
        assert [d.what for d in report.of("explained")] == ["missed_fill", "missed_fill"]
        assert s2.portfolio.qty("AAPL") == 10
        assert s2.portfolio.cash == broker.cash
        assert s2.state == "ACTIVE"
        await s2.stop()

    async def test_cancel_missed_when_reconciled_then_order_canceled(self, tmp_path: Path):
        s = await _started(tmp_path)
        await _trade(s, "c1")
        s.broker.set_status("c1", OrderStatus.CANCELED)
        report = await s.reconciler.reconcile("tick")
        assert [d.what for d in report.of("explained")] == ["missed_status"]
        assert s.orders.orders["c1"].status is OrderStatus.CANCELED
        await s.stop()

    async def test_duplicate_fill_when_reconciled_then_not_booked_twice(self, tmp_path: Path):
        s = await _started(tmp_path)
        await _trade(s, "c1")
        s.broker.fill("c1", 10, Decimal("100"))  # reported on the stream and listed again
        report = await s.reconciler.reconcile("tick")
        assert report.differences == []
        assert s.portfolio.qty("AAPL") == 10
        await s.stop()


class TestReconcileFillIdentity:
    async def test_fill_list_names_fills_differently_when_reconciled_then_nothing_rebooked(
            self, tmp_path: Path):
        # The broker's fill list and its stream give the same executions different ids.
        s = await _started(tmp_path, FakeBroker(channel_ids=True))
        await _trade(s, "c1")
        s.broker.fill("c1", 4, Decimal("100"))
        s.broker.fill("c1", 6, Decimal("101"))
        report = await s.reconciler.reconcile("tick")
        assert report.ok and report.differences == []
        assert s.portfolio.qty("AAPL") == 10
        assert s.state == "ACTIVE"
        await s.stop()

    async def test_earlier_partial_missed_when_later_one_arrived_then_booked_not_dropped(
            self, tmp_path: Path):
        s = await _started(tmp_path, FakeBroker(channel_ids=True))
        await _trade(s, "c1")
        s.broker.fill("c1", 4, Decimal("100"), report=False)  # the stream lost this one
        s.broker.fill("c1", 6, Decimal("101"))  # ...but delivered the next
        report = await s.reconciler.reconcile("tick")
        assert [d.what for d in report.of("explained")] == ["missed_fill"]
        assert report.ok and not report.of("unexplained")
        order = s.orders.orders["c1"]
        assert order.status is OrderStatus.FILLED
        assert order.avg_fill_price == Decimal("100.6")
        assert s.portfolio.qty("AAPL") == 10
        assert s.state == "ACTIVE"
        await s.stop()

    async def test_restart_when_fills_listed_under_other_ids_then_booked_once(
            self, tmp_path: Path):
        broker = FakeBroker(channel_ids=True)
        s1 = await _started(tmp_path, broker)
        await _trade(s1, "c1")
        broker.fill("c1", 3, Decimal("100"))
        await s1.stop()
        broker.fill("c1", 7, Decimal("102"), report=False)  # while the daemon was down
        s2 = await _started(tmp_path, broker)
        report = s2.reconciler.last_report
        assert report is not None and report.ok
        assert [d.what for d in report.of("explained")] == ["missed_fill"]
        assert s2.portfolio.qty("AAPL") == 10
        assert s2.portfolio.cash == broker.cash
        await s2.stop()


class TestReconcileDrift:
    async def test_position_changed_behind_our_back_then_halts_alerts_and_adopts(
            self, tmp_path: Path):
        # Arrange
        s = await _started(tmp_path)
        await _trade(s, "c1")
        s.broker.fill("c1", 10, Decimal("100"))
        s.broker.set_position("AAPL", 25, Decimal("100"))  # someone traded by hand
        # Act
        with capture_logs() as logs:
            report = await s.reconciler.reconcile("tick")
        # Assert
        drift = [e for e in logs if e["event"] == "reconcile.drift"]
        assert drift == [{"event": "reconcile.drift", "log_level": "error", "what": "position",
                          "symbol": "AAPL", "books": 10, "broker": 25}]
        assert not report.ok
        assert [(e.old, e.new, e.who) for e in s.of(TradingStateChanged)] == [
            ("ACTIVE", "HALTED", "reconcile")]
        assert [a.name for a in s.of(AlertRaised)] == ["reconcile.drift"]
        assert s.portfolio.qty("AAPL") == 25  # broker is the source of truth, after logging
        assert s.journal.last("ReconcileResult").payload["counts"]["unexplained"] == 1
        await s.stop()

    async def test_trading_while_the_broker_is_read_when_reconciled_then_not_drift(
            self, tmp_path: Path):
        # Arrange: on both looks, a fill lands at the broker and on the stream between
        # the REST reads of the snapshot (positions read before it, cash after it).
        s = await _started(tmp_path)
        await _trade(s, "c1")
        s.broker.fill("c1", 10, Decimal("100"))
        await _trade(s, "c2")
        await _trade(s, "c3", qty=8)
        s.broker.between_calls = [lambda: s.broker.fill("c2", 10, Decimal("101")),
                                  lambda: s.broker.fill("c3", 8, Decimal("102"))]
        with capture_logs() as logs:
            report = await s.reconciler.reconcile("tick")
        # Assert: not drift; looked at again, and the next pass finds the books equal
        assert [e for e in logs if e["event"] == "reconcile.drift"] == []
        assert report.ok and s.state == "ACTIVE"
        again = await s.reconciler.reconcile("tick")
        assert again.ok and not again.of("unexplained")
        assert s.portfolio.qty("AAPL") == 28
        await s.stop()

    async def test_drift_when_adopted_then_restart_keeps_broker_books(self, tmp_path: Path):
        broker = FakeBroker()
        s1 = await _started(tmp_path, broker)
        broker.set_position("MSFT", 7, Decimal("300"))
        await s1.reconciler.reconcile("tick")
        await s1.crash()
        s2 = await _started(tmp_path, broker)
        assert s2.portfolio.qty("MSFT") == 7
        assert s2.reconciler.last_report is not None and s2.reconciler.last_report.ok
        await s2.stop()

    async def test_cash_changed_behind_our_back_then_reducing(self, tmp_path: Path):
        s = await _started(tmp_path)
        s.broker.cash -= Decimal("250")  # a fee the books never saw
        with capture_logs() as logs:
            await s.reconciler.reconcile("tick")
        assert [e["what"] for e in logs if e["event"] == "reconcile.drift"] == ["cash"]
        assert s.state == "REDUCING"
        assert s.portfolio.cash == Decimal(100_000) - 250
        await s.stop()

    async def test_unknown_open_order_at_broker_then_unexplained_and_reducing(
            self, tmp_path: Path):
        s = await _started(tmp_path)
        s.broker.accept(intent("manual-1"), report=False)
        report = await s.reconciler.reconcile("tick")
        assert [d.what for d in report.of("unexplained")] == ["unknown_order"]
        assert s.state == "REDUCING"
        await s.stop()


class TestReconcileReadiness:
    async def test_broker_recovering_when_published_then_not_ready_until_reconciled(
            self, tmp_path: Path):
        s = await _started(tmp_path)
        await _trade(s, "c1")
        s.broker.fill("c1", 10, Decimal("100"), report=False)
        # Act: the adapter reconnected its stream
        s.bus.publish(BrokerStatusChanged("fake", "recovering", s.clock.now(), "stream gap"))
        assert not s.reconciler.ready
        await asyncio.sleep(0.05)
        # Assert
        assert s.reconciler.ready
        assert s.portfolio.qty("AAPL") == 10
        own = s.of(ReconciliationChanged)
        assert [e.ready for e in own][-2:] == [False, True]  # type: ignore[attr-defined]
        assert not s.status.reconciling
        await s.stop()

    async def test_tick_when_published_then_reconciles_in_background(self, tmp_path: Path):
        s = await _started(tmp_path)
        runs = s.reconciler.runs
        s.bus.publish(ReconcileTick(s.clock.now()))
        await asyncio.sleep(0.05)
        assert s.reconciler.runs == runs + 1
        await s.stop()

    async def test_broker_down_at_start_when_recovering_then_not_ready(self, tmp_path: Path):
        from kernel.errors import BrokerUnavailable

        class DownBroker(FakeBroker):
            async def open_orders(self):  # type: ignore[no-untyped-def]
                raise BrokerUnavailable("down")

        s = Session(tmp_path, DownBroker())
        try:
            await s.start()
            raise AssertionError("expected BrokerUnavailable")
        except BrokerUnavailable:
            pass
        assert not s.reconciler.ready
        await s.stop()
