"""The pre-trade checks: small pure functions over a per-intent context.

Each ``check_*`` returns ``None`` (pass) or a ``Denial``; each ``cap_*`` returns ``None``
(the order fits) or a ``Cap`` saying how many shares would fit. They read only their
arguments; the gate (``risk.gate``) builds the context, runs them in order and acts.

Positions are measured worst case: for a buy, what is held plus every working buy; for a
sell, what is held minus every working sell (working orders include orders the gate has
passed that the order manager has not registered yet). In the order's direction:
``base`` is that signed exposure (negative when the order faces a position it reduces),
``other`` the exposure if only the opposite working orders fill, and ``reducible`` how
many shares the order can trade before it grows |exposure|.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from kernel.events import OrderIntent
from kernel.model import CENT
from risk.config import RiskConfig
from risk.reasons import Cap, Denial, ReasonCode

R = ReasonCode
ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Limits:
    """``RiskConfig`` turned into the types the checks compare against (computed once)."""

    min_notional: Decimal
    max_notional: Decimal
    max_position_pct: Decimal
    max_gross_pct: Decimal
    max_sector_pct: Decimal
    allow_shorts: bool
    stale: timedelta
    stale_secs: float
    max_slip: float
    max_spread_bps: float
    move_limit: float
    max_daily_loss: Decimal
    max_drawdown: Decimal
    session_drawdown: Decimal
    per_symbol_day: int
    per_day: int
    per_execution: int
    bp_cushion: Decimal = Decimal(0)

    @classmethod
    def from_config(cls, cfg: RiskConfig) -> Limits:
        return cls(
            min_notional=cfg.min_order_notional, max_notional=cfg.max_order_notional,
            max_position_pct=_dec(cfg.max_position_pct), max_gross_pct=_dec(cfg.max_gross_exposure),
            max_sector_pct=_dec(cfg.max_sector_exposure), allow_shorts=cfg.allow_shorts,
            stale=timedelta(seconds=cfg.stale_signal_secs), stale_secs=cfg.stale_signal_secs,
            max_slip=cfg.max_slip_pct, max_spread_bps=cfg.max_spread_bps,
            move_limit=cfg.symbol_move_limit, max_daily_loss=_dec(cfg.max_daily_loss),
            max_drawdown=_dec(cfg.max_drawdown), session_drawdown=_dec(cfg.session_drawdown),
            per_symbol_day=cfg.max_orders_per_symbol_day, per_day=cfg.max_orders_per_day,
            per_execution=cfg.max_orders_per_execution,
            bp_cushion=_dec(cfg.buying_power_cushion_pct),
        )


@dataclass(slots=True)
class SymbolBook:
    """One symbol in the gate's book: held shares, working buy/sell shares, mark price."""

    held: int = 0
    buying: int = 0
    selling: int = 0
    mark: Decimal = ZERO

    @property
    def exposure(self) -> int:
        """Worst-case |shares| if all working orders of one side fill."""
        return max(abs(self.held + self.buying), abs(self.held - self.selling))


@dataclass(slots=True)
class Book:
    """The account as the gate sees it, rebuilt when fills, orders or prices change."""

    equity: Decimal = ZERO
    cash: Decimal = ZERO
    gross: Decimal = ZERO
    buying_power: Decimal = ZERO
    symbols: dict[str, SymbolBook] = field(default_factory=dict)
    sector_gross: dict[str, Decimal] = field(default_factory=dict)
    open_sides: set[tuple[str, int]] = field(default_factory=set)
    day_total: int = 0
    symbol_counts: dict[str, int] = field(default_factory=dict)
    daily_loss: Decimal = ZERO
    drawdown: Decimal = ZERO
    session_drawdown: Decimal = ZERO


_EMPTY = SymbolBook()


def _dec(x: float) -> Decimal:
    """The float as written in the config (0.05 -> Decimal('0.05'))."""
    return Decimal(repr(x))


