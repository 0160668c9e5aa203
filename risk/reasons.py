"""Why the gate refused an order: stable reason codes, and the denial/cap values.

Reason codes are part of the public interface (logs, ``OrderDenied.reason``, alerts,
the README): never rename one, only add.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class ReasonCode(enum.StrEnum):
    """Every reason the pre-trade gate can deny (or reduce) an order.

    State:
        KILL_SWITCH: a kill switch is engaged (``KILL_SWITCH`` environment variable,
            kill-switch file, or SIGUSR1). Denies every order, liquidation included;
            only cancels still go out. An environment kill switch needs a restart.
        TRADING_HALTED: trading state is HALTED (operator ``halt``, risk monitor, or an
            emergency stop). Only the emergency path (reduce-only intents with
            ``origin="emergency"``, made by ``risk.emergency.liquidate``) passes.
        REDUCE_ONLY: state is REDUCING and the order would grow |exposure| (or flip the
            position); or a ``reduce_only`` intent would. When part of the order reduces,
            the order is cut to that part instead.
        RECONCILING: the books are not yet confirmed with the broker (at start until a
            broker reports ``ready``, and while any broker reports ``recovering``).
        EXECUTION_MODE: RESEARCH mode (nothing is sent), EMERGENCY mode (only the
            emergency path), or the order awaits operator approval (SEMI_AUTO above the
            approval notional, MANUAL always); ``observed`` then names the approval id.
    Signal:
        INVALID_SIGNAL: NaN/inf strength or price, strength outside [-1, 1], non-positive
            price, a symbol outside the universe (config ``symbols`` or symbols seen in
            bars); for any intent, a non-positive quantity or reference price.
        STALE_SIGNAL: the signal is older than ``stale_signal_secs`` by the clock.
        DUPLICATE_SIGNAL: this (source, signal id) was seen before (bounded memory).
    Market:
        MARKET_CLOSED: outside the session (broker clock if known, else the XNYS
            calendar; extended hours when ``extended_hours`` or for the emergency path).
        SESSION_CLOSING: the session is CLOSING (the last
            ``no_new_entries_before_close_mins`` before the close, from the lifecycle's
            ``SessionPhaseChanged``) and the order would grow |exposure|; exits pass, a
            partly reducing order is cut to its reducing part.
        PRICE_DEVIATION: reference price differs from the last bar close by more than
            ``max_slip_pct``.
        SPREAD_TOO_WIDE: the last known quote spread exceeds ``max_spread_bps``.
        SYMBOL_MOVE_LIMIT: |last close / day's first open - 1| exceeds ``symbol_move_limit``.
    Size (the cap rules reduce the order to fit in whole shares before denying):
        MIN_ORDER_NOTIONAL: notional below ``min_order_notional`` (also after a reduction).
        MAX_ORDER_NOTIONAL: notional above ``max_order_notional`` (cap).
        MAX_POSITION: the position (held plus working orders, worst case) would exceed
            ``max_position_pct`` of equity (cap).
        MAX_GROSS_EXPOSURE: gross exposure would exceed ``max_gross_exposure`` of equity (cap).
        SECTOR_EXPOSURE: the symbol's sector (``sector_map``) would exceed
            ``max_sector_exposure`` of equity (cap).
        GLOBAL_GROSS_EXPOSURE: with several accounts, the gross exposure of all of them
            together would exceed ``global_risk.max_gross_exposure`` of their summed
            equity (cap).
        SHORTS_NOT_ALLOWED: a sell would leave a short position while ``allow_shorts`` is off.
        INSUFFICIENT_BUYING_POWER: cash less working buys cannot pay for the order (cap).
    Rate:
        MAX_ORDERS_PER_SYMBOL_DAY: ``max_orders_per_symbol_day`` orders already today.
        MAX_ORDERS_PER_DAY: ``max_orders_per_day`` orders already today.
        MAX_ORDERS_PER_EXECUTION: ``max_orders_per_execution`` already in this signal batch.
        RATE_LIMIT: more than ``max_orders_per_second`` orders per second (clock time).
        DUPLICATE_ORDER: an open order already works the same symbol and side.
    Loss (deny orders that grow exposure; exits still pass):
        DAILY_LOSS_LIMIT: equity is down ``max_daily_loss`` or more from start of day.
        MAX_DRAWDOWN: equity is down ``max_drawdown`` or more from its peak.
        SESSION_DRAWDOWN: equity is down ``session_drawdown`` or more since this daemon
            session started.
    """

    KILL_SWITCH = "KILL_SWITCH"
    TRADING_HALTED = "TRADING_HALTED"
    REDUCE_ONLY = "REDUCE_ONLY"
    RECONCILING = "RECONCILING"
    EXECUTION_MODE = "EXECUTION_MODE"
    INVALID_SIGNAL = "INVALID_SIGNAL"
    STALE_SIGNAL = "STALE_SIGNAL"
    DUPLICATE_SIGNAL = "DUPLICATE_SIGNAL"
    MARKET_CLOSED = "MARKET_CLOSED"
    SESSION_CLOSING = "SESSION_CLOSING"
    PRICE_DEVIATION = "PRICE_DEVIATION"
    SPREAD_TOO_WIDE = "SPREAD_TOO_WIDE"
    SYMBOL_MOVE_LIMIT = "SYMBOL_MOVE_LIMIT"
    MIN_ORDER_NOTIONAL = "MIN_ORDER_NOTIONAL"
    MAX_ORDER_NOTIONAL = "MAX_ORDER_NOTIONAL"
    MAX_POSITION = "MAX_POSITION"
    MAX_GROSS_EXPOSURE = "MAX_GROSS_EXPOSURE"
    SECTOR_EXPOSURE = "SECTOR_EXPOSURE"
    GLOBAL_GROSS_EXPOSURE = "GLOBAL_GROSS_EXPOSURE"
    SHORTS_NOT_ALLOWED = "SHORTS_NOT_ALLOWED"
    INSUFFICIENT_BUYING_POWER = "INSUFFICIENT_BUYING_POWER"
    MAX_ORDERS_PER_SYMBOL_DAY = "MAX_ORDERS_PER_SYMBOL_DAY"
    MAX_ORDERS_PER_DAY = "MAX_ORDERS_PER_DAY"
    MAX_ORDERS_PER_EXECUTION = "MAX_ORDERS_PER_EXECUTION"
    RATE_LIMIT = "RATE_LIMIT"
    DUPLICATE_ORDER = "DUPLICATE_ORDER"
    DAILY_LOSS_LIMIT = "DAILY_LOSS_LIMIT"
    MAX_DRAWDOWN = "MAX_DRAWDOWN"
    SESSION_DRAWDOWN = "SESSION_DRAWDOWN"


@dataclass(frozen=True, slots=True)
class Denial:
    """A refusal: the rule, its limit, and the value that broke it."""

    reason: ReasonCode
    limit: Any
    observed: Any


@dataclass(frozen=True, slots=True)
class Cap:
    """A size rule's verdict: at most ``max_qty`` shares fit (``<= 0``: nothing fits).

    ``limit`` and ``observed`` describe the requested order against the rule, for the
    ``gate.reduce`` / ``gate.reject`` log line.
    """

    reason: ReasonCode
    limit: Any
    observed: Any
    max_qty: int
