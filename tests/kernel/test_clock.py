"""Injected time: the replay clock never goes backwards; timers tick by clock time, at
most once per check, never earlier than their interval."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.clock import ReplayClock, Timers
from kernel.events import Event, Heartbeat, RiskTick

T0 = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)


def make(start: datetime = T0) -> tuple[ReplayClock, Timers, list[Event]]:
    clock = ReplayClock(start)
    published: list[Event] = []
    return clock, Timers(clock, published.append), published


class TestReplayClock:
    def test_set_when_earlier_time_then_ignored(self) -> None:
        clock = ReplayClock(T0)

        clock.set(T0 - timedelta(minutes=5))

        assert clock.now() == T0

    def test_set_and_advance_when_forward_then_moves(self) -> None:
        clock = ReplayClock(T0)

        clock.set(T0 + timedelta(minutes=1))
        clock.advance(30)

        assert clock.now() == T0 + timedelta(minutes=1, seconds=30)


class TestTimers:
    def test_check_when_interval_not_elapsed_then_nothing_fires(self) -> None:
        # Arrange
        clock, timers, published = make()
        timers.every("risk", 10, lambda ts: RiskTick(ts=ts))
        timers.check()  # the first check schedules from now

        # Act
        clock.advance(9.999)
        fired = timers.check()

        # Assert
        assert fired == 0
        assert published == []

    def test_check_when_interval_elapsed_then_one_tick_stamped_with_clock_time(self) -> None:
        clock, timers, published = make()
        timers.every("risk", 10, lambda ts: RiskTick(ts=ts))
        timers.check()

        clock.advance(10)
        fired = timers.check()

        assert fired == 1
        assert published == [RiskTick(ts=T0 + timedelta(seconds=10))]

    def test_check_when_many_intervals_missed_then_one_tick_and_next_from_now(self) -> None:
        # Arrange
        clock, timers, published = make()
        timers.every("risk", 10, lambda ts: RiskTick(ts=ts))
        timers.check()

        # Act: 95 s pass between two checks
        clock.advance(95)
        first = timers.check()
        clock.advance(9)
        second = timers.check()
        clock.advance(1)
        third = timers.check()

        # Assert
        assert (first, second, third) == (1, 0, 1)
        assert [e.ts for e in published] == [T0 + timedelta(seconds=95),
                                             T0 + timedelta(seconds=105)]

    def test_check_when_two_timers_then_each_on_its_own_interval(self) -> None:
        clock, timers, published = make()
        timers.every("risk", 10, lambda ts: RiskTick(ts=ts))
        timers.every("beat", 25, lambda ts: Heartbeat(ts=ts))
        timers.check()

        for _ in range(6):
            clock.advance(5)
            timers.check()

        assert [(type(e).__name__, (e.ts - T0).seconds) for e in published] == [
            ("RiskTick", 10), ("RiskTick", 20), ("Heartbeat", 25), ("RiskTick", 30),
        ]

    def test_check_when_clock_set_backwards_then_no_tick(self) -> None:
        clock, timers, published = make()
        timers.every("risk", 10, lambda ts: RiskTick(ts=ts))
        timers.check()

        clock.set(T0 - timedelta(hours=1))
        fired = timers.check()

        assert fired == 0
        assert published == []

    @settings(max_examples=200, deadline=None)
    @given(
        interval=st.integers(1, 120),
        steps=st.lists(
            st.one_of(
                st.tuples(st.just("advance"), st.integers(0, 300)),
                st.tuples(st.just("set"), st.integers(-600, 3600)),
            ),
            max_size=60,
        ),
    )
    def test_check_when_random_clock_moves_then_ticks_spaced_and_monotonic(
        self, interval: int, steps: list[tuple[str, int]]
    ) -> None:
        # Arrange
        clock, timers, published = make()
        timers.every("t", interval, lambda ts: Heartbeat(ts=ts))
        timers.check()
        last_check = clock.now()
        due = T0 + timedelta(seconds=interval)

        for op, seconds in steps:
            # Act
            if op == "advance":
                clock.advance(seconds)
            else:
                clock.set(T0 + timedelta(seconds=seconds))
            before = len(published)
            fired = timers.check()

            # Assert: at most one tick per check, stamped now, never backwards
            assert clock.now() >= last_check
            last_check = clock.now()
            assert fired == len(published) - before <= 1
            assert fired == (clock.now() >= due), "a due timer fires at the next check"
            if fired:
                assert published[-1].ts == clock.now()  # type: ignore[attr-defined]
                due = clock.now() + timedelta(seconds=interval)

        stamps = [e.ts for e in published]  # type: ignore[attr-defined]
        assert all(b - a >= timedelta(seconds=interval) for a, b in itertools.pairwise(stamps))
        if stamps:
            assert stamps[0] - T0 >= timedelta(seconds=interval)


class TestTimersWallFloor:
    def test_check_when_clock_races_ahead_then_min_wall_interval_holds(self) -> None:
        from datetime import UTC, datetime

        from kernel.clock import ReplayClock, Timers
        from kernel.events import ReconcileTick

        clock = ReplayClock(datetime(2024, 3, 4, 14, 30, tzinfo=UTC))
        fired: list[object] = []
        timers = Timers(clock, fired.append)
        timers.every("reconcile", 60, lambda ts: ReconcileTick(ts=ts), min_wall_secs=3600)
        timers.every("risk", 60, lambda ts: ReconcileTick(ts=ts))
        timers.check()
        for _ in range(10):  # ten clock minutes within one wall instant
            clock.advance(60)
            timers.check()
        # the wall-floored timer fired once; the plain one every clock minute
        assert len(fired) == 1 + 10
