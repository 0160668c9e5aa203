"""The trading day on the exchange calendar: sessions, phases, and the broker clock check.

Pure functions of an instant (no clock, no I/O). ``TradingCalendar.where(t)`` says:

* the **phase** at ``t`` (``kernel.events.SessionPhase``). For a session with open ``O``
  and close ``C`` (UTC, from exchange_calendars, so early closes and DST are the
  calendar's): PREFLIGHT from ``O - preflight_lead``, WARMUP from ``O - warmup_lead``,
  OPEN from ``O``, CLOSING from ``C - no_new_entries``, CLOSED from ``C``. Between
  sessions the phase is CLOSED while no non-session day has begun since the last close,
  and HOLIDAY from the midnight (New York) of the first day without a session (weekend
  or holiday) until the next preflight. So a Friday close is CLOSED until midnight, then
  HOLIDAY until Monday's preflight; a Tuesday night stays CLOSED.
* the **session** ``t`` belongs to: the current one from its preflight to its close, the
  last one traded while CLOSED or HOLIDAY;
* the **next transition** (phase and time), and the upcoming session.

A phase of zero length (a lead or ``no_new_entries`` of 0) is never *at* an instant:
``where`` names the later phase; the lifecycle runner still steps through it.

``exchange_calendars`` takes about a second to import and build: it is imported on first
use (``warm()`` pays that at start-up). Session bounds are cached per date (bounded).

``cross_check`` compares the broker's ``MarketClock`` with what the calendar expects at
the broker's timestamp: open/closed disagreeing fails; next open or close further apart
than the tolerance warns (the gate follows the broker's clock for MARKET_CLOSED either way).
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from engine.config import SessionConfig
from kernel.errors import ConfigError
from kernel.events import SessionPhase
from kernel.model import MarketClock
from kernel.time import NEW_YORK

P = SessionPhase
_REGULAR_CLOSE = time(16, 0)
_CACHE_DAYS = 64

# The order of one session's phases, and the legal single steps between phases. A step
# from CLOSED or HOLIDAY to PREFLIGHT starts the next session (the day rolls).
ACTIVE_PHASES: tuple[SessionPhase, ...] = (P.PREFLIGHT, P.WARMUP, P.OPEN, P.CLOSING)
IDLE_PHASES: tuple[SessionPhase, ...] = (P.CLOSED, P.HOLIDAY)
PHASE_TRANSITIONS: dict[SessionPhase, frozenset[SessionPhase]] = {
    P.PREFLIGHT: frozenset({P.WARMUP}),
    P.WARMUP: frozenset({P.OPEN}),
    P.OPEN: frozenset({P.CLOSING}),
    P.CLOSING: frozenset({P.CLOSED}),
    P.CLOSED: frozenset({P.HOLIDAY, P.PREFLIGHT}),
    P.HOLIDAY: frozenset({P.PREFLIGHT}),
}
# Rank within one session's life: its active phases, then the idle ones after its close.
PHASE_RANK: dict[SessionPhase, int] = {p: i for i, p in enumerate((*ACTIVE_PHASES,
                                                                    *IDLE_PHASES))}


class CheckStatus(enum.StrEnum):
    """A readiness verdict: OK, WARN (trading can go on; look at it), FAIL (it cannot)."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class MarketSession:
    """One session of the exchange: its New York date, open and close (UTC)."""

    date: date
    open: datetime
    close: datetime

    @property
    def early_close(self) -> bool:
        """Closes before the regular 16:00 New York (e.g. the day after Thanksgiving)."""
        return self.close.astimezone(NEW_YORK).time() < _REGULAR_CLOSE


