"""Commands and events: the only things that travel on the bus.

Commands are imperatives with exactly one handler (``PlaceOrder`` goes to the gate,
``SubmitOrder`` to the order manager). Events are past-tense facts with any number of
subscribers. Both are immutable (frozen, slotted dataclasses). The hot path makes one
``BarBatch`` per timestamp and one ``SignalBatch`` per batch, never one event per symbol.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np

from kernel.model import (
    Fill,
    FloatArray,
    OrderSide,
    OrderType,
    Signal,
    TimeInForce,
)


class Message:
    """Base of everything on the bus."""

    __slots__ = ()


class Command(Message):
    """An instruction; exactly one handler."""

    __slots__ = ()


class Event(Message):
    """A fact that happened; any number of subscribers."""

    __slots__ = ()


# -- MARKET DATA -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class BarBatch(Event):
    """All bars of one timestamp, as arrays aligned with ``symbols``.

    ``ts`` is the bar start (UTC); the bar is complete at ``ts + interval``.
    ``received_ns`` is when the batch entered the bus (``time.perf_counter_ns``), for
    latency measurement.
    """

    ts: datetime
    symbols: tuple[str, ...]
    open: FloatArray
    high: FloatArray
    low: FloatArray
    close: FloatArray
    volume: FloatArray
    received_ns: int = 0

    def __len__(self) -> int:
        return len(self.symbols)

    def index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.symbols)}

    @staticmethod
    def merge(older: BarBatch, newer: BarBatch) -> BarBatch:
        """Coalesce two batches: per symbol, first open, max high, min low, last close,
        summed volume. Used when a live feed outruns the bus (never in replay)."""
        idx = {s: i for i, s in enumerate(older.symbols)}
        syms = list(older.symbols)
        for s in newer.symbols:
            if s not in idx:
                idx[s] = len(syms)
                syms.append(s)
        n = len(syms)
        o, h, lo, c, v = (np.full(n, np.nan) for _ in range(5))
        for b in (older, newer):
            ix = np.fromiter((idx[s] for s in b.symbols), dtype=np.intp, count=len(b.symbols))
            first = np.isnan(o[ix])
            o[ix] = np.where(first, b.open, o[ix])
            h[ix] = np.fmax(h[ix], b.high)
            lo[ix] = np.fmin(lo[ix], b.low)
            c[ix] = b.close
            v[ix] = np.nan_to_num(v[ix]) + b.volume
        return BarBatch(
            ts=older.ts, symbols=tuple(syms), open=o, high=h, low=lo, close=c, volume=v,
            received_ns=older.received_ns,
        )


@dataclass(frozen=True, slots=True)
class SignalBatch(Event):
    """Signals from one source at one moment (a model scores all symbols at once)."""

    ts: datetime
    source: str
    signals: tuple[Signal, ...]
    received_ns: int = 0


@dataclass(frozen=True, slots=True)
class SignalRejected(Event):
    """An incoming signal was malformed or refused before sizing."""

    ts: datetime
    source: str
    reason: str
    detail: str
    signal_id: str | None = None


# -- ORDER COMMANDS --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """What sizing (or an operator, or the risk monitor) wants to trade, before the gate."""

    client_order_id: str
    symbol: str
    side: OrderSide
    qty: int
    order_type: OrderType
    time_in_force: TimeInForce
    ts: datetime
    reference_price: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    signal: Signal | None = None
    batch_id: str | None = None
    reduce_only: bool = False
    origin: str = "signal"

    @property
    def notional(self) -> Decimal:
        return self.reference_price * self.qty


@dataclass(frozen=True, slots=True)
class PlaceOrder(Command):
    """Ask for an order; handled by the pre-trade gate, which may deny or pass it on."""

    intent: OrderIntent


@dataclass(frozen=True, slots=True)
class SubmitOrder(Command):
    """Send an approved order to the broker; handled by the order manager only."""

    intent: OrderIntent


@dataclass(frozen=True, slots=True)
class CancelOrder(Command):
    client_order_id: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class CancelAllOrders(Command):
    reason: str = ""


# -- GATE AND STATE --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderDenied(Event):
    """The gate refused an intent: ``reason`` is a stable code, with the limit and value."""

    intent: OrderIntent
    reason: str
    limit: Any = None
    observed: Any = None


@dataclass(frozen=True, slots=True)
class OrderApproved(Event):
    """The gate passed an intent (possibly reduced: ``original_qty`` tells)."""

    intent: OrderIntent
    original_qty: int


class TradingState(enum.StrEnum):
    """ACTIVE: trade normally. REDUCING: only orders that shrink |exposure|.
    HALTED: nothing but the emergency path (liquidation)."""

    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"

    @property
    def severity(self) -> int:
        """0, 1, 2: a state only ever escalates to a higher one without an operator."""
        return _SEVERITY[self]


_SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


class KillSwitchSource(enum.StrEnum):
    """Where a kill switch was engaged. ENV cannot be cleared while the process runs."""

    ENV = "env"
    FILE = "file"
    SIGNAL = "signal"


@dataclass(frozen=True, slots=True)
class TradingStateChanged(Event):
    """The trading state moved (or a kill switch engaged: ``kill_switch`` names its
    source, and the state is HALTED). ``who``/``why`` are for people; decisions use the
    typed fields only."""

    old: TradingState
    new: TradingState
    who: str
    why: str
    ts: datetime
    kill_switch: KillSwitchSource | None = None


class ExecutionMode(enum.StrEnum):
    """FULL_AUTO sends what passes the gate; SEMI_AUTO and MANUAL wait for an operator
    (above a notional, or always); RESEARCH sends nothing; EMERGENCY liquidates."""

    FULL_AUTO = "FULL_AUTO"
    SEMI_AUTO = "SEMI_AUTO"
    MANUAL = "MANUAL"
    RESEARCH = "RESEARCH"
    EMERGENCY = "EMERGENCY"


@dataclass(frozen=True, slots=True)
class ExecutionModeChanged(Event):
    """The execution mode changed (journaled durably; a restart restores it)."""

    old: ExecutionMode
    new: ExecutionMode
    who: str
    why: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class ApprovalPending(Event):
    """An order waits for an operator (SEMI_AUTO above the threshold, MANUAL)."""

    approval_id: str
    intent: OrderIntent
    ts: datetime


class ApprovalOutcome(enum.StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"
    DROPPED = "dropped"  # the queue was full: the oldest waiting order gave way


@dataclass(frozen=True, slots=True)
class ApprovalResolved(Event):
    """A waiting order left the approval queue."""

    approval_id: str
    client_order_id: str
    outcome: ApprovalOutcome
    who: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class AlertRaised(Event):
    name: str
    severity: str
    ts: datetime
    detail: dict[str, Any] = field(default_factory=dict)


# -- ORDER EVENTS (as a broker reports them, in domain terms) ---------------------------


@dataclass(frozen=True, slots=True)
class OrderEvent(Event):
    client_order_id: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class OrderSubmitted(OrderEvent):
    """The order manager handed the order to the broker (status pending_new)."""


@dataclass(frozen=True, slots=True)
class OrderAccepted(OrderEvent):
    """The broker received the order (Alpaca ``accepted``/``pending_new``)."""

    broker_order_id: str = ""


@dataclass(frozen=True, slots=True)
class OrderNew(OrderEvent):
    """The order is live at the venue (Alpaca ``new``)."""

    broker_order_id: str = ""


@dataclass(frozen=True, slots=True)
class OrderFilled(OrderEvent):
    """One execution (partial or final); the order's status follows from its filled qty."""

    fill: Fill


