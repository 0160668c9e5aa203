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
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import structlog

from kernel.clock import Clock
from kernel.events import OrderIntent, PlaceOrder

log = structlog.get_logger("risk.modes")

RISK_ORIGINS = frozenset({"risk", "emergency"})


class ExecutionMode(enum.StrEnum):
    FULL_AUTO = "FULL_AUTO"
    SEMI_AUTO = "SEMI_AUTO"
    MANUAL = "MANUAL"
    RESEARCH = "RESEARCH"
    EMERGENCY = "EMERGENCY"


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
    ``on_emergency`` is called when the mode becomes EMERGENCY (the app starts
    ``risk.emergency.liquidate`` from it).
    """

    def __init__(
        self,
        mode: ExecutionMode | str = ExecutionMode.FULL_AUTO,
        *,
        clock: Clock,
        approval_notional: Decimal = Decimal(5000),
        send: Callable[[PlaceOrder], None] | None = None,
        on_emergency: Callable[[str], None] | None = None,
        max_pending: int = 100,
    ) -> None:
        self.mode = ExecutionMode(mode)
        self._clock = clock
        self._threshold = approval_notional
        self._send = send
        self._on_emergency = on_emergency
        self._max_pending = max_pending
        self.pending: dict[str, PendingApproval] = {}
        self._approved: set[str] = set()
        self._seq = 0

    def set_mode(self, mode: ExecutionMode | str, *, who: str, why: str = "") -> None:
        new = ExecutionMode(mode)
        old, self.mode = self.mode, new
        log.warning("execution.mode_changed", old=str(old), new=str(new), who=who, why=why)
        if new is ExecutionMode.EMERGENCY and old is not new and self._on_emergency:
            self._on_emergency(why or f"execution mode EMERGENCY by {who}")

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
        self._seq += 1
        pid = f"A{self._seq}"
        self.pending[pid] = PendingApproval(pid, intent, self._clock.now())
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
        return True

    def list_pending(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.pending.values()]