class Ctx:
    """Per-intent context. One instance is reused by the gate (no allocation per order)."""

    __slots__ = ("base", "book", "cur", "emergency", "fprice", "growth", "intent", "now",
                 "other", "price", "qty", "reducible", "sector", "sign", "sym")

    def __init__(self) -> None:
        self.book = Book()
        self.sym = _EMPTY
        self.price = ZERO
        self.qty = self.sign = self.base = self.other = self.cur = 0
        self.reducible = self.growth = 0
        self.fprice = 0.0
        self.emergency = False
        self.sector: str | None = None

    def load(self, intent: OrderIntent, now: datetime, book: Book,
             sector: str | None) -> None:
        self.intent, self.now, self.book, self.sector = intent, now, book, sector
        self.sym = sb = book.symbols.get(intent.symbol, _EMPTY)
        self.price = intent.reference_price
        self.sign = s = intent.side.sign
        if s > 0:
            self.base, self.other = sb.held + sb.buying, abs(sb.held - sb.selling)
        else:
            self.base, self.other = sb.selling - sb.held, abs(sb.held + sb.buying)
        self.cur = max(abs(self.base), self.other)
        self.reducible = max(0, -self.base)
        self.emergency = intent.reduce_only and intent.origin == "emergency"
        self.set_qty(intent.qty)

    def set_qty(self, qty: int) -> None:
        self.qty = qty
        self.growth = max(0, qty - self.reducible)

    @property
    def notional(self) -> Decimal:
        return self.price * self.qty


# -- intent ----------------------------------------------------------------------------


def check_intent_valid(ctx: Ctx) -> Denial | None:
    """Non-positive quantity or a reference price that is not a positive number."""
    p = ctx.price
    if ctx.qty <= 0:
        return Denial(R.INVALID_SIGNAL, "qty > 0", ctx.qty)
    if not p.is_finite() or p <= 0:
        return Denial(R.INVALID_SIGNAL, "reference_price > 0", p)
    return None


def check_signal_valid(ctx: Ctx, universe: set[str] | frozenset[str]) -> Denial | None:
    sig = ctx.intent.signal
    if sig is None:
        return None
    st, px = sig.strength, sig.price
    if not math.isfinite(st) or not -1.0 <= st <= 1.0:
        return Denial(R.INVALID_SIGNAL, "strength in [-1, 1]", st)
    if not math.isfinite(px) or px <= 0:
        return Denial(R.INVALID_SIGNAL, "price > 0", px)
    if sig.symbol not in universe or sig.symbol != ctx.intent.symbol:
        return Denial(R.INVALID_SIGNAL, "known symbol", sig.symbol)
    return None


def check_stale(ctx: Ctx, lim: Limits) -> Denial | None:
    sig = ctx.intent.signal
    if sig is not None and ctx.now - sig.ts > lim.stale:
        return Denial(R.STALE_SIGNAL, lim.stale_secs, (ctx.now - sig.ts).total_seconds())
    return None


def check_duplicate_signal(ctx: Ctx, seen: dict[tuple[str, str], None]) -> Denial | None:
    sig = ctx.intent.signal
    if sig is not None and (sig.source, sig.id) in seen:
        return Denial(R.DUPLICATE_SIGNAL, "unique signal id", sig.id)
    return None


# -- state -----------------------------------------------------------------------------


def check_kill_switch(sources: AbstractSet[str]) -> Denial | None:
    if sources:
        return Denial(R.KILL_SWITCH, "disengaged", ",".join(sorted(sources)))
    return None


def check_reconciling(reconciling: bool) -> Denial | None:
    if reconciling:
        return Denial(R.RECONCILING, "books confirmed", "reconciling")
    return None


def check_halted(ctx: Ctx, halted: bool) -> Denial | None:
    if halted and not ctx.emergency:
        return Denial(R.TRADING_HALTED, "ACTIVE", "HALTED")
    return None


def cap_reduce_only(ctx: Ctx, reducing: bool) -> Cap | None:
    """In REDUCING state (or for a reduce-only intent) only the reducing part may trade."""
    if (reducing or ctx.intent.reduce_only) and ctx.growth > 0:
        return Cap(R.REDUCE_ONLY, ctx.reducible, ctx.qty, ctx.reducible)
    return None


# -- market ----------------------------------------------------------------------------