@dataclass(frozen=True, slots=True)
class OrderRejected(OrderEvent):
    """The order was refused: by the broker (``code`` is its error code when it gave
    one, ``reason`` its message) or locally (``code`` None, ``reason`` a stable text)."""

    reason: str = ""
    code: int | None = None


@dataclass(frozen=True, slots=True)
class OrderCanceled(OrderEvent):
    reason: str = ""


@dataclass(frozen=True, slots=True)
class OrderExpired(OrderEvent):
    pass


@dataclass(frozen=True, slots=True)
class OrderPendingCancel(OrderEvent):
    pass


@dataclass(frozen=True, slots=True)
class OrderPendingReplace(OrderEvent):
    pass


@dataclass(frozen=True, slots=True)
class OrderCancelRejected(OrderEvent):
    """A cancel or replace lost the race (the order filled first)."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class OrderReplaced(OrderEvent):
    """The old order was replaced; ``new_client_order_id`` carries the replacement."""

    new_client_order_id: str = ""


@dataclass(frozen=True, slots=True)
class OrderDoneForDay(OrderEvent):
    pass


@dataclass(frozen=True, slots=True)
class OrderAbandoned(OrderEvent):
    """A journaled intent the broker never saw; never re-sent automatically."""

    reason: str = ""


# -- PORTFOLIO, ACCOUNT, TIMERS -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PositionChanged(Event):
    symbol: str
    qty: int
    avg_price: Decimal
    realized_pnl: Decimal
    ts: datetime


@dataclass(frozen=True, slots=True)
class ReconcileTick(Event):
    ts: datetime


@dataclass(frozen=True, slots=True)
class RiskTick(Event):
    ts: datetime


@dataclass(frozen=True, slots=True)
class Heartbeat(Event):
    ts: datetime


class BrokerStatus(enum.StrEnum):
    """What a broker adapter reports about its connection (see ``kernel.broker``)."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    # Reconnected after a gap: what happened meanwhile is unknown until the reconciler
    # has caught up over REST (the gate denies RECONCILING until then).
    RECOVERING = "recovering"
    READY = "ready"


