"""The pre-trade gate: the one handler of ``PlaceOrder``.

No order that breaks a limit reaches a broker, and every refusal is explained. For each
intent the gate runs the checks of ``risk.checks`` in a fixed order: state, intent and
signal, market, rate, loss, size; the first failure is published as ``OrderDenied`` and
logged as ``gate.reject`` with the reason code, the limit and the observed value, and
nothing is sent. A size rule that a smaller order can meet (``MAX_ORDER_NOTIONAL``,
``MAX_POSITION``, ``MAX_GROSS_EXPOSURE``, ``SECTOR_EXPOSURE``,
``INSUFFICIENT_BUYING_POWER``, and ``REDUCE_ONLY``) reduces the order to whole shares,
logging ``gate.reduce``; it denies only when nothing fits or the remainder falls below
``min_order_notional``. A passing order is logged ``gate.pass``, published as
``OrderApproved`` and sent on as ``SubmitOrder``.

Which checks apply:

* every intent: kill switch, reconciling, halted (except the emergency path), execution
  mode, reduce-only, intent validity, market hours, duplicate order;
* intents with a signal: signal validity, staleness, duplicate signal;
* intents that are not ``reduce_only``: the rate limits, shorts, the minimum notional
  and the size caps;
* orders that grow |exposure| (and are not ``reduce_only``): session closing (cut to
  the reducing part), price deviation, spread, symbol move and the loss limits (exits
  stay possible after a loss);

The emergency path is an intent with ``reduce_only=True`` and ``origin="emergency"``
(only ``risk.emergency.liquidate`` makes them): it passes TRADING_HALTED and EMERGENCY
mode, and may trade in extended hours, but never a kill switch nor RECONCILING.

The session phase comes from ``SessionPhaseChanged`` (``on_session_phase``): CLOSING
turns on SESSION_CLOSING until the next phase change.

Cost: the account view (equity, exposure, working orders) is rebuilt only when a fill,
an order event or a bar batch invalidates it, and updated in place by each pass, so a
batch of intents pays for it once. Wire ``on_bars``, ``on_order_event``,
``on_position_changed`` (see ``risk.wiring``), or the limits are checked on stale books.

Events published: ``OrderDenied``, ``OrderApproved``. Commands sent: ``SubmitOrder``.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Protocol

import structlog

from kernel.clock import Clock
from kernel.events import (
    BarBatch,
    Event,
    OrderApproved,
    OrderDenied,
    OrderEvent,
    OrderIntent,
    OrderSubmitted,
    PlaceOrder,
    PositionChanged,
    SessionPhase,
    SessionPhaseChanged,
    SubmitOrder,
)
from kernel.model import Position
from kernel.orders import Order
from kernel.time import NEW_YORK
from kernel.views import Totals
from risk import checks as ck
from risk.config import RiskConfig
from risk.market import Market, MarketHours
from risk.marks import EquityMarks
from risk.modes import ExecutionMode, ExecutionModes
from risk.reasons import Cap, Denial, ReasonCode
from risk.state import TradingState, TradingStatus

log = structlog.get_logger("risk.gate")

ZERO = Decimal(0)
_BATCH_MEMORY = 256


class PortfolioView(Protocol):
    cash: Decimal
    positions: dict[str, Position]

    def price(self, symbol: str) -> Decimal | None: ...


class OrderBook(Protocol):
    orders: dict[str, Order]

    def open_orders(self) -> list[Order]: ...

    def orders_today(self, symbol: str | None = None) -> int: ...


class Gate:
    """Pre-trade risk gate. ``execute`` is the ``PlaceOrder`` handler."""

    def __init__(
        self,
        cfg: RiskConfig,
        *,
        clock: Clock,
        portfolio: PortfolioView,
        orders: OrderBook,
        state: TradingStatus,
        publish: Callable[[Event], None],
        send: Callable[[SubmitOrder], None],
        market: Market | None = None,
        modes: ExecutionModes | None = None,
        marks: EquityMarks | None = None,
        account: str = "",
        totals: Totals | None = None,
        global_gross_pct: float | None = None,
    ) -> None:
        self._cfg = cfg
        self._lim = ck.Limits.from_config(cfg)
        self._clock = clock
        self._portfolio = portfolio
        self._orders = orders
        self._state = state
        self._publish = publish
        self._send = send
        self.market: Market = market if market is not None else MarketHours()
        self.modes = modes if modes is not None else ExecutionModes(clock=clock)
        self.marks = marks if marks is not None else EquityMarks()
        # Global limits over every account (several accounts in one daemon).
        self.account = account
        self._totals = totals if global_gross_pct is not None else None
        self._global_gross = Decimal(repr(global_gross_pct)) if global_gross_pct else ZERO
        self._sectors = cfg.sector_map
        self.universe: set[str] = set(cfg.symbols)
        self._last: dict[str, float] = {}
        self._first_open: dict[str, float] = {}
        self._spread_bps: dict[str, float] = {}
        self._seen: dict[tuple[str, str], None] = {}
        self._seen_max = cfg.signal_memory
        self._batches: dict[str, int] = {}
        burst = max(1, int(cfg.max_orders_per_second))
        self._recent: deque[datetime] = deque(maxlen=burst)
        self._window = timedelta(seconds=burst / cfg.max_orders_per_second)
        self._in_transit: dict[str, OrderIntent] = {}
        self._book: ck.Book | None = None
        self._day = ""
        self._day_hi = datetime.min.replace(tzinfo=UTC)
        self._ctx = ck.Ctx()
        self.reductions: list[tuple[Cap, int, int]] = []
        self._approved = False
        self._closing = False  # the session is CLOSING: no new entries
        self.passed = 0
        self.denied: dict[str, int] = {}

    # -- event handlers ----------------------------------------------------------------

    def on_bars(self, batch: BarBatch) -> None:
        """Last closes (price deviation), the day's first opens (symbol move), universe."""
        self._roll_day(batch.ts)
        closes = batch.close.tolist()
        self._last.update(zip(batch.symbols, closes, strict=True))
        first = self._first_open
        for sym, o in zip(batch.symbols, batch.open.tolist(), strict=True):
            if sym not in first and not math.isnan(o):
                first[sym] = o
        self.universe.update(batch.symbols)
        self._book = None

    def on_order_event(self, event: OrderEvent) -> None:
        self._in_transit.pop(event.client_order_id, None)
        if not isinstance(event, OrderSubmitted):
            self._book = None

    def on_position_changed(self, event: PositionChanged) -> None:
        self._book = None

    def on_session_phase(self, event: SessionPhaseChanged) -> None:
        """CLOSING refuses new entries (SESSION_CLOSING) until the phase changes."""
        self._closing = event.phase is SessionPhase.CLOSING

    def roll_day(self, now: datetime) -> None:
        """Start ``now``'s trading day: the day's first opens (SYMBOL_MOVE_LIMIT) are
        forgotten and the account view is rebuilt (the session lifecycle calls this at
        each new session; evaluation also rolls by itself past midnight)."""
        self._roll_day(now)
        self._book = None

    def invalidate(self) -> None:
        """Rebuild the account view before the next intent (after a restore, etc.)."""
        self._book = None

    def set_quote(self, symbol: str, bid: float, ask: float) -> None:
        """Latest quote; enables SPREAD_TOO_WIDE for the symbol."""
        mid = (bid + ask) / 2
        if mid > 0 and ask >= bid > 0:
            self._spread_bps[symbol] = (ask - bid) / mid * 1e4
        else:
            self._spread_bps.pop(symbol, None)

    # -- the command -------------------------------------------------------------------

    def execute(self, cmd: PlaceOrder) -> None:
        intent = cmd.intent
        self.reductions.clear()
        result = self.evaluate(intent)
        for cap, old, new in self.reductions:
            log.info("gate.reduce", rule=str(cap.reason), original_qty=old, new_qty=new,
                     limit=str(cap.limit), observed=str(cap.observed), symbol=intent.symbol,
                     client_order_id=intent.client_order_id, signal_id=_sid(intent))
        if isinstance(result, Denial):
            self._deny(intent, result)
            return
        final = intent if result == intent.qty else dataclasses.replace(intent, qty=result)
        if self.modes.needs_approval(final) and not self._approved:
            pid = self.modes.park(final)
            self._deny(final, Denial(ReasonCode.EXECUTION_MODE, str(self.modes.mode),
                                     f"awaiting_approval:{pid}"))
            return
        self._accept(final, intent.qty)

    def evaluate(self, intent: OrderIntent) -> Denial | int:
        """Run every check; a ``Denial`` or the quantity that may be sent.

        Side effects are limited to remembering the signal id (duplicates) and, on a
        reduction, appending to ``reductions``; passing is recorded by ``execute``.
        """
        now = self._clock.now()
        if now >= self._day_hi:
            self._roll_day(now)
        book = self._book
        if book is None:
            book = self._book = self._rebuild(now)
        ctx = self._ctx
        ctx.load(intent, now, book, self._sectors.get(intent.symbol))
        st = self._state
        self._approved = self.modes.take_approved(intent.client_order_id)
        d = (ck.check_kill_switch(st.kill_sources)
             or ck.check_reconciling(st.reconciling)
             or ck.check_halted(ctx, st.state is TradingState.HALTED)
             or self._check_mode(ctx)
             or ck.check_intent_valid(ctx))
        if d is None:
            d = self._apply_cap(ctx, ck.cap_reduce_only(ctx, st.state is TradingState.REDUCING))
        if d is None and intent.signal is not None:
            d = self._check_signal(ctx)
        if d is None:
            d = self._check_market(ctx)
        if d is None and not intent.reduce_only:
            d = self._check_rate(ctx) or self._check_loss(ctx) or self._check_size(ctx)
        if intent.signal is not None:
            # Seen is seen, whatever the outcome and whichever check refused it (a halt,
            # the kill switch, reconciling, reduce-only included): a refused signal is not
            # retried by resending.
            self._remember(intent.signal)
        return d if d is not None else ctx.qty

    # -- check groups ------------------------------------------------------------------

    def _check_mode(self, ctx: ck.Ctx) -> Denial | None:
        mode = self.modes.mode
        if mode is ExecutionMode.RESEARCH or (mode is ExecutionMode.EMERGENCY
                                              and not ctx.emergency):
            return Denial(ReasonCode.EXECUTION_MODE, "sending enabled", str(mode))
        return None

    def _check_signal(self, ctx: ck.Ctx) -> Denial | None:
        d = ck.check_signal_valid(ctx, self.universe) or ck.check_stale(ctx, self._lim)
        if d is None and not self._approved:
            d = ck.check_duplicate_signal(ctx, self._seen)
        return d

    def _check_market(self, ctx: ck.Ctx) -> Denial | None:
        extended = self._cfg.extended_hours or ctx.emergency
        d = ck.check_market_open(self.market.is_open(ctx.now, extended=extended), extended)
        if d is None:
            d = self._apply_cap(ctx, ck.cap_session_closing(ctx, self._closing))
        if d is None and ctx.growth > 0 and not ctx.intent.reduce_only:
            sym = ctx.intent.symbol
            last = self._last.get(sym)
            ctx.fprice = float(ctx.price)
            d = (ck.check_price_deviation(ctx, last, self._lim)
                 or ck.check_spread(self._spread_bps.get(sym), self._lim)
                 or ck.check_symbol_move(self._first_open.get(sym), last, self._lim))
        return d or ck.check_duplicate_order(ctx)

    def _check_rate(self, ctx: ck.Ctx) -> Denial | None:
        lim, intent = self._lim, ctx.intent
        d = (ck.check_symbol_day(self._symbol_count(ctx.book, intent.symbol), lim)
             or ck.check_day(ctx.book.day_total, lim))
        if d is None and intent.batch_id is not None:
            d = ck.check_execution(self._batches.get(intent.batch_id, 0), lim)
        return d or ck.check_rate(ctx, self._recent, self._window,
                                 self._cfg.max_orders_per_second)

    def _check_loss(self, ctx: ck.Ctx) -> Denial | None:
        if ctx.growth <= 0:
            return None
        lim = self._lim
        return (ck.check_daily_loss(ctx, lim) or ck.check_drawdown(ctx, lim)
                or ck.check_session_drawdown(ctx, lim))

    def _check_size(self, ctx: ck.Ctx) -> Denial | None:
        lim = self._lim
        d = ck.check_shorts(ctx, lim) or ck.check_min_notional(ctx, lim)
        if d is not None:
            return d
        qty = ctx.qty
        d = (self._apply_cap(ctx, ck.cap_max_notional(ctx, lim))
             or self._apply_cap(ctx, ck.cap_position(ctx, lim))
             or self._apply_cap(ctx, ck.cap_gross(ctx, lim))
             or self._apply_cap(ctx, ck.cap_sector(ctx, lim))
             or self._apply_cap(ctx, self._cap_global(ctx))
             or self._apply_cap(ctx, ck.cap_buying_power(ctx, self._lim)))
        if d is None and ctx.qty != qty:
            d = ck.check_min_notional(ctx, lim)
        return d

    def _cap_global(self, ctx: ck.Ctx) -> Cap | None:
        if self._totals is None:
            return None
        equity, gross = self._totals.others(self.account)
        return ck.cap_global_gross(ctx, self._global_gross, equity, gross)

    def exposure(self) -> tuple[Decimal, Decimal]:
        """(equity, gross exposure with working orders), as the gate's limits see them."""
        now = self._clock.now()
        if now >= self._day_hi:
            self._roll_day(now)
        book = self._book
        if book is None:
            book = self._book = self._rebuild(now)
        return book.equity, book.gross

    def _apply_cap(self, ctx: ck.Ctx, cap: Cap | None) -> Denial | None:
        if cap is None:
            return None
        if cap.max_qty <= 0:
            return Denial(cap.reason, cap.limit, cap.observed)
        self.reductions.append((cap, ctx.qty, cap.max_qty))
        ctx.set_qty(cap.max_qty)
        return None

    # -- outcomes ----------------------------------------------------------------------

    def _deny(self, intent: OrderIntent, d: Denial) -> None:
        reason = str(d.reason)
        self.denied[reason] = self.denied.get(reason, 0) + 1
        log.warning("gate.reject", reason=reason, limit=_s(d.limit), observed=_s(d.observed),
                    symbol=intent.symbol, side=str(intent.side), qty=intent.qty,
                    client_order_id=intent.client_order_id, signal_id=_sid(intent),
                    origin=intent.origin)
        self._publish(OrderDenied(intent=intent, reason=reason, limit=d.limit,
                                  observed=d.observed))

    def _accept(self, intent: OrderIntent, original_qty: int) -> None:
        self.passed += 1
        self._record_pass(intent)
        log.info("gate.pass", symbol=intent.symbol, side=str(intent.side), qty=intent.qty,
                 original_qty=original_qty, notional=str(intent.notional),
                 client_order_id=intent.client_order_id, signal_id=_sid(intent),
                 origin=intent.origin)
        self._publish(OrderApproved(intent=intent, original_qty=original_qty))
        self._send(SubmitOrder(intent))

    def _record_pass(self, intent: OrderIntent) -> None:
        """Update the account view in place, as if the order were already working."""
        now = self._ctx.now
        self._in_transit[intent.client_order_id] = intent
        book = self._book
        assert book is not None
        sb = book.symbols.get(intent.symbol)
        if sb is None:
            # Marked as a rebuild would mark it (last close first): an order priced below
            # the close must not make the symbol's exposure look smaller within a batch.
            mark = self._portfolio.price(intent.symbol) or intent.reference_price
            sb = book.symbols[intent.symbol] = ck.SymbolBook(mark=mark)
        self._add_working(book, intent.symbol, sb, intent)
        if not intent.reduce_only:
            book.day_total += 1
            book.symbol_counts[intent.symbol] = self._symbol_count(book, intent.symbol) + 1
            if intent.batch_id is not None:
                self._count_batch(intent.batch_id)
            self._recent.append(now)

    def _add_working(self, book: ck.Book, symbol: str, sb: ck.SymbolBook,
                     intent: OrderIntent | Order) -> None:
        price = intent.limit_price or intent.reference_price or sb.mark
        before = sb.exposure * sb.mark
        if intent.side.sign > 0:
            sb.buying += _leaves(intent)
            book.buying_power -= _leaves(intent) * ck.buy_unit_cost(
                intent.limit_price, intent.reference_price or price, self._lim.bp_cushion)
        else:
            sb.selling += _leaves(intent)
        # Value this symbol at the newest order price: pessimistic for a rising price.
        sb.mark = max(sb.mark, price)
        delta = sb.exposure * sb.mark - before
        book.gross += delta
        sector = self._sectors.get(symbol)
        if sector is not None:
            book.sector_gross[sector] = book.sector_gross.get(sector, ZERO) + delta
        book.open_sides.add((symbol, intent.side.sign))

    # -- the account view --------------------------------------------------------------

    def _rebuild(self, now: datetime) -> ck.Book:
        pf = self._portfolio
        book = ck.Book(cash=pf.cash)
        equity = pf.cash
        for sym, pos in pf.positions.items():
            if not pos.qty:
                continue
            mark = pf.price(sym) or pos.avg_price
            book.symbols[sym] = ck.SymbolBook(held=pos.qty, mark=mark)
            equity += pos.qty * mark
        # A cash account: what can be spent is cash, less the buys already working.
        book.equity, book.buying_power = equity, pf.cash
        for sym, sb in book.symbols.items():
            exp = sb.exposure * sb.mark
            book.gross += exp
            sector = self._sectors.get(sym)
            if sector is not None:
                book.sector_gross[sector] = book.sector_gross.get(sector, ZERO) + exp
        known = self._orders.orders
        working: list[OrderIntent | Order] = list(self._orders.open_orders())
        transit = [i for cid, i in self._in_transit.items() if cid not in known]
        self._in_transit = {i.client_order_id: i for i in transit}
        working.extend(transit)
        for o in working:
            wb = book.symbols.get(o.symbol)
            if wb is None:
                wb = book.symbols[o.symbol] = ck.SymbolBook(
                    mark=pf.price(o.symbol) or o.reference_price or ZERO)
            self._add_working(book, o.symbol, wb, o)
        book.day_total = self._orders.orders_today() + len(transit)
        self.marks.observe(equity, self._day)
        book.daily_loss, book.drawdown, book.session_drawdown = self.marks.losses(equity)
        return book

    def _symbol_count(self, book: ck.Book, symbol: str) -> int:
        n = book.symbol_counts.get(symbol)
        if n is None:
            n = self._orders.orders_today(symbol) + sum(
                1 for i in self._in_transit.values() if i.symbol == symbol)
            book.symbol_counts[symbol] = n
        return n

    def _count_batch(self, batch_id: str) -> None:
        b = self._batches
        b[batch_id] = b.get(batch_id, 0) + 1
        if len(b) > _BATCH_MEMORY:
            del b[next(iter(b))]

    def _remember(self, sig: Any) -> None:
        seen = self._seen
        seen[(sig.source, sig.id)] = None
        if len(seen) > self._seen_max:
            del seen[next(iter(seen))]

    def _roll_day(self, ts: datetime) -> None:
        if ts < self._day_hi:
            return
        d = ts.astimezone(NEW_YORK).date()
        self._day = d.isoformat()
        self._day_hi = datetime.combine(d + timedelta(days=1), time(0), NEW_YORK)
        self._first_open.clear()
        self._book = None

    def stats(self) -> Mapping[str, Any]:
        return {"passed": self.passed, "denied": dict(self.denied),
                "in_transit": len(self._in_transit)}


def _leaves(o: OrderIntent | Order) -> int:
    return o.leaves_qty if isinstance(o, Order) else o.qty


def _sid(intent: OrderIntent) -> str | None:
    return intent.signal.id if intent.signal is not None else None


def _s(v: Any) -> Any:
    return str(v) if isinstance(v, Decimal) else v
