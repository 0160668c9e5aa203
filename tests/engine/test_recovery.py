"""Recovery from the journal: orders, fills, books and counters survive a crash;
unacknowledged intents are adopted or abandoned, never re-sent."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from brokers.fake import FakeBroker
from kernel.events import OrderAbandoned, SubmitOrder
from kernel.orders import OrderStatus
from tests.daemon.session import Session
from tests.kit import intent


async def _trade(s: Session, cid: str, qty: int = 10, price: str = "100") -> None:
    s.bus.send(SubmitOrder(intent(cid, qty=qty, price=price)))
    await s.orders.drained()


class TestRecovery:
    async def test_restart_when_clean_then_orders_books_and_counters_are_the_same(
            self, tmp_path: Path):
        # Arrange: one filled order, one working order
        broker = FakeBroker()
        s1 = Session(tmp_path, broker)
        await s1.start()
        await _trade(s1, "c1")
        broker.fill("c1", 10, Decimal("100.5"))
        await _trade(s1, "c2", qty=4)
        s1.marker.mark(s1.clock.now())
        before = (s1.portfolio.snapshot(), s1.stats.as_dict(), s1.orders.orders_today())
        await s1.stop()
        # Act
        s2 = Session(tmp_path, broker)
        rec = await s2.start()
        # Assert
        assert (s2.portfolio.snapshot(), s2.stats.as_dict(), s2.orders.orders_today()) == before
        assert s2.orders.orders["c1"].status is OrderStatus.FILLED
        assert s2.orders.orders["c1"].execution_ids == {"B1-1"}
        assert s2.orders.orders["c2"].status is OrderStatus.NEW
        assert rec.orders == 2 and rec.open_orders == 1
        assert s2.reconciler.ready
        assert s2.reconciler.last_report is not None and s2.reconciler.last_report.ok
        await s2.stop()

    async def test_restart_when_fill_row_lost_in_crash_then_taken_from_broker_and_journaled(
            self, tmp_path: Path):
        broker = FakeBroker()
        s1 = Session(tmp_path, broker)
        await s1.start()
        await _trade(s1, "c1")
        broker.fill("c1", 10, Decimal("100"))  # reported, but only buffered in the journal
        await s1.crash()
        s2 = Session(tmp_path, broker)
        await s2.start()
        assert s2.portfolio.qty("AAPL") == 10
        assert s2.orders.orders["c1"].status is OrderStatus.FILLED
        report = s2.reconciler.last_report
        assert report is not None
        assert [d.what for d in report.of("explained")] == ["missed_ack", "missed_fill"]
        assert [r.type for r in s2.journal.rows(client_order_id="c1")][-1] == "OrderFilled"
        await s2.stop()

    async def test_restart_when_intent_never_reached_broker_then_abandoned_not_resent(
            self, tmp_path: Path):
        # Arrange: the intent is journaled and fsynced (as the system does just before
        # the broker call) and the process dies before the call
        broker = FakeBroker()
        s1 = Session(tmp_path, broker)
        await s1.start()
        s1.journal.record_intent(intent("c1"))
        s1.journal.ensure_durable()
        await s1.crash()
        # Act
        s2 = Session(tmp_path, broker)
        await s2.start()
        # Assert
        assert s2.orders.orders["c1"].status is OrderStatus.ABANDONED
        assert [e.reason for e in s2.of(OrderAbandoned)] == ["not at broker after restart"]
        assert broker.submitted == []
        # the same signal again: its deterministic id is known, nothing is sent
        await _trade(s2, "c1")
        assert broker.submitted == []
        await s2.stop()
        # and the abandonment itself survives the next restart
        s3 = Session(tmp_path, broker)
        await s3.start()
        assert s3.orders.orders["c1"].status is OrderStatus.ABANDONED
        await s3.stop()

    async def test_restart_when_intent_reached_broker_unacked_then_adopted_with_its_fills(
            self, tmp_path: Path):
        broker = FakeBroker()
        s1 = Session(tmp_path, broker)
        await s1.start()
        i = intent("c1", qty=10)
        s1.journal.record_intent(i)
        s1.journal.ensure_durable()  # fsynced before the broker call, as the system does
        broker.accept(i, report=False)  # at the broker; the ack never reached the daemon
        await s1.crash()
        broker.fill("c1", 6, Decimal("99"), report=False)  # while the daemon was down
        s2 = Session(tmp_path, broker)
        await s2.start()
        order = s2.orders.orders["c1"]
        assert order.status is OrderStatus.PARTIALLY_FILLED and order.filled_qty == 6
        assert order.broker_order_id == "B1"
        assert s2.portfolio.qty("AAPL") == 6
        assert s2.portfolio.cash == Decimal(100_000) - 6 * Decimal(99)
        assert broker.submitted == []
        await s2.stop()

    async def test_restart_when_halted_before_then_state_is_restored(self, tmp_path: Path):
        from kernel.events import TradingStateChanged

        broker = FakeBroker()
        s1 = Session(tmp_path, broker)
        await s1.start()
        s1.bus.publish(TradingStateChanged("ACTIVE", "HALTED", "operator", "test", s1.clock.now()))
        await s1.crash()  # TradingStateChanged is durable: it survives a crash
        s2 = Session(tmp_path, broker)
        rec = await s2.start()
        assert rec.trading_state == "HALTED"
        await s2.stop()

    async def test_marks_when_restored_then_start_of_day_and_peak_equity_kept(
            self, tmp_path: Path):
        broker = FakeBroker()
        s1 = Session(tmp_path, broker)
        await s1.start()
        await _trade(s1, "c1")
        broker.fill("c1", 10, Decimal("100"))
        p = s1.portfolio
        p.load(p.cash, p.positions.values(), prices={"AAPL": 110.0})
        s1.marker.mark(s1.clock.now())
        p.load(p.cash, p.positions.values(), prices={"AAPL": 90.0})
        s1.marker.mark(s1.clock.now())
        await s1.stop()
        s2 = Session(tmp_path, broker)
        await s2.start()
        # The day's first mark is the session's, taken once the books were confirmed
        # (100,000, before the trade); the peak came later (AAPL at 110).
        assert s2.marker.start_of_day_equity == Decimal(100_000)
        assert s2.marker.peak_equity == Decimal(100_100)
        assert s2.portfolio.last_price["AAPL"] == 90.0
        await s2.stop()
