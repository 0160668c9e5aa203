"""Execution modes and the operator approval queue.

* FULL_AUTO: every order that passes the gate is sent.
* SEMI_AUTO: orders above ``approval_notional`` wait for an operator's ``approve``.
* MANUAL: every order waits for approval.
* RESEARCH: signals are sized and checked, decisions logged, nothing is sent
  (the gate denies ``EXECUTION_MODE``).
* EMERGENCY: liquidate and halt; only the emergency path passes the gate.

Risk exits (reduce-only intents from the risk monitor or the emergency path) never wait
for approval: reducing risk must not depend on someone being at the keyboard.

An order waiting for approval was checked by the gate (and possibly reduced) and denied
``EXECUTION_MODE`` with the approval id as the observed value. ``approve(id)`` sends it
through the gate again, because the state, prices or limits may have changed meanwhile
(a signal older than ``stale_signal_secs`` by then is denied ``STALE_SIGNAL``).

A restart forgets nothing: every mode change and every approval queued or resolved is
an event (``ExecutionModeChanged``, ``ApprovalPending``, ``ApprovalResolved``) that the
journal records durably, and recovery hands the newest mode and the still-waiting
approvals back through ``restore``.

Events published (with ``publish``): ``ExecutionModeChanged``, ``ApprovalPending``,
``ApprovalResolved``. Commands sent (with ``send``): ``PlaceOrder``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from kernel.clock import Clock
from kernel.events import (
    ApprovalOutcome,
    ApprovalPending,
    ApprovalResolved,
    Event,
    ExecutionMode,
    ExecutionModeChanged,
    OrderIntent,
    PlaceOrder,
)

log = structlog.get_logger("risk.modes")

RISK_ORIGINS = frozenset({"risk", "emergency"})

__all__ = ["RISK_ORIGINS", "ExecutionMode", "ExecutionModes", "PendingApproval"]


@dataclass(frozen=True, slots=True)
class PendingApproval:
    id: str
    intent: OrderIntent
    ts: datetime

    def as_dict(self) -> dict[str, Any]:
        i = self.intent
        return {"id": self.id, "client_order_id": i.client_order_id, "symbol": i.symbol,
                "side": str(i.side), "qty": i.qty, "reference_price": str(i.reference_price),
                "notional": str(i.notional), "origin": i.origin,
                "signal_id": i.signal.id if i.signal else None, "ts": self.ts.isoformat()}


class ExecutionModes:
    """The current execution mode and the orders waiting for an operator.

    ``send`` is the bus's ``send`` (approved orders go back through the gate);
    ``publish`` the bus's ``publish`` (the events the journal keeps); ``on_emergency`` is
    called when the mode becomes EMERGENCY (the app starts ``risk.emergency.liquidate``
    from it).
    """

    def __init__(
        self,
        mode: ExecutionMode | str = ExecutionMode.FULL_AUTO,
        *,
        clock: Clock,
        approval_notional: Decimal = Decimal(5000),
        send: Callable[[PlaceOrder], None] | None = None,
        publish: Callable[[Event], None] | None = None,
        on_emergency: Callable[[str], None] | None = None,
        max_pending: int = 100,
    ) -> None:
        self.mode = ExecutionMode(mode)
        self._clock = clock
        self._threshold = approval_notional
        self._send = send
        self._publish = publish or (lambda _e: None)
        self._on_emergency = on_emergency
        self._max_pending = max_pending
        self.pending: dict[str, PendingApproval] = {}
        self._approved: set[str] = set()
        self._seq = 0

    def set_mode(self, mode: ExecutionMode | str, *, who: str, why: str = "") -> None:
        new = ExecutionMode(mode)
        old, self.mode = self.mode, new
        log.warning("execution.mode_changed", old=str(old), new=str(new), who=who, why=why)
        if old is not new:
            self._publish(ExecutionModeChanged(old=old, new=new, who=who, why=why,
                                               ts=self._clock.now()))
        if new is ExecutionMode.EMERGENCY and old is not new and self._on_emergency:
            self._on_emergency(why or f"execution mode EMERGENCY by {who}")

    def restore(self, mode: ExecutionMode | str | None,
                pending: Iterable[PendingApproval] = (), *, used: Iterable[str] = ()) -> None:
        """Adopt what the journal says (recovery, before any signal): the mode, the
        approvals still waiting, and the ids given before (never given again).
        Publishes nothing, and an EMERGENCY mode does not start a new liquidation (the
        halt it caused is restored with the trading state)."""
        if mode is not None:
            self.mode = ExecutionMode(mode)
        for aid in used:
            self._seq = max(self._seq, _seq_of(aid))
        for p in pending:
            self.pending[p.id] = p
            self._seq = max(self._seq, _seq_of(p.id))
        while len(self.pending) > self._max_pending:
            del self.pending[next(iter(self.pending))]
        log.info("execution.mode_restored", mode=str(self.mode), pending=len(self.pending))

    # -- used by the gate --------------------------------------------------------------

    def needs_approval(self, intent: OrderIntent) -> bool:
        if self.mode is ExecutionMode.FULL_AUTO:
            return False
        if intent.reduce_only and intent.origin in RISK_ORIGINS:
            return False
        if self.mode is ExecutionMode.MANUAL:
            return True
        return self.mode is ExecutionMode.SEMI_AUTO and intent.notional > self._threshold

    def take_approved(self, client_order_id: str) -> bool:
        """True once for an order the operator approved (the gate consumes it)."""
        if not self._approved:
            return False
        try:
            self._approved.remove(client_order_id)
        except KeyError:
            return False
        return True

    def park(self, intent: OrderIntent) -> str:
        """Hold an order for approval; returns its approval id."""
        for p in self.pending.values():
            if p.intent.client_order_id == intent.client_order_id:
                return p.id
        if len(self.pending) >= self._max_pending:
            oldest = next(iter(self.pending))
            dropped = self.pending.pop(oldest)
            log.warning("approval.dropped", id=oldest,
                        client_order_id=dropped.intent.client_order_id, why="queue full")
            self._resolved(dropped, ApprovalOutcome.DROPPED, "approval queue full")
        self._seq += 1
        pid = f"A{self._seq}"
        now = self._clock.now()
        self.pending[pid] = PendingApproval(pid, intent, now)
        self._publish(ApprovalPending(approval_id=pid, intent=intent, ts=now))
        log.info("approval.pending", id=pid, client_order_id=intent.client_order_id,
                 symbol=intent.symbol, side=str(intent.side), qty=intent.qty,
                 notional=str(intent.notional), mode=str(self.mode))
        return pid

    # -- operator commands ---------------------------------------------------------------

    def approve(self, approval_id: str, *, who: str = "operator") -> bool:
        """Send a waiting order through the gate again; False if the id is unknown."""
        p = self.pending.pop(approval_id, None)
        if p is None:
            return False
        log.info("approval.approved", id=approval_id, who=who,
                 client_order_id=p.intent.client_order_id)
        self._resolved(p, ApprovalOutcome.APPROVED, who)
        self._approved.add(p.intent.client_order_id)
        if self._send is not None:
            self._send(PlaceOrder(p.intent))
        return True

    def reject(self, approval_id: str, *, who: str = "operator") -> bool:
        p = self.pending.pop(approval_id, None)
        if p is None:
            return False
        log.info("approval.rejected", id=approval_id, who=who,
                 client_order_id=p.intent.client_order_id)
        self._resolved(p, ApprovalOutcome.REJECTED, who)
        return True

    def _resolved(self, p: PendingApproval, outcome: ApprovalOutcome, who: str) -> None:
        self._publish(ApprovalResolved(approval_id=p.id, client_order_id=p.intent.client_order_id,
                                       outcome=outcome, who=who, ts=self._clock.now()))

    def list_pending(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.pending.values()]


def _seq_of(approval_id: str) -> int:
    digits = approval_id.removeprefix("A")
    return int(digits) if digits.isdigit() else 0
