"""Kill switch: the environment, a file, a signal; plus operator halt and resume.

* ``KILL_SWITCH`` in the environment (any non-empty value except ``0``/``false``, in any
  case) halts before the daemon connects: ``check_env()`` at start. It cannot be cleared
  while the process runs: ``resume`` refuses, and restarting without it is the way out.
* The kill-switch file (``DaemonConfig.kill_switch_path``): ``watch()`` polls every
  0.2 s, so creating the file halts within a second. Removing it does not resume.
* SIGUSR1 (``install_signal_handler``) engages it too.
* ``halt``/``resume`` are the operator's (``tradingd halt``/``tradingd resume``): resume
  refuses while the environment kill switch is set or the file exists.

Every change goes through ``TradingStatus.request`` (a ``TradingStateChanged`` whose
typed ``kill_switch`` field names the ``KillSwitchSource``); the gate then denies
``KILL_SWITCH`` for every order.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog

from risk.state import KillSwitchSource, TradingState, TradingStatus

log = structlog.get_logger("risk.killswitch")

ENV_VAR = "KILL_SWITCH"
_OFF = frozenset({"", "0", "false"})


def env_engaged(environ: Mapping[str, str]) -> bool:
    """True when ``KILL_SWITCH`` is set to anything but empty, ``0`` or ``false``."""
    return environ.get(ENV_VAR, "").strip().lower() not in _OFF


@dataclass(frozen=True, slots=True)
class ResumeResult:
    ok: bool
    detail: str


class KillSwitch:
    """Engages and clears the kill switch; the state keeps the record."""

    def __init__(self, *, state: TradingStatus, path: Path, environ: Mapping[str, str],
                 poll_secs: float = 0.2) -> None:
        self._state = state
        self.path = path
        self._environ = environ
        self._poll = poll_secs
        self._file_seen = False

    def check_env(self) -> bool:
        """Call at start, before connecting to a broker. True if it halted."""
        if not env_engaged(self._environ):
            return False
        self.engage(KillSwitchSource.ENV,
                    f"{ENV_VAR}={self._environ.get(ENV_VAR)!r} in the environment")
        return True

    def engage(self, source: KillSwitchSource, why: str) -> None:
        log.error("kill_switch.engaged", source=str(source), why=why)
        self._state.request(TradingState.HALTED, who=f"kill switch ({source})", why=why,
                            kill_switch=source)

    def poll_file(self) -> bool:
        """One look at the file; engages on its appearance. True while it exists."""
        exists = self.path.exists()
        if exists and not self._file_seen:
            self.engage(KillSwitchSource.FILE, f"kill-switch file {self.path} exists")
        elif self._file_seen and not exists:
            log.warning("kill_switch.file_removed", path=str(self.path),
                        detail="still halted until an operator resumes")
        self._file_seen = exists
        return exists

    async def watch(self) -> None:
        """Poll the kill-switch file forever (run as task ``risk.kill_switch``)."""
        while True:
            self.poll_file()
            await asyncio.sleep(self._poll)

    def install_signal_handler(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.add_signal_handler(signal.SIGUSR1, self.engage, KillSwitchSource.SIGNAL,
                                "SIGUSR1 received")

    def halt(self, *, who: str = "operator", why: str = "operator halt") -> None:
        self._state.request(TradingState.HALTED, who=who, why=why)

    def resume(self, *, who: str = "operator", why: str = "operator resume") -> ResumeResult:
        """Back to ACTIVE, unless a kill switch the operator cannot clear is engaged."""
        if env_engaged(self._environ) or self._state.env_kill_switch:
            detail = f"{ENV_VAR} is set in the daemon's environment: restart without it"
        elif self.path.exists():
            detail = f"kill-switch file {self.path} exists: remove it first"
        else:
            self._state.request(TradingState.ACTIVE, who=who, why=why)
            log.warning("trading.resumed", who=who, why=why)
            return ResumeResult(True, "ACTIVE")
        log.warning("trading.resume_refused", who=who, detail=detail)
        return ResumeResult(False, detail)
