"""Trading state: ACTIVE / REDUCING / HALTED, plus the kill-switch flag and reconciliation.

The state changes only through ``TradingStateChanged`` events: ``request`` publishes one,
and ``on_state_changed`` (subscribed on the bus) is the one mutator, so every change is
on the bus with who and why, in order, and the journal can replay it.

Kill switch vs halt: a ``TradingStateChanged`` whose ``who`` starts with
``kill_switch:`` (``kill_switch:env``, ``kill_switch:file``, ``kill_switch:signal``)
engages the kill-switch flag for that source, on top of moving to HALTED. A later change
to ACTIVE/REDUCING (an operator ``resume``) clears the file and signal sources, never the
environment one: with ``KILL_SWITCH`` set in the environment the gate keeps denying
``KILL_SWITCH`` whatever the state says, until the daemon restarts without it.

Reconciliation: the books are unconfirmed at start until a broker reports ``ready``
(``BrokerStatusChanged``), and again while any broker reports ``recovering``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from datetime import datetime
from typing import Any

import structlog

from kernel.clock import Clock
from kernel.events import BrokerStatusChanged, Event, TradingStateChanged

log = structlog.get_logger("risk.state")

KILL_SWITCH_PREFIX = "kill_switch:"
ENV_SOURCE = "env"


class TradingState(enum.StrEnum):
    """ACTIVE: trade normally. REDUCING: only orders that shrink |exposure|.
    HALTED: nothing but the emergency path (liquidation)."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"


class TradingStatus:
    """The current trading state, kill-switch sources and reconciliation flags.

    Events published: ``TradingStateChanged`` (from ``request``).
    """

    def __init__(self, *, clock: Clock, publish: Callable[[Event], None],
                 reconciled: bool = False) -> None:
        self._clock = clock
        self._publish = publish
        self.state = TradingState.ACTIVE
        self.kill_sources: set[str] = set()
        self.awaiting_ready = not reconciled
        self.recovering: set[str] = set()
        self.changed_at: datetime | None = None
        self.changed_by = ""
        self.reason = ""

    # -- views -------------------------------------------------------------------------

    @property
    def kill_switch(self) -> bool:
        return bool(self.kill_sources)

    @property
    def env_kill_switch(self) -> bool:
        return ENV_SOURCE in self.kill_sources

    @property
    def reconciling(self) -> bool:
        return self.awaiting_ready or bool(self.recovering)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready view for ``tradingd status``."""
        return {
            "state": str(self.state),
            "kill_switch": sorted(self.kill_sources),
            "reconciling": self.reconciling,
            "changed_at": self.changed_at.isoformat() if self.changed_at else None,
            "changed_by": self.changed_by,
            "reason": self.reason,
        }

    # -- requests (publish; the event handler applies) -----------------------------------

    def request(self, new: TradingState, *, who: str, why: str) -> None:
        """Ask for a state change: publishes ``TradingStateChanged`` (applied on dispatch).

        Publishes even when the state does not change if ``who`` engages a kill switch,
        so the flag and its source are on the record.
        """
        if new is self.state and not who.startswith(KILL_SWITCH_PREFIX):
            return
        self._publish(TradingStateChanged(old=str(self.state), new=str(new), who=who,
                                          why=why, ts=self._clock.now()))

    # -- event handlers ------------------------------------------------------------------

    def on_state_changed(self, event: TradingStateChanged) -> None:
        """The one mutator of the trading state."""
        new = TradingState(event.new)
        if event.who.startswith(KILL_SWITCH_PREFIX):
            self.kill_sources.add(event.who.removeprefix(KILL_SWITCH_PREFIX))
        elif new is not TradingState.HALTED:
            # A resume clears the kill switches the operator can clear; never the
            # environment's (the resume command refuses first; this is the backstop).
            self.kill_sources &= {ENV_SOURCE}
        old = self.state
        self.state = new
        self.changed_at, self.changed_by, self.reason = event.ts, event.who, event.why
        log.warning("trading.state_changed", old=str(old), new=str(new), who=event.who,
                    why=event.why, kill_switch=sorted(self.kill_sources))

    def on_broker_status(self, event: BrokerStatusChanged) -> None:
        if event.status == "recovering":
            self.recovering.add(event.broker)
        elif event.status == "ready":
            self.recovering.discard(event.broker)
            if self.awaiting_ready:
                log.info("trading.reconciled", broker=event.broker)
            self.awaiting_ready = False
