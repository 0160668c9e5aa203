"""The inbox: bounded, with the overflow policy its docstring promises per message kind."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from kernel.events import BarBatch, Heartbeat, OrderNew
from kernel.inbox import Inbox

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)


def bars(ts: datetime, rows: dict[str, tuple[float, float, float, float, float]]) -> BarBatch:
    syms = tuple(rows)
    cols = np.array([rows[s] for s in syms], dtype=np.float64).reshape(len(syms), 5)
    return BarBatch(ts=ts, symbols=syms, open=cols[:, 0], high=cols[:, 1], low=cols[:, 2],
                    close=cols[:, 3], volume=cols[:, 4])


def ohlcv(batch: BarBatch) -> dict[str, tuple[float, ...]]:
    return {s: (float(batch.open[i]), float(batch.high[i]), float(batch.low[i]),
                float(batch.close[i]), float(batch.volume[i]))
            for i, s in enumerate(batch.symbols)}


def beat(n: int) -> Heartbeat:
    return Heartbeat(ts=T0 + timedelta(seconds=n))


class TestInboxPutWait:
    async def test_put_wait_when_full_then_blocks_until_get_makes_room(self) -> None:
        # Arrange
        inbox = Inbox(maxsize=2)
        await inbox.put_wait(beat(1))
        await inbox.put_wait(beat(2))

        # Act
        blocked = asyncio.create_task(inbox.put_wait(beat(3)))
        await asyncio.sleep(0.01)
        was_blocked = not blocked.done()
        first = await inbox.get()
        await asyncio.wait_for(blocked, 1)

        # Assert
        assert was_blocked
        assert len(inbox) == 2
        assert first == beat(1)
        assert [await inbox.get(), await inbox.get()] == [beat(2), beat(3)]

    async def test_put_wait_when_several_producers_blocked_then_never_exceeds_maxsize(
        self,
    ) -> None:
        inbox = Inbox(maxsize=1)
        await inbox.put_wait(beat(0))
        producers = [asyncio.create_task(inbox.put_wait(beat(n))) for n in range(1, 6)]
        got = []

        for _ in range(6):
            await asyncio.sleep(0)
            assert len(inbox) <= 1
            got.append(await asyncio.wait_for(inbox.get(), 1))
        await asyncio.gather(*producers)

        assert sorted(b.ts for b in got) == [beat(n).ts for n in range(6)]
        assert len(inbox) == 0

    async def test_get_when_empty_then_waits_for_next_put(self) -> None:
        inbox = Inbox(maxsize=4)

        getter = asyncio.create_task(inbox.get())
        await asyncio.sleep(0.01)
        assert not getter.done()
        await inbox.put_wait(beat(1))

        assert await asyncio.wait_for(getter, 1) == beat(1)


class TestInboxPutBars:
    def test_put_bars_when_room_then_queued_as_is(self) -> None:
        inbox = Inbox(maxsize=2)
        b = bars(T0, {"AAPL": (1, 2, 0.5, 1.5, 10)})

        inbox.put_bars(b)

        assert len(inbox) == 1
        assert inbox.get_nowait() is b
        assert inbox.coalesced == 0

    def test_put_bars_when_full_then_merged_into_newest_batch(self) -> None:
        # Arrange: full with [older batch, newest batch, order event]
        inbox = Inbox(maxsize=3)
        oldest = bars(T0, {"AAPL": (1, 1, 1, 1, 1)})
        newest = bars(T0 + timedelta(minutes=1), {
            "AAPL": (100.0, 101.0, 99.0, 100.5, 1000.0),
            "MSFT": (300.0, 302.0, 299.0, 301.0, 500.0),
        })
        order_event = OrderNew(client_order_id="c1", ts=T0)
        inbox.put_bars(oldest)
        inbox.put_bars(newest)
        assert inbox.offer(order_event)

        # Act
        inbox.put_bars(bars(T0 + timedelta(minutes=2), {
            "MSFT": (301.0, 305.0, 300.5, 304.0, 200.0),
            "NVDA": (800.0, 810.0, 795.0, 805.0, 50.0),
            "AAPL": (100.5, 100.8, 98.0, 98.5, 700.0),
        }))

        # Assert: nothing lost, nothing dropped, no growth past the bound
        assert len(inbox) == 3
        assert inbox.coalesced == 1
        assert inbox.get_nowait() is oldest
        merged = inbox.get_nowait()
        assert isinstance(merged, BarBatch)
        assert merged.ts == newest.ts
        assert merged.symbols == ("AAPL", "MSFT", "NVDA")
        assert ohlcv(merged) == {
            # first open, max high, min low, last close, summed volume
            "AAPL": (100.0, 101.0, 98.0, 98.5, 1700.0),
            "MSFT": (300.0, 305.0, 299.0, 304.0, 700.0),
            "NVDA": (800.0, 810.0, 795.0, 805.0, 50.0),  # new symbol: taken as is
        }
        assert inbox.get_nowait() is order_event

    def test_merge_when_symbol_only_in_older_then_kept_unchanged(self) -> None:
        older = bars(T0, {"AAPL": (10, 12, 9, 11, 5), "IBM": (50, 51, 49, 50.5, 7)})
        newer = bars(T0 + timedelta(minutes=1), {"AAPL": (11, 13, 10, 12, 3)})

        merged = BarBatch.merge(older, newer)

        assert ohlcv(merged) == {"AAPL": (10.0, 13.0, 9.0, 12.0, 8.0),
                                 "IBM": (50.0, 51.0, 49.0, 50.5, 7.0)}


class TestInboxOffer:
    def test_offer_when_full_then_refused_and_counted(self) -> None:
        # Arrange
        inbox = Inbox(maxsize=2)
        assert inbox.offer(beat(1))
        assert inbox.offer(beat(2))

        # Act
        refused = [inbox.offer(beat(n)) for n in (3, 4)]

        # Assert
        assert refused == [False, False]
        assert inbox.refused == 2
        assert len(inbox) == 2
        assert inbox.get_nowait() == beat(1)
        assert inbox.offer(beat(5))
        assert inbox.refused == 2


class TestInboxThreadsafe:
    async def test_put_threadsafe_when_called_from_thread_then_delivered_in_order(
        self,
    ) -> None:
        # Arrange: a producer thread puts more than fits, so it must block for room
        inbox = Inbox(maxsize=2)
        loop = asyncio.get_running_loop()
        errors: list[BaseException] = []

        def produce() -> None:
            try:
                for n in range(5):
                    inbox.put_threadsafe(loop, beat(n), timeout=5)
            except BaseException as exc:  # surfaced by the assert below
                errors.append(exc)

        thread = threading.Thread(target=produce, name="sdk-thread")

        # Act
        thread.start()
        got = [await asyncio.wait_for(inbox.get(), 5) for _ in range(5)]
        await asyncio.to_thread(thread.join, 5)

        # Assert
        assert errors == []
        assert got == [beat(n) for n in range(5)]

    async def test_put_threadsafe_when_timed_out_then_message_never_enqueued_later(
        self,
    ) -> None:
        # Arrange
        inbox = Inbox(maxsize=1)
        await inbox.put_wait(beat(0))
        loop = asyncio.get_running_loop()

        # Act: the producer gives up; then room appears
        with pytest.raises(TimeoutError):
            await asyncio.to_thread(inbox.put_threadsafe, loop, beat(1), 0.05)
        assert await inbox.get() == beat(0)
        await asyncio.sleep(0.02)

        # Assert: the caller was told it failed, so it must not have happened behind its
        # back (a retry would duplicate it)
        assert len(inbox) == 0
