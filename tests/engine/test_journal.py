"""The journal: durable intents, batched events, exact round-trips, no secrets."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from engine.codec import EVENT_TYPES, decode
from engine.journal import Journal
from kernel import logging as dlog
from kernel.bus import Bus
from kernel.clock import ReplayClock
from kernel.events import AlertRaised, OrderDenied, OrderFilled, OrderIntent, SignalBatch
from kernel.model import Fill, OrderSide, Signal
from tests.kit import T0, intent


def _count(path: Path, type_: str) -> int:
    """Rows visible to another connection (i.e. committed to the file)."""
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM journal WHERE type=?", (type_,))
                   .fetchone()[0])


def _fill(cid: str = "c1", exec_id: str = "e1") -> OrderFilled:
    return OrderFilled(cid, T0, fill=Fill(exec_id, cid, "AAPL", OrderSide.BUY, 5,
                                          Decimal("101.2345"), T0, Decimal("0.35")))


class TestJournal:
    def setup_method(self) -> None:
        self.clock = ReplayClock(T0)

    def test_record_intent_when_called_then_committed_before_returning(self, tmp_path: Path):
        # Arrange
        j = Journal(tmp_path / "j.sqlite", clock=self.clock, batch_rows=1000).open()
        j.on_event(_fill())
        # Act
        j.record_intent(intent("c1"))
        # Assert: another connection sees the intent and the row buffered before it
        assert _count(j.path, "OrderIntent") == 1
        assert _count(j.path, "OrderFilled") == 1
        assert j.durable_writes == 1
        j.close()

    def test_has_intent_when_buffered_beyond_remembered_ids_then_known(
            self, tmp_path: Path) -> None:
        # Arrange: group commit buffers the intents; only the newest id is remembered
        j = Journal(tmp_path / "j.sqlite", clock=self.clock, group_commit=True).open()
        j._SYMBOLS_KEPT = 1  # type: ignore[misc]
        for n in range(3):
            j.record_intent(intent(f"c{n}"))
        # Act / Assert: known while buffered, and after the buffered rows are committed
        assert [j.has_intent(f"c{n}") for n in range(4)] == [True, True, True, False]
        j.flush()
        assert [j.has_intent(f"c{n}") for n in range(4)] == [True, True, True, False]
        j.close()

    def test_has_intent_when_commit_failed_then_buffered_intent_still_known(
            self, tmp_path: Path) -> None:
        # Arrange: an intent buffered beside a row SQLite cannot bind
        j = Journal(tmp_path / "j.sqlite", clock=self.clock, group_commit=True).open()
        j._SYMBOLS_KEPT = 1  # type: ignore[misc]
        j.record_intent(intent("c0"))
        j.record_intent(intent("c1"))
        j.append("Broken", {"x": 1}, client_order_id=object(),  # type: ignore[arg-type]
                 symbol="AAPL")
        # Act
        with pytest.raises(sqlite3.Error):
            j.flush()
        # Assert: the rows went back to the buffer, the intent is still known
        assert j.has_intent("c0")
        assert _count(j.path, "OrderIntent") == 0

    def test_event_when_batched_then_invisible_until_flush(self, tmp_path: Path):
        j = Journal(tmp_path / "j.sqlite", clock=self.clock, batch_rows=1000).open()
        j.on_event(_fill())
        assert _count(j.path, "OrderFilled") == 0
        j.close()
        assert _count(j.path, "OrderFilled") == 1

    def test_event_when_batch_full_then_flushed(self, tmp_path: Path):
        j = Journal(tmp_path / "j.sqlite", clock=self.clock, batch_rows=3).open()
        for i in range(3):
            j.on_event(_fill(exec_id=f"e{i}"))
        assert _count(j.path, "OrderFilled") == 3
        j.close()

    async def test_flush_timer_when_idle_then_commits(self, tmp_path: Path):
        import asyncio

        async with Journal(tmp_path / "j.sqlite", clock=self.clock,
                           flush_interval=0.01) as j:
            j.on_event(_fill())
            await asyncio.sleep(0.05)
            assert _count(j.path, "OrderFilled") == 1

    def test_rows_when_read_back_then_events_equal_originals(self, tmp_path: Path):
        j = Journal(tmp_path / "j.sqlite", clock=self.clock).open()
        original = intent("c1", price="187.4321")
        j.record_intent(original)
        j.on_event(_fill())
        rows = list(j.rows())
        assert decode(OrderIntent, rows[0].payload) == original
        assert decode(EVENT_TYPES["OrderFilled"], rows[1].payload) == _fill()
        assert rows[1].symbol == "AAPL" and rows[1].client_order_id == "c1"
        assert rows[1].payload["fill"]["price"] == "101.2345"  # money stored as a string
        j.close()

    def test_ack_when_journaled_then_labelled_with_the_intents_symbol(self, tmp_path: Path):
        from kernel.events import OrderNew

        j = Journal(tmp_path / "j.sqlite", clock=self.clock).open()
        j.record_intent(intent("c1", symbol="MSFT"))
        j.on_event(OrderNew("c1", T0, broker_order_id="B1"))
        assert [r.symbol for r in j.rows(client_order_id="c1")] == ["MSFT", "MSFT"]
        j.close()

    def test_attach_when_signals_and_denials_published_then_journaled(self, tmp_path: Path):
        j = Journal(tmp_path / "j.sqlite", clock=self.clock).open()
        bus = Bus()
        j.attach(bus)
        sig = Signal("s1", "AAPL", 0.8, 100.0, T0, "demo")
        bus.publish(SignalBatch(T0, "demo", (sig,)))
        bus.publish(OrderDenied(intent("c1"), reason="MAX_POSITION", limit="5000",
                                observed="7200"))
        rows = list(j.rows())
        assert [r.type for r in rows] == ["Signal", "OrderDenied"]
        assert rows[1].payload["reason"] == "MAX_POSITION"
        assert rows[1].payload["observed"] == "7200"
        j.close()

    def test_payload_when_it_contains_a_registered_secret_then_scrubbed(self, tmp_path: Path):
        dlog.register_secret("SUPERSECRETKEY123")
        j = Journal(tmp_path / "j.sqlite", clock=self.clock).open()
        j.on_event(AlertRaised("x", "warning", T0, detail={"url": "k=SUPERSECRETKEY123"}))
        j.close()
        assert b"SUPERSECRETKEY123" not in j.path.read_bytes()
        dlog._SECRETS.discard("SUPERSECRETKEY123")

    def test_reopen_when_rows_exist_then_appends_after_them(self, tmp_path: Path):
        path = tmp_path / "j.sqlite"
        j = Journal(path, clock=self.clock).open()
        j.record_intent(intent("c1"))
        j.close()
        j2 = Journal(path, clock=self.clock).open()
        j2.record_intent(intent("c2"))
        assert [r.client_order_id for r in j2.rows()] == ["c1", "c2"]
        assert j2.client_order_ids() == {"c1", "c2"}
        j2.close()
