"""Trading state: ACTIVE / REDUCING / HALTED, plus the kill-switch flag and reconciliation.

The state changes only through ``TradingStateChanged`` events: ``request`` (and
``escalate``) publish one, and ``on_state_changed`` (subscribed on the bus) is the one
mutator, so every change is on the bus with who and why, in order, and the journal can
replay it. Every component that moves the state (operator, kill switch, risk monitor,
reconciler, emergency path, recovery) goes through ``request``/``escalate``.

Kill switch vs halt: a ``TradingStateChanged`` whose typed ``kill_switch`` field names a
source (``KillSwitchSource.ENV``, ``FILE``, ``SIGNAL``) engages the kill-switch flag for
that source, on top of moving to HALTED. A later change to ACTIVE/REDUCING (an operator
``resume``) clears the file and signal sources, never the environment one: with
``KILL_SWITCH`` set in the environment the gate keeps denying ``KILL_SWITCH`` whatever
the state says, until the daemon restarts without it.

Reconciliation: the books are unconfirmed at start, and again whenever the reconciler
says so (``ReconciliationChanged(ready=False)``, e.g. while it catches up after a broker
reported ``recovering``), until it publishes ``ready=True``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from kernel.clock import Clock
from kernel.events import (
    Event,
    KillSwitchSource,
    ReconciliationChanged,
    TradingState,
    TradingStateChanged,
)

log = structlog.get_logger("risk.state")

__all__ = ["KillSwitchSource", "TradingState", "TradingStatus"]


class TradingStatus:
    """The current trading state, kill-switch sources and reconciliation flag.

    Events published: ``TradingStateChanged`` (from ``request`` and ``escalate``).
    """

    def __init__(self, *, clock: Clock, publish: Callable[[Event], None],
                 reconciled: bool = False) -> None:
        self._clock = clock
        self._publish = publish
        self.state = TradingState.ACTIVE
        self.kill_sources: set[KillSwitchSource] = set()
        self.reconciled = reconciled
        self.changed_at: datetime | None = None
        self.changed_by = ""
        self.reason = ""

    # -- views -------------------------------------------------------------------------

    @property
    def kill_switch(self) -> bool:
        return bool(self.kill_sources)

    @property
    def env_kill_switch(self) -> bool:
        return KillSwitchSource.ENV in self.kill_sources

    @property
    def reconciling(self) -> bool:
        return not self.reconciled

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view for ``tradingd status``."""
        return {
            "state": str(self.state),
            "kill_switch": sorted(str(s) for s in self.kill_sources),
            "reconciling": self.reconciling,
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,
            "changed_by": self.changed_by,
            "reason": self.reason,
        }

    # -- requests (publish; the event handler applies) -----------------------------------

    def request(self, new: TradingState, *, who: str, why: str,
                kill_switch: KillSwitchSource | None = None) -> None:
        """Ask for a state change: publishes ``TradingStateChanged`` (applied on dispatch).

        Publishes even when the state does not change if a kill switch engages, so the
        flag and its source are on the record.
        """
        if new is self.state and kill_switch is None:
            return
        self._publish(TradingStateChanged(old=self.state, new=new, who=who, why=why,
                                          ts=self._clock.now(), kill_switch=kill_switch))

    def escalate(self, new: TradingState, *, who: str, why: str) -> bool:
        """Move to ``new`` only if it is more severe than the current state (automatic
        protections never relax the state; that is the operator's ``resume``). True if
        a change was requested."""
        if new.severity <= self.state.severity:
            return False
        self.request(new, who=who, why=why)
        return True

    # -- event handlers ------------------------------------------------------------------

    def on_state_changed(self, event: TradingStateChanged) -> None:
        """The one mutator of the trading state."""
        new = TradingState(event.new)
        if event.kill_switch is not None:
            self.kill_sources.add(KillSwitchSource(event.kill_switch))
        elif new is not TradingState.HALTED:
            # A resume clears the kill switches the operator can clear; never the
            # environment's (the resume command refuses first; this is the backstop).
            self.kill_sources &= {KillSwitchSource.ENV}
        old = self.state
        self.state = new
        self.changed_at, self.changed_by, self.reason = event.ts, event.who, event.why
        log.warning("trading.state_changed", old=str(old), new=str(new), who=event.who,
                    why=event.why, kill_switch=sorted(str(s) for s in self.kill_sources))

    def on_reconciliation(self, event: ReconciliationChanged) -> None:
        if event.ready and not self.reconciled:
            log.info("trading.reconciled", why=event.why)
        self.reconciled = event.ready
