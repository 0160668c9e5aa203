"""PaperBroker persistence: a restarted session continues the same account."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from brokers.paper import PaperBroker
from kernel.errors import BrokerRejected
from kernel.events import OrderExpired, OrderNew
from kernel.orders import OrderStatus
from tests.brokers.paper_kit import D, Harness, apply_all, flat, intent


async def _reopen(old: Harness, path: Path) -> Harness:
    """A new session on the same store, with the clock where the old one stopped."""
    new = Harness(path, **old.cfg.model_dump())
    new.clock.set(old.now)
    new.now = old.now
    new.intents = old.intents
    await new.broker.__aenter__()
    return new


async def _snapshot(b: PaperBroker) -> tuple[object, ...]:
    ids = [o.client_order_id for o in await b.open_orders()]
    return (
        await b.account(), await b.open_orders(), [await b.get_order(c) for c in ids],
        await b.fills_since(datetime(2000, 1, 1, tzinfo=UTC)), await b.positions(),
        b.realized_pnl(),
    )


class TestPersistence:
    async def test_reopen_when_closed_then_same_account_orders_and_fills(
        self, tmp_path: Path
    ) -> None:
        # Arrange: a long, a short with realized P&L, a partial fill, a working order
        path = tmp_path / "paper.sqlite"
        h = Harness(path, commission_per_share=D("0.005"), min_commission=D(1),
                    slippage_bps=D(2), max_fill_volume_pct=0.1)
        await h.broker.__aenter__()
        await h.submit(intent("a", qty=50, ref="100"))
        await h.submit(intent("s", "sell", qty=30, symbol="BBB", ref="20"))
        await h.submit(intent("p", qty=300, order_type="limit", limit="101", tif="gtc"))
        h.bar(AAA=(100.0, 101.0, 99.0, 100.5, 2000), BBB=(20.0, 20.5, 19.5, 19.75, 1e6))
        await h.submit(intent("c", qty=10, symbol="BBB", ref="19"))
        h.bar(AAA=(100.5, 100.5, 100.5, 100.5, 0), BBB=(19.0, 19.0, 19.0, 19.0, 1e6))
        before = await _snapshot(h.broker)
        # Act
        await h.broker.__aexit__(None, None, None)
        h2 = await _reopen(h, path)
        # Assert
        assert await _snapshot(h2.broker) == before
        assert h2.broker.realized_pnl("BBB") != 0
        order = await h2.broker.get_order("a")
        assert order is not None and order.status is OrderStatus.FILLED
        await h2.broker.__aexit__(None, None, None)

    async def test_reopen_when_order_was_working_then_it_fills_in_the_new_session(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "paper.sqlite"
        h = Harness(path, max_fill_volume_pct=0.1)
        async with h.broker:
            await h.submit(intent("p", qty=250, order_type="limit", limit="10"))
            h.bar(AAA=flat(10, volume=1000))          # 100 of 250
        h2 = await _reopen(h, path)
        h2.bar(AAA=flat(9.5, volume=1000))            # 100 more at 9.5
        h2.bar(AAA=flat(9.75, volume=1000))           # the last 50
        await h2.broker.__aexit__(None, None, None)
        # Assert: execution ids continue, and both sessions' events form one legal history
        fills = [e.fill for e in h.sink.fills() + h2.sink.fills()]
        assert [(f.execution_id, f.qty, f.price) for f in fills] == [
            ("paper-1-1", 100, D(10)), ("paper-1-2", 100, D("9.5")), ("paper-1-3", 50, D("9.75"))]
        order = apply_all(h.intents, h.sink.events + h2.sink.events)["p"]
        assert order.status is OrderStatus.FILLED and order.filled_qty == 250

    async def test_reopen_when_ids_used_before_then_counters_continue_and_duplicates_rejected(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "paper.sqlite"
        h = Harness(path)
        async with h.broker:
            await h.submit(intent("a", order_type="limit", limit="9"))
        h2 = await _reopen(h, path)
        with pytest.raises(BrokerRejected, match="client_order_id must be unique"):
            await h2.broker.submit(intent("a"))
        await h2.submit(intent("b"))
        new = h2.sink.of(OrderNew, "b")[0]
        assert isinstance(new, OrderNew) and new.broker_order_id == "paper-2"
        await h2.broker.__aexit__(None, None, None)

    async def test_reopen_when_day_order_from_previous_date_then_expires_on_next_batch(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "paper.sqlite"
        h = Harness(path)
        async with h.broker:
            await h.submit(intent("d", order_type="limit", limit="9", tif="day"))
        h2 = await _reopen(h, path)
        h2.at(datetime(2026, 1, 6, 14, 30, tzinfo=UTC), AAA=flat(8))
        assert [e.client_order_id for e in h2.sink.of(OrderExpired)] == ["d"]
        assert h2.sink.fills() == []
        await h2.broker.__aexit__(None, None, None)

    async def test_reopen_when_session_never_closed_then_committed_changes_survive(
        self, tmp_path: Path
    ) -> None:
        # A crash: the first session is never exited; every change was already committed.
        path = tmp_path / "paper.sqlite"
        h = Harness(path)
        await h.broker.__aenter__()
        await h.submit(intent("a", qty=7, ref="10"))
        h.bar(AAA=flat(10))
        await h.submit(intent("w", order_type="limit", limit="5"))
        h2 = await _reopen(h, path)
        assert (await h2.broker.account()).cash == D(100_000) - 70
        assert [o.client_order_id for o in await h2.broker.open_orders()] == ["w"]
        await h2.broker.__aexit__(None, None, None)
        await h.broker.__aexit__(None, None, None)

    async def test_close_when_acknowledgement_pending_then_reported_before_close(
        self, tmp_path: Path
    ) -> None:
        h = Harness(tmp_path / "p.sqlite", ack_latency_ms=60_000)
        async with h.broker:
            await h.submit(intent("a"))
            assert h.sink.events == []
        assert [type(e) for e in h.sink.events] == [OrderNew]

    async def test_store_when_opened_then_uses_write_ahead_log(self, tmp_path: Path) -> None:
        path = tmp_path / "p.sqlite"
        async with Harness(path).broker:
            pass
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class TestBoundedMemory:
    async def test_long_session_when_many_orders_ended_then_memory_bounded_disk_complete(
        self, tmp_path: Path
    ) -> None:
        # Arrange: a store, and room in memory for only 5 ended orders
        path = tmp_path / "paper.sqlite"
        h = Harness(path)
        h.broker = PaperBroker(cfg=h.cfg, clock=h.clock, sink=h.sink, store_path=path,
                               retain_done=5)
        await h.broker.__aenter__()
        t0 = h.now
        # Act: 40 market orders, each filled on the next bar
        for n in range(40):
            await h.submit(intent(f"o{n}", "buy" if n % 2 == 0 else "sell", qty=1, ref="100"))
            h.bar(AAA=(100.0, 100.0, 100.0, 100.0, 1e6))
        # Assert: memory holds 5 of the 40; the store answers for all of them
        assert len(h.broker._orders) == 5
        assert h.broker._fills == []
        old = await h.broker.get_order("o0")
        assert old is not None and old.status is OrderStatus.FILLED
        fills = await h.broker.fills_since(t0)
        assert sorted(f.client_order_id for f in fills) == sorted(f"o{n}" for n in range(40))
        with pytest.raises(BrokerRejected, match="unique"):
            await h.broker.submit(intent("o0", qty=1, ref="100"))  # an id from long ago
        await h.broker.__aexit__(None, None, None)