@dataclass(frozen=True, slots=True)
class BrokerStatusChanged(Event):
    """A broker adapter's connection changed (published by adapters only)."""

    broker: str
    status: BrokerStatus
    ts: datetime
    detail: str = ""


# -- TRADING SESSION -------------------------------------------------------------------


class SessionPhase(enum.StrEnum):
    """Where the trading day stands on the exchange calendar (``engine.session``).

    PREFLIGHT: before the open, the readiness checks run. WARMUP: feature history is
    loaded. OPEN: trading. CLOSING: the last minutes before the close, no new entries
    (exits pass; the gate denies ``SESSION_CLOSING``). CLOSED: after the close, and
    overnight before the next session's preflight. HOLIDAY: a day without a session
    (weekend or exchange holiday), from its midnight to the next session's preflight.
    """

    PREFLIGHT = "PREFLIGHT"
    WARMUP = "WARMUP"
    OPEN = "OPEN"
    CLOSING = "CLOSING"
    CLOSED = "CLOSED"
    HOLIDAY = "HOLIDAY"


@dataclass(frozen=True, slots=True)
class SessionPhaseChanged(Event):
    """The trading day moved to ``phase``. ``session`` is the New York date of the session
    the phase belongs to (CLOSED and HOLIDAY belong to the last session traded);
    ``next_phase`` follows at ``next_at`` (UTC) by the calendar."""

    phase: SessionPhase
    session: date
    ts: datetime
    next_phase: SessionPhase
    next_at: datetime
    early_close: bool = False


@dataclass(frozen=True, slots=True)
class ReconciliationChanged(Event):
    """The books are confirmed with the broker (``ready``) or not (start-up, recovery
    after a broker gap). Published by the reconciler only; the gate denies RECONCILING
    while not ready."""

    ready: bool
    why: str
    ts: datetime


@dataclass(frozen=True, slots=True)
class ReconcileRequested(Event):
    """An adapter saw something only a REST look can settle (a fill the stream never
    delivered, an unknown replacement): the reconciler runs a pass soon."""

    who: str
    why: str
    ts: datetime
    client_order_id: str | None = None


@dataclass(frozen=True, slots=True)
class ShutdownRequested(Event):
    why: str
    ts: datetime