@dataclass(frozen=True, slots=True)
class Schedule:
    """When each phase of one session begins (UTC)."""

    session: MarketSession
    preflight_at: datetime
    warmup_at: datetime
    closing_at: datetime

    def starts(self) -> tuple[tuple[SessionPhase, datetime], ...]:
        """Every phase of the session with its start, in order (CLOSED at the close)."""
        s = self.session
        return ((P.PREFLIGHT, self.preflight_at), (P.WARMUP, self.warmup_at),
                (P.OPEN, s.open), (P.CLOSING, self.closing_at), (P.CLOSED, s.close))

    def start_of(self, phase: SessionPhase) -> datetime:
        return dict(self.starts())[phase]

    def active_phase(self, t: datetime) -> SessionPhase | None:
        """The active phase at ``t``, None before the preflight or from the close."""
        if not self.preflight_at <= t < self.session.close:
            return None
        return [p for p, at in self.starts() if at <= t][-1]

    def after(self, phase: SessionPhase) -> tuple[SessionPhase, datetime]:
        """The phase that follows ``phase`` in this session and when it starts."""
        starts = self.starts()
        i = [p for p, _ in starts].index(phase)
        return starts[i + 1]


@dataclass(frozen=True, slots=True)
class PhaseAt:
    """Where an instant stands: its phase, the session it belongs to, what comes next."""

    at: datetime
    phase: SessionPhase
    session: MarketSession
    next_phase: SessionPhase
    next_at: datetime
    upcoming: MarketSession

    @property
    def active(self) -> bool:
        return self.phase in ACTIVE_PHASES

    def as_dict(self) -> dict[str, Any]:
        """For logs, status and JSON output."""
        return {"phase": str(self.phase), "session": self.session.date.isoformat(),
                "next_phase": str(self.next_phase), "next_at": self.next_at.isoformat(),
                "upcoming": self.upcoming.date.isoformat(),
                "upcoming_open": self.upcoming.open.isoformat(),
                "upcoming_close": self.upcoming.close.isoformat(),
                "early_close": self.upcoming.early_close}


@dataclass(frozen=True, slots=True)
class ClockAgreement:
    """The broker's market clock against the calendar's expectation at its timestamp."""

    status: CheckStatus
    problems: tuple[str, ...]
    broker: MarketClock
    expected: MarketClock


