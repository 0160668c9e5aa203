"""The session lifecycle runner over several real days, on a fake clock and sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from engine.config import SessionConfig
from engine.lifecycle import SessionHooks, SessionRunner
from engine.session import PhaseAt, TradingCalendar
from kernel.events import Event, SessionPhase, SessionPhaseChanged

NY = ZoneInfo("America/New_York")
P = SessionPhase


def ny(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=NY)


class FakeTime:
    """The runner's clock and sleep: sleeping moves the clock by what was asked; at
    ``end`` time stands still (the sleep waits) and ``done`` is set, until ``jump``."""

    def __init__(self, start: datetime, end: datetime) -> None:
        self.t = start
        self.end = end
        self.done = asyncio.Event()
        self._resume = asyncio.Event()
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.t

    async def sleep(self, secs: float) -> None:
        self.slept.append(secs)
        if self.t >= self.end:
            self.done.set()
            self._resume.clear()
            await self._resume.wait()
            return  # the slice ends as the clock steps
        self.t = min(self.t + timedelta(seconds=secs), self.end)
        await asyncio.sleep(0)

    def jump(self, to: datetime, end: datetime) -> None:
        """The wall clock steps to ``to`` (a suspend, an NTP step) and runs to ``end``."""
        self.t, self.end = to, end
        self.done.clear()
        self._resume.set()


class Recorder:
    """Hooks that record (hook, session, clock time) and the published phase events."""

    def __init__(self, time: FakeTime, fail_on: str | None = None) -> None:
        self.time = time
        self.calls: list[tuple[str, str, str]] = []
        self.events: list[SessionPhaseChanged] = []
        self.fail_on = fail_on

    def hook(self, name: str) -> Any:
        async def run(at: PhaseAt) -> Mapping[str, Any]:
            self.calls.append((name, at.session.date.isoformat(),
                               self.time.now().astimezone(NY).strftime("%m-%d %H:%M")))
            if name == self.fail_on:
                raise RuntimeError(f"{name} broke")
            return {"hook": name}
        return run

    def hooks(self) -> SessionHooks:
        return SessionHooks(**{n: self.hook(n) for n in (
            "on_roll", "on_preflight", "on_warmup", "on_open", "on_closing", "on_close")})

    def publish(self, event: Event) -> None:
        assert isinstance(event, SessionPhaseChanged)
        self.events.append(event)


async def run_until(start: str, end: str, *, cfg: SessionConfig | None = None,
                    fail_on: str | None = None, jump: tuple[str, str] | None = None
                    ) -> tuple[Recorder, SessionRunner, list[dict[str, Any]]]:
    ft = FakeTime(ny(start), ny(end))
    rec = Recorder(ft, fail_on)
    failures: list[BaseException] = []
    failed = asyncio.Event()

    def on_failure(exc: BaseException) -> None:
        failures.append(exc)
        failed.set()

    runner = SessionRunner(TradingCalendar(cfg or SessionConfig(max_sleep_secs=600)),
                           clock=ft, publish=rec.publish, hooks=rec.hooks(), sleep=ft.sleep,
                           on_failure=on_failure)
    with capture_logs() as logs:
        async with runner:
            if jump is not None:
                ft.end = ny(jump[0])
                await asyncio.wait_for(ft.done.wait(), 10)
                ft.jump(ny(jump[1]), ny(end))
            waiters = [asyncio.ensure_future(ft.done.wait()),
                       asyncio.ensure_future(runner.finished.wait()),
                       asyncio.ensure_future(failed.wait())]
            done, _ = await asyncio.wait(waiters, timeout=10,
                                         return_when=asyncio.FIRST_COMPLETED)
            assert done, "the runner neither reached the end time, finished nor failed"
            for w in waiters:
                w.cancel()
            await asyncio.sleep(0)
    runner.failures = failures  # type: ignore[attr-defined]
    runner.slept = ft.slept  # type: ignore[attr-defined]
    return rec, runner, logs


def session_calls(rec: Recorder, day: str) -> list[tuple[str, str]]:
    return [(name, at) for name, d, at in rec.calls if d == day]


class TestSeveralDays:
    async def test_run_when_normal_day_holiday_and_early_close_then_hooks_at_their_times(
        self
    ) -> None:
        # Arrange / Act: Wednesday before Thanksgiving to the Monday after.
        rec, runner, logs = await run_until("2024-11-27 07:00", "2024-12-02 10:00")
        # Assert
        assert session_calls(rec, "2024-11-27") == [
            ("on_roll", "11-27 08:30"), ("on_preflight", "11-27 08:30"),
            ("on_warmup", "11-27 09:00"), ("on_open", "11-27 09:30"),
            ("on_closing", "11-27 15:50"), ("on_close", "11-27 16:00")]
        assert session_calls(rec, "2024-11-28") == []  # Thanksgiving: nothing at all
        assert session_calls(rec, "2024-11-29") == [
            ("on_roll", "11-29 08:30"), ("on_preflight", "11-29 08:30"),
            ("on_warmup", "11-29 09:00"), ("on_open", "11-29 09:30"),
            ("on_closing", "11-29 12:50"), ("on_close", "11-29 13:00")]
        assert session_calls(rec, "2024-12-02") == [
            ("on_roll", "12-02 08:30"), ("on_preflight", "12-02 08:30"),
            ("on_warmup", "12-02 09:00"), ("on_open", "12-02 09:30")]
        phases = [(e.phase, e.session.isoformat()) for e in rec.events]
        assert phases == [
            (P.CLOSED, "2024-11-26"),
            (P.PREFLIGHT, "2024-11-27"), (P.WARMUP, "2024-11-27"), (P.OPEN, "2024-11-27"),
            (P.CLOSING, "2024-11-27"), (P.CLOSED, "2024-11-27"), (P.HOLIDAY, "2024-11-27"),
            (P.PREFLIGHT, "2024-11-29"), (P.WARMUP, "2024-11-29"), (P.OPEN, "2024-11-29"),
            (P.CLOSING, "2024-11-29"), (P.CLOSED, "2024-11-29"), (P.HOLIDAY, "2024-11-29"),
            (P.PREFLIGHT, "2024-12-02"), (P.WARMUP, "2024-12-02"), (P.OPEN, "2024-12-02")]
        friday_close = next(e for e in rec.events
                            if e.phase is P.CLOSING and e.session.day == 29)
        assert friday_close.early_close
        assert friday_close.next_at == ny("2024-11-29 13:00")
        assert runner.current is not None and runner.current.phase is P.OPEN
        assert runner.sessions_closed == 2
        closed = [e for e in logs if e["event"] == "session.closed"]
        assert [c["session"] for c in closed] == ["2024-11-27", "2024-11-29"]
        assert closed[1]["hook"] == "on_close" and closed[1]["late_secs"] == 0
        assert [e["session"] for e in logs if e["event"] == "session.holiday"] == [
            "2024-11-27", "2024-11-29"]

    async def test_run_when_repeat_once_then_finishes_after_the_first_close(self) -> None:
        rec, runner, logs = await run_until(
            "2024-07-03 20:00", "2024-07-10 00:00",
            cfg=SessionConfig(repeat="once", max_sleep_secs=600))
        assert runner.finished.is_set()
        # July 4 is a holiday: the session traded is Friday the 5th, then it stops.
        assert [c[1] for c in rec.calls] == ["2024-07-05"] * 6
        assert rec.events[-1].phase is P.CLOSED
        assert any(e["event"] == "session.finished" for e in logs)

    async def test_sleep_when_waiting_then_never_longer_than_max_sleep(self) -> None:
        rec, runner, _ = await run_until("2024-03-08 17:00", "2024-03-11 08:31",
                                         cfg=SessionConfig(max_sleep_secs=30))
        # Friday 17:00 to Monday 08:31 in slices of at most 30 s.
        slept = runner.slept  # type: ignore[attr-defined]
        assert max(slept) == 30 and len(slept) >= (63.5 * 3600) // 30
        assert [c[0] for c in rec.calls] == ["on_roll", "on_preflight"]


class TestCatchUp:
    async def test_start_when_mid_session_then_roll_preflight_warmup_open_at_once(
        self
    ) -> None:
        rec, _, logs = await run_until("2024-03-05 11:00", "2024-03-05 11:01")
        assert rec.calls == [(n, "2024-03-05", "03-05 11:00") for n in
                             ("on_roll", "on_preflight", "on_warmup", "on_open")]
        opened = next(e for e in logs if e["event"] == "session.open")
        assert opened["late_secs"] == 0.0  # the open step is the target: now
        preflight = next(e for e in logs if e["event"] == "session.preflight")
        assert preflight["late_secs"] == 2.5 * 3600

    async def test_start_when_closed_after_the_close_then_no_hook_until_next_session(
        self
    ) -> None:
        rec, _, _ = await run_until("2024-03-05 17:00", "2024-03-06 08:00")
        assert rec.calls == []
        assert [e.phase for e in rec.events] == [P.CLOSED]

    async def test_jump_when_suspended_over_a_whole_session_then_close_then_skip(
        self
    ) -> None:
        # Open on Tuesday at 10:00, the clock jumps to Thursday 11:00.
        rec, _, logs = await run_until("2024-03-05 09:59", "2024-03-07 11:05",
                                       jump=("2024-03-05 10:00", "2024-03-07 11:00"))
        assert session_calls(rec, "2024-03-05")[-2:] == [("on_closing", "03-07 11:00"),
                                                         ("on_close", "03-07 11:00")]
        assert session_calls(rec, "2024-03-06") == []
        assert [c[0] for c in session_calls(rec, "2024-03-07")] == [
            "on_roll", "on_preflight", "on_warmup", "on_open"]
        skipped = [e for e in logs if e["event"] == "session.skipped"]
        assert (skipped[0]["first"], skipped[0]["last"]) == ("2024-03-06", "2024-03-07")

    async def test_hook_when_raises_then_runner_reports_failure(self) -> None:
        rec, runner, logs = await run_until("2024-03-05 08:00", "2024-03-05 10:00",
                                            fail_on="on_warmup")
        failures = runner.failures  # type: ignore[attr-defined]
        assert [str(f) for f in failures] == ["on_warmup broke"]
        assert [c[0] for c in rec.calls] == ["on_roll", "on_preflight", "on_warmup"]
        assert any(e["event"] == "session.failed" for e in logs)


class TestZeroLengthPhases:
    async def test_run_when_no_leads_and_no_closing_window_then_every_hook_still_runs(
        self
    ) -> None:
        cfg = SessionConfig(preflight_lead_mins=0, warmup_lead_mins=0,
                            no_new_entries_before_close_mins=0, max_sleep_secs=600)
        rec, _, _ = await run_until("2024-03-05 09:00", "2024-03-05 16:30", cfg=cfg)
        assert rec.calls == [
            ("on_roll", "2024-03-05", "03-05 09:30"), ("on_preflight", "2024-03-05", "03-05 09:30"),
            ("on_warmup", "2024-03-05", "03-05 09:30"), ("on_open", "2024-03-05", "03-05 09:30"),
            ("on_closing", "2024-03-05", "03-05 16:00"),
            ("on_close", "2024-03-05", "03-05 16:00")]


@pytest.mark.parametrize("start", ["2024-11-28 12:00", "2024-11-30 12:00"])
async def test_start_when_holiday_or_weekend_then_holiday_phase_and_no_preflight(
    start: str
) -> None:
    rec, _, _ = await run_until(start, ny(start).replace(hour=23).strftime("%Y-%m-%d %H:%M"))
    assert rec.calls == []
    assert [e.phase for e in rec.events] == [P.HOLIDAY]
