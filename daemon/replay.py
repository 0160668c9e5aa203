"""The replay driver: a bar tape through the daemon, at real time, N x, or as fast as it goes.

Each batch moves the replay clock to the bar's end, goes through the daemon
(``on_batch``: every account's books and gate, then the signal sources, sizing and the
gate), and the driver waits until the batch's orders have reached the brokers
(``drained``) before the next bar exists: a replay is lossless and deterministic. A
replay restarted on the same state directory skips the bars its journal already saw.
When the tape ends the driver asks the daemon to stop (``on_finished``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path

import structlog

from engine.config import FeedConfig
from engine.feed import BarTape, Pacer
from kernel.clock import ReplayClock
from kernel.events import BarBatch

log = structlog.get_logger("daemon.replay")

DEMO_DAY_FILE = "demo_day.csv"

BatchObserver = Callable[[BarBatch], Awaitable[None]]


def open_tape(cfg: FeedConfig, state_dir: Path) -> BarTape:
    """The configured replay file, or (paper broker only) the generated demo day."""
    path = cfg.replay
    if path is None:
        from signals import demodata

        path = state_dir / DEMO_DAY_FILE
        if not path.exists():
            demodata.write(path, days=1)
    return BarTape.from_csv(path)


class ReplayDriver:
    """Plays ``tape`` through the daemon; run it as the task ``feed.replay``."""

    def __init__(
        self,
        tape: BarTape,
        *,
        speed: str,
        clock: ReplayClock,
        on_batch: Callable[[BarBatch], None],
        drained: Callable[[], Awaitable[None]],
        stopped: asyncio.Event,
        on_finished: Callable[[str], None],
    ) -> None:
        self.tape = tape
        self._pacer = Pacer(speed)
        self._clock = clock
        self._on_batch = on_batch
        self._drained = drained
        self._stopped = stopped
        self._on_finished = on_finished
        # Observers awaited after each batch, once its orders reached the broker
        # (invariant checks in tests, benchmarks).
        self.after_batch: list[BatchObserver] = []
        self.batches = 0

    def start_clock(self) -> None:
        """Put the clock at the tape's start, so what is journaled before the first bar
        (session start, first reconciliation, books) carries market time, not 1970."""
        first = self.tape.first_ts
        if first is not None:
            self._clock.set(first)

    async def run(self, resume_after: datetime | None = None) -> None:
        tape, clock = self.tape, self._clock
        interval = tape.interval
        log.info("feed.replay_start", batches=len(tape), rows=tape.rows,
                 symbols=len(tape.symbols))
        skipped = 0
        for batch in tape.batches():
            if self._stopped.is_set():
                return
            if resume_after is not None and batch.ts + interval <= resume_after:
                skipped += 1  # journaled before a restart: this session already saw it
                continue
            if skipped:
                log.info("feed.replay_resume", skipped=skipped, at=batch.ts.isoformat())
                skipped = 0
            await self._pacer.wait_for(batch.ts)
            clock.set(batch.ts + interval)
            self._on_batch(batch)
            self.batches += 1
            # Let this batch's orders reach the broker before the next bar exists, and
            # let the other tasks (pump, control socket, watchdog) run.
            await self._drained()
            for observer in self.after_batch:
                await observer(batch)
            await asyncio.sleep(0)
        log.info("feed.replay_done", batches=self.batches)
        self._on_finished("replay finished")


__all__ = ["DEMO_DAY_FILE", "ReplayDriver", "open_tape"]
