"""The live driver: a live session's trading day, on the exchange calendar, for every account.

A replay is driven by its tape (``daemon.replay``); a live session by the calendar. The
``SessionRunner`` (``engine.lifecycle``) walks the phases and calls these hooks, each on
every account of the daemon (one calendar, one lifecycle):

``roll`` (a new session begins)
    the order manager's day counters restart and orders that ended on earlier days are
    forgotten (the journal keeps them); the gate's day state rolls; the start-of-day
    equity is the broker's ``last_equity`` (its equity at the last close) when it has
    one, else the books' equity; an ``EquityMark`` journals it.
``preflight``
    the checks of ``tradingd preflight`` on the running daemon (``daemon.preflight_live``).
    A failing account is halted (``who: preflight``, with the failed checks as the why),
    so it does not trade, and re-checked every ``session.preflight_retry_secs`` until
    the close; a pass lifts that halt and no other. Each failing or warning check is a
    ``session.preflight_check`` line.
``warmup``
    with model signals on, the features are primed with the broker's historical minute
    bars from the previous session's open to now (Alpaca's data API); without history
    the model warms up on live bars (``WARMUP`` suppressions) and trading goes on.
``open``
    the broker's market clock is refreshed for the gate; trading.
``closing``
    the gate refuses new entries (``SESSION_CLOSING``, from the phase event). With
    ``at_close: flatten``: working day orders are cancelled, then every position is
    closed with reduce-only market orders while the market is still open
    (``engine.closeout``).
``close``
    working day orders are cancelled (with ``flatten``, anything the flatten left is
    reported); the day's report is written to the account's ``reports/`` directory as
    ``report-<day>.html`` and ``report-<day>.json``; with ``signals.model.retrain`` the
    model is retrained on the recorded bars and swapped when its feature version
    matches. ``session.closed`` carries the day's summary. Overnight the daemon idles
    (the watchdog is fed by the supervisor's own task) until the next preflight.

Every ``SessionPhaseChanged`` goes to every account's bus (the gate, the journal) and to
the daemon's bus (the operator surface). ``repeat: once`` stops the daemon after the first
close (exit 0).

Tasks owned: ``session.lifecycle`` (the runner), ``session.finished``,
``session.preflight_retry`` (while a preflight fails).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog

from config.settings import Settings
from daemon import report
from daemon.preflight import PreflightReport
from daemon.preflight_live import WHO, account_preflight
from engine.closeout import cancel_day_orders, flatten
from engine.lifecycle import SessionHooks, SessionRunner
from engine.session import PhaseAt, TradingCalendar
from engine.system import TradingSystem
from kernel.clock import Clock
from kernel.errors import BrokerError
from kernel.events import BarBatch, Event, SessionPhase, SessionPhaseChanged
from risk.state import TradingState

if TYPE_CHECKING:
    from signals.model import ModelSignalSource
    from signals.recorder import BarRecorder

log = structlog.get_logger("daemon.live")

P = SessionPhase
REPORTS_DIR = "reports"
History = Callable[[list[str], datetime, datetime], Awaitable[list[BarBatch]]]


class ModelSlot:
    """The running model signal source: bars go to whichever source is in the slot, so a
    retrained model can replace it between sessions."""

    def __init__(self, source: ModelSignalSource) -> None:
        self.source = source

    def on_bars(self, batch: BarBatch) -> None:
        self.source.on_bars(batch)


class LiveDriver:
    """The trading day of a live session (see the module doc). Enter it once the books
    are reconciled; leave it before the accounts disconnect."""

    def __init__(self, settings: Settings, *, systems: Sequence[TradingSystem], clock: Clock,
                 publish: Callable[[Event], None], environ: Mapping[str, str],
                 on_failure: Callable[[BaseException], None],
                 on_finished: Callable[[str], None],
                 history: History | None = None, model: ModelSlot | None = None,
                 recorder: BarRecorder | None = None) -> None:
        self.settings = settings
        self.cfg = settings.session
        self.systems = list(systems)
        self.clock = clock
        self._publish = publish
        self._environ = environ
        self._on_finished = on_finished
        self.history = history
        self.model = model
        self.recorder = recorder
        self.calendar = TradingCalendar(self.cfg)
        # What the runner calls at each phase (public: tests drive them one by one).
        self.hooks = SessionHooks(on_roll=self._roll, on_preflight=self._preflight,
                                  on_warmup=self._warmup, on_open=self._open,
                                  on_closing=self._closing, on_close=self._close)
        self.runner = SessionRunner(self.calendar, clock=clock, publish=self._on_phase,
                                    on_failure=on_failure, hooks=self.hooks)
        self.preflight: dict[str, PreflightReport] = {}
        self._on_failure = on_failure
        self._tasks: dict[str, asyncio.Task[None]] = {}
        for s in self.systems:
            if s.journal is not None:  # every phase change is on each account's record
                s.bus.subscribe(SessionPhaseChanged, s.journal.on_event)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.calendar.warm()
        await self.runner.__aenter__()
        self._spawn(self._wait_finished(), "session.finished")
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self.runner.__aexit__(et, e, tb)
        if self.recorder is not None:
            self.recorder.close()

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks[name] = task
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self._tasks.get(task.get_name()) is task:
            del self._tasks[task.get_name()]
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            log.error("session.task_failed", task=task.get_name(), error=repr(exc))
            self._on_failure(exc)

    async def _wait_finished(self) -> None:
        await self.runner.finished.wait()
        self._on_finished("session closed (session.repeat: once)")

    def status(self) -> dict[str, Any] | None:
        """The phase block of ``tradingd status`` (None before the first phase)."""
        at = self.runner.current
        if at is None:
            return None
        return {**at.as_dict(), "preflight": {
            name: {"ready": r.ready, "ts": r.ts.isoformat(),
                   "failed": [c.name for c in r.checks if c.status == "fail"]}
            for name, r in self.preflight.items()}}

    def _on_phase(self, event: Event) -> None:
        for s in self.systems:
            s.bus.publish(event)
        self._publish(event)

    def _fields(self, per_account: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """One account's fields at the top of the log line; several under ``accounts``."""
        if len(per_account) == 1:
            return next(iter(per_account.values()))
        return {"accounts": per_account}

    # -- hooks ---------------------------------------------------------------------------

    async def _roll(self, at: PhaseAt) -> Mapping[str, Any]:
        day = at.session.date.isoformat()
        out = {}
        for s in self.systems:
            forgotten = s.orders.roll_day()
            s.gate.roll_day(self.clock.now())
            start, source = await self._start_equity(s, day)
            s.marks.start_day(day, start)
            s.marker.mark(self.clock.now())  # journals the new start of day
            out[s.name] = {"start_of_day_equity": str(start), "start_source": source,
                           "orders_today": s.orders.orders_today(),
                           "orders_forgotten": forgotten}
        if self.recorder is not None:
            self.recorder.prune()
        return self._fields(out)

    async def _start_equity(self, s: TradingSystem, day: str) -> tuple[Decimal, str]:
        try:
            account = await s.broker.account()
        except (BrokerError, TimeoutError) as exc:
            log.warning("session.account_failed", account=s.name, error=repr(exc))
        else:
            if account.last_equity is not None:
                return account.last_equity, "broker last_equity"
        if s.marks.day == day and s.marks.start_of_day is not None:
            return s.marks.start_of_day, "journal"  # a restart during the day
        return s.portfolio.equity(), "books"

    async def _preflight(self, at: PhaseAt) -> Mapping[str, Any]:
        failed = await self._check(self.systems)
        if failed:
            self._spawn(self._recheck(at), "session.preflight_retry")
        return {"ready": not failed, "failed": {
            name: [c.name for c in self.preflight[name].checks if c.status == "fail"]
            for name in failed}, "warned": {
            s.name: [c.name for c in self.preflight[s.name].checks if c.status == "warn"]
            for s in self.systems if any(c.status == "warn"
                                         for c in self.preflight[s.name].checks)}}

    async def _check(self, systems: Sequence[TradingSystem]) -> list[str]:
        """Preflight ``systems``; halt the failing ones, lift a passing one's own halt.
        Returns the names of the accounts that failed."""
        failed = []
        for s in systems:
            rep = await account_preflight(self.settings, s, clock=self.clock,
                                          environ=self._environ)
            self.preflight[s.name] = rep
            for c in rep.checks:
                if c.status != "ok":
                    log.warning("session.preflight_check", account=s.name, check=c.name,
                                status=str(c.status), observed=c.observed, detail=c.detail)
            st = s.risk_state
            if not rep.ready:
                failed.append(s.name)
                bad = ", ".join(c.name for c in rep.checks if c.status == "fail")
                st.request(TradingState.HALTED, who=WHO, why=f"preflight failed: {bad}")
            elif st.state is TradingState.HALTED and st.changed_by == WHO:
                st.request(TradingState.ACTIVE, who=WHO, why="preflight passed")
        return failed

    async def _recheck(self, at: PhaseAt) -> None:
        failing = [s for s in self.systems if not self.preflight[s.name].ready]
        while failing:
            await asyncio.sleep(self.cfg.preflight_retry_secs)
            cur = self.runner.current
            if cur is None or not cur.active or cur.session != at.session:
                return  # the session closed: the next preflight decides afresh
            names = set(await self._check(failing))
            log.info("session.preflight_recheck", failed=sorted(names),
                     passed=sorted(s.name for s in failing if s.name not in names))
            failing = [s for s in failing if s.name in names]

    async def _warmup(self, at: PhaseAt) -> Mapping[str, Any]:
        if self.model is None:
            return {"model": "off"}
        if self.history is None:
            return {"model": "no history source: warms up on live bars"}
        start = self.calendar.previous_session(at.session.date).open
        symbols = list(self.model.source.symbols)
        try:
            batches = await self.history(symbols, start, self.clock.now())
        except (BrokerError, TimeoutError, OSError) as exc:
            log.warning("session.warmup_failed", error=repr(exc),
                        detail="the model warms up on live bars (WARMUP suppressions)")
            return {"primed_batches": 0, "error": repr(exc)}
        n = self.model.source.prime(batches)
        return {"primed_batches": n, "history_from": start.isoformat()}

    async def _open(self, at: PhaseAt) -> Mapping[str, Any]:
        for s in self.systems:
            await s.refresh_market_clock()
        return {"trading": [s.name for s in self.systems if s.available],
                "not_trading": [s.name for s in self.systems if not s.available]}

    async def _closing(self, at: PhaseAt) -> Mapping[str, Any]:
        if self.cfg.at_close != "flatten":
            return {"at_close": "hold"}
        timeout = self.cfg.close_timeout_secs
        out = {}
        for s in self.systems:
            cancelled = await cancel_day_orders(s, why="session closing: flatten",
                                                timeout_secs=timeout)
            done = await flatten(s, session=at.session.date, rounds=self.cfg.flatten_rounds,
                                 timeout_secs=timeout)
            out[s.name] = {**cancelled.as_dict(), **done.as_dict()}
        return {"at_close": "flatten", **self._fields(out)}

    async def _close(self, at: PhaseAt) -> Mapping[str, Any]:
        day = at.session.date.isoformat()
        out = {}
        for s in self.systems:
            cancelled = await cancel_day_orders(s, why="session closed",
                                                timeout_secs=self.cfg.close_timeout_secs)
            s.marker.mark(self.clock.now())
            out[s.name] = {**cancelled.as_dict(), "orders_today": s.orders.orders_today(),
                           "positions": {v.symbol: v.qty for v in s.portfolio.views()
                                         if v.qty},
                           **await self._report(s, day)}
        fields: dict[str, Any] = {"at_close": self.cfg.at_close, **self._fields(out)}
        if self.model is not None and self.settings.signals.model.retrain:
            fields["retrain"] = await self._retrain(at)
        return fields

    async def _report(self, s: TradingSystem, day: str) -> dict[str, Any]:
        if s.journal is None:
            return {}
        s.journal.flush()
        out_dir = s.spec.state_dir / REPORTS_DIR
        html, doc, rep = await asyncio.to_thread(report.write_day, s.journal.path, day,
                                                 out_dir)
        f = rep.figures()
        return {"report": str(html), "report_json": str(doc), "orders": f["orders"],
                "fills": f["fills"], "pnl": f["pnl"], "rejects": f["rejects_by_reason"],
                "end_equity": f["end_equity"]}

    async def _retrain(self, at: PhaseAt) -> dict[str, Any]:
        from daemon.retrain_hook import retrain_and_swap

        assert self.model is not None and self.recorder is not None
        return await retrain_and_swap(self.settings.signals.model, slot=self.model,
                                      recorder=self.recorder, through=at.session.date,
                                      out_dir=self.settings.daemon.state_dir / "models",
                                      clock=self.clock, publish=self._publish)


def phase_name(driver: LiveDriver | None) -> str | None:
    """The lifecycle's phase, lower case (``open``, ``closing``, ...), when it runs."""
    if driver is None or driver.runner.current is None:
        return None
    return str(driver.runner.current.phase).lower()

__all__ = ["REPORTS_DIR", "History", "LiveDriver", "ModelSlot", "phase_name"]
