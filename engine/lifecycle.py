"""The session lifecycle runner: walks the trading day's phases and calls the daemon's hooks.

``SessionRunner`` reads an injected clock, sleeps with an injected sleep (in slices of
at most ``max_sleep_secs``, so a clock step is noticed), and at each transition of
``TradingCalendar.where``:

1. publishes ``SessionPhaseChanged`` (the gate starts refusing new entries on CLOSING),
2. awaits the phase's hook, if any: ``on_preflight``, ``on_warmup``, ``on_open``,
   ``on_closing``, ``on_close``; ``on_roll`` runs first when a new session begins,
3. logs ``session.<phase>`` (``session.preflight``, ``session.warmup``, ``session.open``,
   ``session.closing``, ``session.closed``, ``session.holiday``) with the session, the
   next transition, how late the step ran, and whatever the hook returned (a preflight's
   verdict, the close's summary). The idle phase found at start-up is logged
   ``session.started``, the one reached after skipped sessions ``session.resumed``.

Catching up. When the runner wakes past several boundaries (start-up mid-session, a long
suspend) it steps through the missed phases in order, so a session entered at 11:00 gets
its roll, preflight, warm-up and open hooks, and a session left open past its close gets
its closing and close hooks. A session that began and ended entirely while the runner was
not looking is skipped (``session.skipped``): nothing of it is replayed. A start-up in
CLOSED or HOLIDAY runs no hook. ``on_roll`` receives the new session; it is also called at
start-up mid-session, so it must be idempotent for the session it already has (the daemon
restores today's counters from the journal and rolls only when the day differs).

With ``repeat: once`` the runner finishes after the close of the first session it took
part in; ``finished`` is then set (the daemon exits after it). A hook that raises fails
the task: ``on_failure`` is told and the daemon stops in order.

Task owned: ``session.lifecycle``. Events published: ``SessionPhaseChanged``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Self

import structlog

from engine.session import (
    ACTIVE_PHASES,
    PHASE_RANK,
    PHASE_TRANSITIONS,
    PhaseAt,
    TradingCalendar,
)
from kernel.clock import Clock
from kernel.events import Event, SessionPhase, SessionPhaseChanged

log = structlog.get_logger("engine.lifecycle")

P = SessionPhase
Hook = Callable[[PhaseAt], Awaitable[Mapping[str, Any] | None]]
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class SessionHooks:
    """What the daemon does at each phase; each hook gets the phase it is entering and
    may return fields for that phase's log line."""

    on_roll: Hook | None = None
    on_preflight: Hook | None = None
    on_warmup: Hook | None = None
    on_open: Hook | None = None
    on_closing: Hook | None = None
    on_close: Hook | None = None

    def for_phase(self, phase: SessionPhase) -> Hook | None:
        return {P.PREFLIGHT: self.on_preflight, P.WARMUP: self.on_warmup,
                P.OPEN: self.on_open, P.CLOSING: self.on_closing,
                P.CLOSED: self.on_close}.get(phase)


@dataclass(frozen=True, slots=True)
class _Step:
    at: PhaseAt
    hook: bool  # run the phase's hook (False: only publish and log)
    roll: bool = False  # a new session begins with this step
    # Log name override: an idle phase found at start-up or after a skip is not a close.
    event: str | None = None


