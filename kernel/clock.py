"""Injected time. Domain code asks a ``Clock``; it never calls ``datetime.now()``.

``WallClock`` is for live trading. ``ReplayClock`` follows bar time during a replay (and
is the test clock: tests ``set`` or ``advance`` it). ``Timers`` publishes periodic ticks
by *clock* time, so reconciliation and risk ticks happen every 60 s / 10 s of market time
in a replay and of wall time live.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from kernel.events import Event


class Clock(Protocol):
    def now(self) -> datetime:
        """Current time, timezone-aware UTC."""
        ...


class WallClock:
    """The real time."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ReplayClock:
    """Time that moves only when told: by the replay feed (bar time) or by a test."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(1970, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def set(self, ts: datetime) -> None:
        """Move to ``ts``; time never goes backwards."""
        self._now = max(self._now, ts)

    def advance(self, seconds: float) -> None:
        self._now += timedelta(seconds=seconds)


@dataclass(slots=True)
class _Timer:
    name: str
    interval: timedelta
    make: Callable[[datetime], Event]
    min_wall: float = 0.0
    due: datetime | None = None
    last_wall: float = float("-inf")


class Timers:
    """Periodic ticks by clock time. ``check()`` publishes every tick that is due.

    The replay feed calls ``check`` after each bar batch; live, a task calls it twice a
    second. Missed intervals are not replayed one by one: one tick is published and the
    next is scheduled from now (a tick is a prompt to look, not a count).
    """

    def __init__(self, clock: Clock, publish: Callable[[Event], None]) -> None:
        self._clock = clock
        self._publish = publish
        self._timers: list[_Timer] = []

    def every(self, name: str, seconds: float, make: Callable[[datetime], Event],
              *, min_wall_secs: float = 0.0) -> None:
        """Publish ``make(now)`` every ``seconds`` of clock time, and (``min_wall_secs``)
        at most that often in wall time: live the two agree; a fast replay would
        otherwise fire a wall-time chore such as reconciliation on every bar."""
        self._timers.append(_Timer(name, timedelta(seconds=seconds), make, min_wall_secs))

    def check(self) -> int:
        now = self._clock.now()
        fired = 0
        for t in self._timers:
            if t.due is None:
                t.due = now + t.interval
            elif now >= t.due:
                wall = time.monotonic()
                if wall - t.last_wall < t.min_wall:
                    continue
                t.due, t.last_wall = now + t.interval, wall
                self._publish(t.make(now))
                fired += 1
        return fired


def monotonic_ns() -> int:
    """Monotonic nanoseconds, for latency measurement only (never for domain time)."""
    return time.perf_counter_ns()