def check_market_open(open_now: bool, extended: bool) -> Denial | None:
    if not open_now:
        return Denial(R.MARKET_CLOSED, "extended" if extended else "regular", "closed")
    return None


def cap_session_closing(ctx: Ctx, closing: bool) -> Cap | None:
    """While the session is CLOSING no new entries: only the reducing part may trade."""
    if closing and ctx.growth > 0:
        return Cap(R.SESSION_CLOSING, ctx.reducible, ctx.qty, ctx.reducible)
    return None


def check_price_deviation(ctx: Ctx, last: float | None, lim: Limits) -> Denial | None:
    if last is None or not last > 0:
        return None
    dev = abs(ctx.fprice / last - 1.0)
    if dev > lim.max_slip:
        return Denial(R.PRICE_DEVIATION, lim.max_slip, round(dev, 6))
    return None


def check_spread(spread_bps: float | None, lim: Limits) -> Denial | None:
    if spread_bps is not None and spread_bps > lim.max_spread_bps:
        return Denial(R.SPREAD_TOO_WIDE, lim.max_spread_bps, round(spread_bps, 2))
    return None


def check_symbol_move(first_open: float | None, last: float | None, lim: Limits) -> Denial | None:
    if first_open is None or last is None or not first_open > 0:
        return None
    move = abs(last / first_open - 1.0)
    if move > lim.move_limit:
        return Denial(R.SYMBOL_MOVE_LIMIT, lim.move_limit, round(move, 6))
    return None


# -- rate ------------------------------------------------------------------------------


def check_symbol_day(count: int, lim: Limits) -> Denial | None:
    if count >= lim.per_symbol_day:
        return Denial(R.MAX_ORDERS_PER_SYMBOL_DAY, lim.per_symbol_day, count)
    return None


def check_day(count: int, lim: Limits) -> Denial | None:
    if count >= lim.per_day:
        return Denial(R.MAX_ORDERS_PER_DAY, lim.per_day, count)
    return None


def check_execution(count: int, lim: Limits) -> Denial | None:
    if count >= lim.per_execution:
        return Denial(R.MAX_ORDERS_PER_EXECUTION, lim.per_execution, count)
    return None


def check_rate(ctx: Ctx, recent: deque[datetime], window: timedelta,
               rate: float) -> Denial | None:
    """``recent``: the times of the last passes, at most its ``maxlen`` (the burst)."""
    if len(recent) == recent.maxlen and ctx.now - recent[0] < window:
        return Denial(R.RATE_LIMIT, rate, len(recent))
    return None


def check_duplicate_order(ctx: Ctx) -> Denial | None:
    if (ctx.intent.symbol, ctx.sign) in ctx.book.open_sides:
        return Denial(R.DUPLICATE_ORDER, "one open order per symbol and side",
                      f"{ctx.intent.symbol}:{ctx.intent.side}")
    return None


# -- loss ------------------------------------------------------------------------------


def check_daily_loss(ctx: Ctx, lim: Limits) -> Denial | None:
    if ctx.book.daily_loss >= lim.max_daily_loss:
        return Denial(R.DAILY_LOSS_LIMIT, lim.max_daily_loss, _frac(ctx.book.daily_loss))
    return None


def check_drawdown(ctx: Ctx, lim: Limits) -> Denial | None:
    if ctx.book.drawdown >= lim.max_drawdown:
        return Denial(R.MAX_DRAWDOWN, lim.max_drawdown, _frac(ctx.book.drawdown))
    return None


def check_session_drawdown(ctx: Ctx, lim: Limits) -> Denial | None:
    if ctx.book.session_drawdown >= lim.session_drawdown:
        return Denial(R.SESSION_DRAWDOWN, lim.session_drawdown,
                      _frac(ctx.book.session_drawdown))
    return None


# -- size ------------------------------------------------------------------------------


def check_shorts(ctx: Ctx, lim: Limits) -> Denial | None:
    if ctx.sign < 0 and not lim.allow_shorts:
        after = ctx.sym.held - ctx.sym.selling - ctx.qty
        if after < 0:
            return Denial(R.SHORTS_NOT_ALLOWED, 0, after)
    return None