class SessionRunner:
    """Moves through the phases of the trading day (see the module doc).

    Args:
        calendar: sessions and phases (its config gives ``repeat`` and ``max_sleep_secs``).
        clock: the injected clock (wall clock live).
        publish: receives each ``SessionPhaseChanged``.
        hooks: the daemon's actions per phase.
        sleep: the injected sleep (``asyncio.sleep`` live; tests advance a fake clock).
        on_failure: told when a hook (or the runner) raises.
    """

    def __init__(self, calendar: TradingCalendar, *, clock: Clock,
                 publish: Callable[[Event], None], hooks: SessionHooks | None = None,
                 sleep: Sleep = asyncio.sleep,
                 on_failure: Callable[[BaseException], None] | None = None) -> None:
        self._cal = calendar
        self._clock = clock
        self._publish = publish
        self._hooks = hooks or SessionHooks()
        self._sleep = sleep
        self._on_failure = on_failure
        self._task: asyncio.Task[None] | None = None
        self._current: PhaseAt | None = None
        self._took_part = False  # an active phase of the current session was entered
        self.finished = asyncio.Event()
        self.sessions_closed = 0

    @property
    def current(self) -> PhaseAt | None:
        """The phase the runner is in (None before its first step)."""
        return self._current

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="session.lifecycle")
        self._task.add_done_callback(self._done)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        task = self._task
        if task is not None and not task.done():  # a failure was reported by _done
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("session.failed", error=repr(exc), exc_info=exc)
            if self._on_failure is not None:
                self._on_failure(exc)

    async def _run(self) -> None:
        max_sleep = self._cal.cfg.max_sleep_secs
        await self._advance(self._cal.where(self._clock.now()))
        while not self.finished.is_set():
            assert self._current is not None
            now = self._clock.now()
            wait = (self._current.next_at - now).total_seconds()
            if wait > 0:
                await self._sleep(min(wait, max_sleep))
                continue
            await self._advance(self._cal.where(now))

    # -- stepping ------------------------------------------------------------------------

    async def _advance(self, target: PhaseAt) -> None:
        steps = self._steps(self._current, target)
        cur = self._current
        if not steps and cur is not None and (cur.phase, cur.session) == (target.phase,
                                                                           target.session):
            self._current = target  # nothing changed: take the fresh next_at, never spin
        for step in steps:
            await self._enter(step)
            if self.finished.is_set():
                return

    def _steps(self, cur: PhaseAt | None, target: PhaseAt) -> list[_Step]:
        if cur is None:  # start-up
            if not target.active:
                return [_Step(target, hook=False, event="session.started")]
            return self._session_steps(target, upto=target.phase)
        cd, td = cur.session.date, target.session.date
        if td < cd or (td == cd and PHASE_RANK[target.phase] < PHASE_RANK[cur.phase]):
            log.warning("session.clock_backwards", at=target.at.isoformat(),
                        phase=str(cur.phase), session=cd.isoformat())
            return []
        if td == cd:
            return self._within(cur, target)
        steps = self._finish(cur)
        expected = self._cal.next_session(cd) if cur.active else cur.upcoming
        if target.active:
            if target.session.date != expected.date:
                self._log_skipped(expected.date, target.session.date)
            return steps + self._session_steps(target, upto=target.phase)
        # The target's session began and ended while the runner was not looking.
        self._log_skipped(expected.date, td)
        return [*steps, _Step(target, hook=False, event="session.resumed")]

    def _within(self, cur: PhaseAt, target: PhaseAt) -> list[_Step]:
        """Steps after ``cur`` up to ``target`` in the same session."""
        steps = []
        order = (*ACTIVE_PHASES, P.CLOSED, P.HOLIDAY)
        for phase in order[PHASE_RANK[cur.phase] + 1:PHASE_RANK[target.phase] + 1]:
            if phase is P.HOLIDAY:
                steps.append(_Step(target, hook=False))
            elif phase is P.CLOSED:
                at = self._cal.phase_of(cur.session, P.CLOSED)
                steps.append(_Step(target if target.phase is P.CLOSED else at,
                                   hook=self._took_part))
            else:
                steps.append(_Step(self._cal.phase_of(cur.session, phase), hook=True))
        return steps

    def _finish(self, cur: PhaseAt) -> list[_Step]:
        """The rest of ``cur``'s session through its close, when it was still active."""
        if not cur.active:
            return []
        return self._within(cur, self._cal.phase_of(cur.session, P.CLOSED))

    def _session_steps(self, target: PhaseAt, *, upto: SessionPhase) -> list[_Step]:
        """A new session from its preflight to ``upto`` (the last one is ``target``)."""
        phases = ACTIVE_PHASES[:ACTIVE_PHASES.index(upto) + 1]
        steps = [_Step(self._cal.phase_of(target.session, p), hook=True, roll=i == 0)
                 for i, p in enumerate(phases)]
        steps[-1] = _Step(target, hook=True, roll=len(steps) == 1)
        return steps

    def _log_skipped(self, first: Any, last: Any) -> None:
        log.warning("session.skipped", first=first.isoformat(), last=last.isoformat(),
                    detail="sessions passed while the runner was not running; none replayed")

    async def _enter(self, step: _Step) -> None:
        at, prev = step.at, self._current
        if (prev is not None and not step.roll and prev.session.date == at.session.date
                and at.phase not in PHASE_TRANSITIONS[prev.phase]):
            raise AssertionError(f"illegal session step {prev.phase} -> {at.phase}")
        now = self._clock.now()
        fields: dict[str, Any] = {}
        if step.roll:
            fields.update(await self._roll(at))
        self._current = at
        self._publish(SessionPhaseChanged(
            phase=at.phase, session=at.session.date, ts=now, next_phase=at.next_phase,
            next_at=at.next_at, early_close=at.session.early_close))
        hook = self._hooks.for_phase(at.phase) if step.hook else None
        if hook is not None:
            fields.update(await hook(at) or {})
        if at.active:
            self._took_part = True
        log.info(step.event or f"session.{at.phase.lower()}", phase=str(at.phase),
                 session=at.session.date.isoformat(),
                 next_phase=str(at.next_phase), next_at=at.next_at.isoformat(),
                 scheduled=at.at.isoformat(), late_secs=_late(now, at.at),
                 early_close=at.session.early_close, **fields)
        if at.phase is P.CLOSED and step.hook:
            self._closed()

    async def _roll(self, at: PhaseAt) -> Mapping[str, Any]:
        prev = self._current.session.date.isoformat() if self._current else None
        self._took_part = False
        log.info("session.roll", session=at.session.date.isoformat(), previous=prev,
                 open=at.session.open.isoformat(), close=at.session.close.isoformat(),
                 early_close=at.session.early_close)
        hook = self._hooks.on_roll
        return (await hook(at) or {}) if hook is not None else {}

    def _closed(self) -> None:
        self.sessions_closed += 1
        self._took_part = False
        if self._cal.cfg.repeat == "once":
            log.info("session.finished", sessions=self.sessions_closed, repeat="once")
            self.finished.set()


def _late(now: datetime, scheduled: datetime) -> float:
    return round(max(0.0, (now - scheduled).total_seconds()), 3)


__all__ = ["Hook", "SessionHooks", "SessionRunner"]
