"""How the risk components attach to the bus (one place, so the app and tests agree)."""

from __future__ import annotations

from kernel.bus import Bus
from kernel.events import (
    BarBatch,
    OrderEvent,
    PlaceOrder,
    PositionChanged,
    ReconciliationChanged,
    RiskTick,
    SessionPhaseChanged,
    TradingStateChanged,
)
from risk.gate import Gate
from risk.monitor import RiskMonitor
from risk.state import TradingStatus


def wire_risk(bus: Bus, *, gate: Gate, state: TradingStatus,
              monitor: RiskMonitor | None = None) -> None:
    """Register the gate as the ``PlaceOrder`` handler and subscribe the risk handlers.

    The state subscribes first so that a state change is applied before anything else
    reacts to it.
    """
    bus.subscribe(TradingStateChanged, state.on_state_changed)
    bus.subscribe(ReconciliationChanged, state.on_reconciliation)
    bus.register(PlaceOrder, gate.execute)
    bus.subscribe(BarBatch, gate.on_bars)
    bus.subscribe(OrderEvent, gate.on_order_event)
    bus.subscribe(PositionChanged, gate.on_position_changed)
    bus.subscribe(SessionPhaseChanged, gate.on_session_phase)
    if monitor is not None:
        bus.subscribe(RiskTick, monitor.on_tick)
        bus.subscribe(PositionChanged, monitor.on_position_changed)