def check_min_notional(ctx: Ctx, lim: Limits) -> Denial | None:
    n = ctx.notional
    if n < lim.min_notional:
        return Denial(R.MIN_ORDER_NOTIONAL, lim.min_notional, n)
    return None


def cap_max_notional(ctx: Ctx, lim: Limits) -> Cap | None:
    n = ctx.notional
    if n > lim.max_notional:
        return Cap(R.MAX_ORDER_NOTIONAL, lim.max_notional, n, int(lim.max_notional // ctx.price))
    return None


def cap_position(ctx: Ctx, lim: Limits) -> Cap | None:
    limit = lim.max_position_pct * ctx.book.equity
    allowed = max(abs(ctx.base), int(limit // ctx.price) if limit > 0 else 0)
    new = abs(ctx.base + ctx.qty)
    if new <= allowed:
        return None
    return Cap(R.MAX_POSITION, _money(limit), _money(new * ctx.price), allowed - ctx.base)


def _cap_exposure(ctx: Ctx, reason: ReasonCode, total: Decimal, pct: Decimal) -> Cap | None:
    return _cap_total(ctx, reason, total, pct * ctx.book.equity)


def _cap_total(ctx: Ctx, reason: ReasonCode, total: Decimal, limit: Decimal) -> Cap | None:
    """Cap the order so ``total`` (which includes this symbol's exposure now) stays
    within ``limit`` dollars; never below what the symbol already has."""
    others = total - ctx.cur * ctx.sym.mark
    room = int((limit - others) // ctx.price) if limit > others else 0
    allowed = max(ctx.cur, room)
    new = max(abs(ctx.base + ctx.qty), ctx.other)
    if new <= allowed:
        return None
    return Cap(reason, _money(limit), _money(others + new * ctx.price), allowed - ctx.base)


def cap_gross(ctx: Ctx, lim: Limits) -> Cap | None:
    return _cap_exposure(ctx, R.MAX_GROSS_EXPOSURE, ctx.book.gross, lim.max_gross_pct)


def cap_global_gross(ctx: Ctx, pct: Decimal, other_equity: Decimal,
                     other_gross: Decimal) -> Cap | None:
    """Gross exposure over every account: this account's book plus the others' totals,
    against ``pct`` of their summed equity."""
    limit = pct * (ctx.book.equity + other_equity)
    return _cap_total(ctx, R.GLOBAL_GROSS_EXPOSURE, ctx.book.gross + other_gross, limit)


def cap_sector(ctx: Ctx, lim: Limits) -> Cap | None:
    if ctx.sector is None:
        return None
    total = ctx.book.sector_gross.get(ctx.sector, ZERO)
    return _cap_exposure(ctx, R.SECTOR_EXPOSURE, total, lim.max_sector_pct)


def buy_unit_cost(limit_price: Decimal | None, reference: Decimal, cushion: Decimal) -> Decimal:
    """What one share of a buy may cost: the higher of its limit and reference price, plus
    the cushion for the move to the fill."""
    price = max(limit_price, reference) if limit_price is not None else reference
    return price * (1 + cushion)


def cap_buying_power(ctx: Ctx, lim: Limits) -> Cap | None:
    """Buys need cash net of working buys; a short sale needs it for the short part."""
    bp = ctx.book.buying_power
    if ctx.sign > 0:
        cost_qty, free = ctx.qty, 0
    else:
        free = max(0, ctx.sym.held - ctx.sym.selling)
        cost_qty = max(0, ctx.qty - free)
    unit = buy_unit_cost(ctx.intent.limit_price, ctx.price, lim.bp_cushion)
    if cost_qty == 0 or cost_qty * unit <= bp:
        return None
    fit = int(bp // unit) if bp > 0 else 0
    return Cap(R.INSUFFICIENT_BUYING_POWER, _money(bp), _money(cost_qty * unit), free + fit)


_BP = Decimal("0.000001")


def _money(v: Decimal) -> Decimal:
    return v.quantize(CENT)


def _frac(v: Decimal) -> Decimal:
    return v.quantize(_BP)