class TradingCalendar:
    """Sessions and phases of one exchange calendar under a ``SessionConfig``."""

    def __init__(self, cfg: SessionConfig | None = None) -> None:
        self.cfg = cfg or SessionConfig()
        self._cal: Any = None
        self._days: OrderedDict[date, MarketSession | None] = OrderedDict()

    # -- the exchange calendar ---------------------------------------------------------

    def warm(self) -> None:
        """Import and build the calendar now (about a second) rather than on first use."""
        self._calendar()

    def _calendar(self) -> Any:
        if self._cal is None:
            import warnings

            import exchange_calendars

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pandas deprecations inside the package
                self._cal = exchange_calendars.get_calendar(self.cfg.calendar)
        return self._cal

    def session_on(self, d: date) -> MarketSession | None:
        """The session of New York date ``d``, None on a weekend or holiday."""
        if d in self._days:
            self._days.move_to_end(d)
            return self._days[d]
        got = self._load(d)
        self._days[d] = got
        if len(self._days) > _CACHE_DAYS:
            self._days.popitem(last=False)
        return got

    def _load(self, d: date) -> MarketSession | None:
        import pandas as pd

        cal = self._calendar()
        ts = pd.Timestamp(d)
        if ts < cal.first_session or ts > cal.last_session:
            raise ConfigError(
                "session.calendar", f"{self.cfg.calendar} on {d}",
                f"a date from {cal.first_session.date()} to {cal.last_session.date()} "
                "(exchange_calendars knows no later sessions: upgrade it)")
        if not cal.is_session(ts):
            return None
        return MarketSession(d, cal.session_open(ts).to_pydatetime().astimezone(UTC),
                             cal.session_close(ts).to_pydatetime().astimezone(UTC))

    def next_session(self, d: date) -> MarketSession:
        """The first session on a date after ``d``."""
        for k in range(1, 15):  # the longest closure in the calendar's range is shorter
            s = self.session_on(d + timedelta(days=k))
            if s is not None:
                return s
        raise ConfigError("session.calendar", f"{self.cfg.calendar} after {d}",
                          "a session within two weeks")

    def previous_session(self, d: date) -> MarketSession:
        """The last session on a date before ``d``."""
        for k in range(1, 15):
            s = self.session_on(d - timedelta(days=k))
            if s is not None:
                return s
        raise ConfigError("session.calendar", f"{self.cfg.calendar} before {d}",
                          "a session within two weeks")

    def upcoming(self, t: datetime) -> MarketSession:
        """The session whose close is after ``t`` (the current one, else the next)."""
        d = t.astimezone(NEW_YORK).date()
        s = self.session_on(d)
        if s is not None and t < s.close:
            return s
        return self.next_session(d)

    # -- phases ------------------------------------------------------------------------

    def schedule(self, session: MarketSession) -> Schedule:
        c = self.cfg
        return Schedule(session,
                        preflight_at=session.open - timedelta(minutes=c.preflight_lead_mins),
                        warmup_at=session.open - timedelta(minutes=c.warmup_lead_mins),
                        closing_at=session.close - timedelta(
                            minutes=c.no_new_entries_before_close_mins))

    def where(self, t: datetime) -> PhaseAt:
        """The phase at ``t`` (aware), its session and the next transition."""
        up = self.upcoming(t)
        sched = self.schedule(up)
        phase = sched.active_phase(t)
        if phase is not None:
            nxt, at = sched.after(phase)
            return PhaseAt(t, phase, up, nxt, at, up)
        prev = self.previous_session(up.date)
        day = t.astimezone(NEW_YORK).date()
        gap = prev.date + timedelta(days=1) < up.date  # non-session days in between
        if gap and day > prev.date:
            return PhaseAt(t, P.HOLIDAY, prev, P.PREFLIGHT, sched.preflight_at, up)
        if gap:
            midnight = datetime.combine(prev.date + timedelta(days=1), time(0), NEW_YORK)
            return PhaseAt(t, P.CLOSED, prev, P.HOLIDAY, midnight.astimezone(UTC), up)
        return PhaseAt(t, P.CLOSED, prev, P.PREFLIGHT, sched.preflight_at, up)

    def phase_of(self, session: MarketSession, phase: SessionPhase) -> PhaseAt:
        """``PhaseAt`` at the start of an active ``phase`` of ``session``, or of CLOSED at
        its close (what the runner steps through, zero-length phases included)."""
        sched = self.schedule(session)
        if phase is P.CLOSED:
            return self.where(session.close)
        nxt, at = sched.after(phase)
        return PhaseAt(sched.start_of(phase), phase, session, nxt, at, session)

    # -- the broker's clock --------------------------------------------------------------

    def expected_clock(self, t: datetime) -> MarketClock:
        """What a broker's clock should say at ``t`` by this calendar (Alpaca semantics:
        ``next_open`` is the next session's open while open)."""
        up = self.upcoming(t)
        is_open = up.open <= t < up.close
        next_open = self.next_session(up.date).open if t >= up.open else up.open
        return MarketClock(ts=t, is_open=is_open, next_open=next_open, next_close=up.close)

    def cross_check(self, broker: MarketClock) -> ClockAgreement:
        """The broker's clock against the calendar at the broker's own timestamp."""
        exp = self.expected_clock(broker.ts)
        tol = timedelta(seconds=self.cfg.clock_tolerance_secs)
        fails: list[str] = []
        warns: list[str] = []
        if broker.is_open != exp.is_open:
            fails.append(f"broker says {'open' if broker.is_open else 'closed'}, "
                         f"{self.cfg.calendar} says {'open' if exp.is_open else 'closed'}")
        for name, got, want in (("next_open", broker.next_open, exp.next_open),
                                ("next_close", broker.next_close, exp.next_close)):
            if got is None or want is None or abs(got - want) > tol:
                warns.append(f"{name}: broker {_iso(got)}, {self.cfg.calendar} {_iso(want)}")
        status = (CheckStatus.FAIL if fails else CheckStatus.WARN if warns
                  else CheckStatus.OK)
        return ClockAgreement(status, tuple(fails + warns), broker, exp)


def _iso(t: datetime | None) -> str:
    return t.astimezone(NEW_YORK).isoformat() if t is not None else "none"


__all__ = [
    "ACTIVE_PHASES",
    "IDLE_PHASES",
    "PHASE_RANK",
    "PHASE_TRANSITIONS",
    "CheckStatus",
    "ClockAgreement",
    "MarketSession",
    "PhaseAt",
    "Schedule",
    "TradingCalendar",
]
