"""Property: whatever the sequence of signals, intents, prices, fills, clock jumps and
operator state changes, no order that reaches the paper broker breaks a limit.

The account is built by ``engine.system.build_system``, as the daemon builds it, around
the real ``PaperBroker`` (no store): each bar batch reaches the broker first and fills
its working orders (market orders at the bar's open, with slippage, partially when the
volume cap binds); its reports go through the order manager to the portfolio. Signal
batches go through the system's own sizing. ``AuditedPaperBroker`` keeps, for every
order it is handed, the broker's own books at that moment (``account()``,
``open_orders()``).

After every step the test checks each new receipt against every limit the gate
promises, recomputed by ``Model`` from those books, the test's own record of prices,
clock and operator state (never with the gate's functions), and checks that the
daemon's portfolio equals the broker's positions and cash.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brokers.config import PaperConfig
from kernel.events import (
    KillSwitchSource,
    OrderApproved,
    OrderDenied,
    OrderIntent,
    ReconciliationChanged,
    SignalBatch,
)
from kernel.model import OrderSide, Signal
from risk.config import RiskConfig
from risk.market import MarketHours
from risk.state import TradingState
from tests.risk.harness import PRICES, Harness, Receipt

SYMS = ["AAPL", "MSFT", "XOM", "CVX", "F"]
_SECTORS = {"XOM": "energy", "CVX": "energy"}
RISK = [
    # Tight exposure and rate limits.
    RiskConfig(max_orders_per_second=5, max_orders_per_execution=3, max_gross_exposure=0.12,
               sector_map=_SECTORS, max_sector_exposure=0.08, max_orders_per_symbol_day=2,
               max_orders_per_day=3),
    # Big positions: buying power and the loss limits bind.
    RiskConfig(max_position_pct=0.5, max_gross_exposure=1.5, max_order_notional=Decimal(60_000),
               max_daily_loss=0.005, max_drawdown=0.01, session_drawdown=0.5,
               sector_map=_SECTORS, max_sector_exposure=1.0, max_orders_per_second=3),
    # The order notional, per-execution and per-symbol/day counts and the drawdown from
    # the peak bind first.
    RiskConfig(max_position_pct=0.3, max_gross_exposure=1.0, max_order_notional=Decimal(3000),
               max_orders_per_execution=2, max_orders_per_symbol_day=1, max_daily_loss=0.5,
               max_drawdown=0.001, session_drawdown=0.5, symbol_move_limit=0.5),
    # The session drawdown binds first.
    RiskConfig(max_position_pct=0.3, max_gross_exposure=1.0, max_daily_loss=0.5,
               max_drawdown=0.5, session_drawdown=0.004, symbol_move_limit=0.5,
               max_orders_per_second=2),
]
PAPER = {
    "exact": PaperConfig(),
    "slippage": PaperConfig(slippage_bps=Decimal(25)),
    "partial": PaperConfig(max_fill_volume_pct=0.1),
    "slippage+partial": PaperConfig(slippage_bps=Decimal(10), max_fill_volume_pct=0.05),
}
EXAMPLES = 2000

# The market, independently of the gate: XNYS regular hours (09:30-16:00 New York,
# 13:00 on early-close days), extended 04:00 to close + 4 h, for the dates a run reaches.
NY = ZoneInfo("America/New_York")
_HOLIDAYS = {date(2024, 7, 4), date(2024, 9, 2)}
_EARLY_CLOSE = {date(2024, 7, 3)}
_HORIZON = datetime(2024, 10, 1, tzinfo=UTC)
_MARKET = MarketHours()  # shared: its calendar takes a second to load


def market_open(ts: datetime, *, extended: bool) -> bool:
    assert ts < _HORIZON, "extend the test's calendar"
    local = ts.astimezone(NY)
    d = local.date()
    if d.weekday() >= 5 or d in _HOLIDAYS:
        return False
    close = time(13) if d in _EARLY_CLOSE else time(16)
    lo, hi = (time(4), time(close.hour + 4)) if extended else (time(9, 30), close)
    return lo <= local.time() < hi


def next_open(ts: datetime, minutes: int) -> datetime:
    """``minutes`` after the next regular open strictly after ``ts``'s New York date."""
    d = ts.astimezone(NY).date() + timedelta(days=1)
    while d.weekday() >= 5 or d in _HOLIDAYS:
        d += timedelta(days=1)
    return datetime.combine(d, time(9, 30), NY).astimezone(UTC) + timedelta(minutes=minutes)


def next_midnight(ts: datetime, seconds: int) -> datetime:
    d = ts.astimezone(NY).date() + timedelta(days=1)
    return datetime.combine(d, time(0), NY).astimezone(UTC) + timedelta(seconds=seconds)


sym = st.sampled_from(SYMS)
strength = st.one_of(st.floats(0.1, 1.0), st.floats(-1.0, 1.0),
                     st.sampled_from([float("nan"), 1.2, -1.2]))
signal = st.tuples(sym, strength, st.floats(0.996, 1.004) | st.floats(0.98, 1.02),
                   st.sampled_from([0, 0, 5, 119, 121, 300]))
signals = st.tuples(st.just("signals"), st.lists(signal, min_size=1, max_size=6),
                    st.none() | st.integers(0, 50))  # reuse: resend an earlier signal id
intent = st.tuples(st.just("intent"), sym, st.sampled_from([OrderSide.BUY, OrderSide.SELL]),
                   st.integers(0, 400), st.sampled_from(["plain", "reduce", "emergency"]),
                   st.floats(0.996, 1.004) | st.floats(0.98, 1.02),
                   st.none() | st.floats(0.97, 1.03))  # a limit price, or market
bars = st.tuples(st.just("bars"), st.lists(st.tuples(sym, st.floats(0.9, 1.1)), max_size=5),
                 st.floats(0.98, 1.02), st.sampled_from([1e6, 1e3, 100.0, 10.0]))
A, R, H = TradingState.ACTIVE, TradingState.REDUCING, TradingState.HALTED
STEPS: dict[str, tuple[int, st.SearchStrategy[tuple[Any, ...]]]] = {
    # kind: (weight, strategy). Signal batches through the real sizer, direct intents and
    # bar batches (the paper broker fills on these) come more often than clock jumps
    # and operator state changes, so that orders keep reaching the broker.
    "signals": (5, signals),
    "intent": (4, intent),
    "bars": (5, bars),
    "clock": (1, st.tuples(st.just("clock"),
                           st.sampled_from([0.2, 1, 30, 130, 3600, 6 * 3600, 86_400]))),
    "midnight": (1, st.tuples(st.just("midnight"), st.integers(0, 6 * 3600))),  # NY day
    "open": (2, st.tuples(st.just("open"), st.integers(0, 420))),  # the next session
    "cancel": (1, st.tuples(st.just("cancel"), st.integers(0, 9))),
    "state": (2, st.tuples(st.just("state"), st.sampled_from([A, A, R, H]))),
    "kill": (1, st.tuples(st.just("kill"), st.just("file"))),
    "reconcile": (1, st.tuples(st.just("reconcile"),
                               st.sampled_from(["recovering", "ready", "ready"]))),
}
step = st.sampled_from([k for k, (w, _) in STEPS.items() for _ in range(w)]).flatmap(
    lambda kind: STEPS[kind][1])


@dataclass
class Model:
    """The test's own record: last prices, operator state, what the broker took in."""

    cfg: RiskConfig
    last: dict[str, Decimal] = field(default_factory=lambda: {
        s: Decimal(repr(p)) for s, p in PRICES.items()})
    state: TradingState = TradingState.ACTIVE
    kill: bool = False
    reconciling: bool = False
    equity: Decimal = Decimal(100_000)
    # Equity references, observed at every gate decision (the equity only moves on bars).
    day: str = ""
    sod: Decimal | None = None
    peak: Decimal | None = None
    session: Decimal | None = None
    per_symbol: dict[tuple[str, str], int] = field(default_factory=dict)
    per_day: dict[str, int] = field(default_factory=dict)
    batches: dict[str, int] = field(default_factory=dict)
    times: list[datetime] = field(default_factory=list)
    offered: set[tuple[str, str]] = field(default_factory=set)
    checked: int = 0
    signal_ids: list[str] = field(default_factory=list)
    intents: dict[str, OrderIntent] = field(default_factory=dict)

    def observe(self, now: datetime) -> None:
        day = now.astimezone(NY).date().isoformat()
        if day != self.day:
            self.day, self.sod = day, self.equity
        if self.session is None:
            self.session = self.equity
        if self.peak is None or self.equity > self.peak:
            self.peak = self.equity


def _d(x: float) -> Decimal:
    return Decimal(repr(x))


def _down(ref: Decimal | None, eq: Decimal) -> Decimal:
    return Decimal(0) if ref is None or ref <= 0 else (ref - eq) / ref


def check_receipt(m: Model, r: Receipt, sig_before: set[tuple[str, str]],
                  slip_bps: Decimal) -> None:
    """Every limit for the order in ``r``, from the broker's books just before it."""
    i, now, cfg, p = r.intent, r.now, m.cfg, r.intent.reference_price
    acct = r.account
    emergency = i.reduce_only and i.origin == "emergency"
    assert not m.kill and not m.reconciling
    assert m.state is not TradingState.HALTED or emergency
    assert market_open(now, extended=cfg.extended_hours or emergency)
    assert i.qty > 0 and p > 0
    if r.rejected is not None:
        # The gate's buying power prices a buy at its reference price; the broker
        # reserves the slippage on top. Nothing else may be refused.
        assert slip_bps > 0 and "buying power" in r.rejected, r.rejected
    opens = [o for o in r.open_orders if o.qty > o.filled_qty]
    held_by = {pos.symbol: pos.qty for pos in acct.positions}
    held = held_by.get(i.symbol, 0)

    def working(s: str, side: OrderSide) -> int:
        return sum(o.qty - o.filled_qty for o in opens if o.symbol == s and o.side is side)

    buys, sells = working(i.symbol, OrderSide.BUY), working(i.symbol, OrderSide.SELL)
    assert not any(o.symbol == i.symbol and o.side is i.side for o in opens), "duplicate order"
    base = held + buys if i.side is OrderSide.BUY else sells - held
    other = abs(held - sells) if i.side is OrderSide.BUY else abs(held + buys)
    grows = i.qty > max(0, -base)
    if m.state is TradingState.REDUCING or i.reduce_only:
        assert not grows, "reduce-only"
    if i.side is OrderSide.SELL and not cfg.allow_shorts:
        assert held - sells - i.qty >= 0, "short"
    if i.signal is not None:
        key = (i.signal.source, i.signal.id)
        assert key not in sig_before, "duplicate signal"
        assert now - i.signal.ts <= timedelta(seconds=cfg.stale_signal_secs), "stale"
        assert -1 <= i.signal.strength <= 1
    if i.reduce_only:
        return
    assert cfg.min_order_notional <= p * i.qty <= cfg.max_order_notional, "order notional"
    eq = acct.equity
    new = abs(base + i.qty)
    assert new * p <= _d(cfg.max_position_pct) * eq or new <= abs(base), "position"
    cur, new_exp = max(abs(base), other), max(new, other)

    def exposure(syms: list[str]) -> Decimal:
        total = Decimal(0)
        for s in syms:
            if s != i.symbol:
                q = held_by.get(s, 0)
                worst = max(abs(q + working(s, OrderSide.BUY)), abs(q - working(s, OrderSide.SELL)))
                total += worst * m.last[s]
        return total

    gross = exposure(SYMS) + new_exp * p
    assert gross <= _d(cfg.max_gross_exposure) * eq or new_exp <= cur, "gross exposure"
    sector = cfg.sector_map.get(i.symbol)
    if sector is not None:
        peers = [s for s, sec in cfg.sector_map.items() if sec == sector]
        assert (exposure(peers) + new_exp * p <= _d(cfg.max_sector_exposure) * eq
                or new_exp <= cur), "sector exposure"
    if i.side is OrderSide.BUY:
        reserved = sum(((o.qty - o.filled_qty) * (o.limit_price or m.intents[
            o.client_order_id].reference_price) for o in opens if o.side is OrderSide.BUY),
            Decimal(0))
        assert i.qty * p <= acct.cash - reserved, "buying power"
    if grows:
        assert abs(float(p) / float(m.last[i.symbol]) - 1) <= cfg.max_slip_pct + 1e-12
        assert _down(m.sod, eq) < _d(cfg.max_daily_loss), "daily loss"
        assert _down(m.peak, eq) < _d(cfg.max_drawdown), "drawdown"
        assert _down(m.session, eq) < _d(cfg.session_drawdown), "session drawdown"
    day = now.astimezone(NY).date().isoformat()
    m.per_symbol[day, i.symbol] = m.per_symbol.get((day, i.symbol), 0) + 1
    m.per_day[day] = m.per_day.get(day, 0) + 1
    assert m.per_symbol[day, i.symbol] <= cfg.max_orders_per_symbol_day, "per symbol/day"
    assert m.per_day[day] <= cfg.max_orders_per_day, "per day"
    if i.batch_id is not None:
        m.batches[i.batch_id] = m.batches.get(i.batch_id, 0) + 1
        assert m.batches[i.batch_id] <= cfg.max_orders_per_execution, "per execution"
    m.times.append(now)
    assert sum(1 for t in m.times if now - t < timedelta(seconds=1)) <= cfg.max_orders_per_second


async def check_books(h: Harness, m: Model, start: datetime) -> None:
    """The daemon's books equal the broker's; the broker's orders and fills agree."""
    b = h.broker
    acct = await b.account()
    assert h.portfolio.cash == acct.cash
    mine = {s: (p.qty, p.avg_price) for s, p in h.portfolio.positions.items() if p.qty}
    assert mine == {p.symbol: (p.qty, p.avg_price) for p in await b.positions()}
    assert h.portfolio.equity() == acct.equity
    fills = await b.fills_since(start)
    for r in b.receipts:
        cid = r.intent.client_order_id
        order, known = await b.get_order(cid), h.orders.orders[cid]
        if r.rejected is not None:
            assert order is None
            continue
        assert order is not None and order.qty == r.intent.qty
        done = sum(f.qty for f in fills if f.client_order_id == cid)
        assert order.filled_qty == done == known.filled_qty
        assert order.status == known.status
    if not m.cfg.allow_shorts:
        assert all(p.qty > 0 for p in acct.positions)


async def run(cfg: RiskConfig, paper: PaperConfig, steps: list[tuple[Any, ...]]) -> Model:
    async with Harness(cfg, market=_MARKET, paper=paper) as h:
        return await _run(h, cfg, paper, steps)


async def _run(h: Harness, cfg: RiskConfig, paper: PaperConfig,
               steps: list[tuple[Any, ...]]) -> Model:
    m = Model(cfg)
    m.equity = (await h.broker.account()).equity
    h.bus.subscribe(OrderApproved, lambda e: m.observe(h.clock.now()))
    h.bus.subscribe(OrderDenied, lambda e: m.observe(h.clock.now()))
    # Every signal offered to the gate, in order, and where each approval falls in it:
    # an approved order must not carry a signal offered before.
    offered: list[tuple[str, str] | None] = []
    approved_at: dict[str, int] = {}

    def decided(e: OrderApproved | OrderDenied) -> None:
        if isinstance(e, OrderApproved):
            approved_at[e.intent.client_order_id] = len(offered)
        offered.append(_key(e.intent))

    h.bus.subscribe(OrderApproved, decided)
    h.bus.subscribe(OrderDenied, decided)
    start = h.clock.now()
    for n, s in enumerate(steps):
        await _step(h, m, n, s)
        await h.orders.drained()
        await check_books(h, m, start)
        for r in h.broker.receipts[m.checked:]:
            m.intents[r.intent.client_order_id] = r.intent
            seen = offered[:approved_at[r.intent.client_order_id]]
            check_receipt(m, r, {e for e in seen if e is not None}, paper.slippage_bps)
            m.checked += 1
    return m


def _key(i: OrderIntent) -> tuple[str, str] | None:
    return None if i.signal is None else (i.signal.source, i.signal.id)


async def _step(h: Harness, m: Model, n: int, s: tuple[Any, ...]) -> None:
    kind, now = s[0], h.clock.now()
    if kind == "signals":
        _, specs, reuse = s
        sigs = []
        for k, (sy, strength, f, age) in enumerate(specs):
            sid = f"g{n}.{k}"
            if reuse is not None and k == 0 and m.signal_ids:
                sid = m.signal_ids[reuse % len(m.signal_ids)]
            m.signal_ids.append(sid)
            sigs.append(Signal(sid, sy, strength, float(m.last[sy]) * f,
                               now - timedelta(seconds=age), "prop"))
        h.system.on_signals(SignalBatch(ts=now, source="prop", signals=tuple(sigs)))
    elif kind == "intent":
        _, sy, side, qty, how, f, lim = s
        last = float(m.last[sy])
        h.place(h.intent(sy, qty, side=side, price=round(last * f, 2), signal=False,
                         batch_id=None, reduce_only=how != "plain",
                         origin="emergency" if how == "emergency" else "operator",
                         limit_price=None if lim is None else _d(round(last * lim, 2))))
    elif kind == "bars":
        _, moves, gap, volume = s
        opens = {k: float(v) * gap for k, v in m.last.items() if k in SYMS}
        for sy, f in moves:
            m.last[sy] = _d(round(float(m.last[sy]) * f, 2))
        h.bars({k: float(v) for k, v in m.last.items() if k in SYMS},
               opens={k: round(v, 2) for k, v in opens.items()}, volume=volume)
        m.equity = (await h.broker.account()).equity
    elif kind == "clock":
        h.clock.advance(s[1])
    elif kind == "midnight":
        h.clock.set(next_midnight(now, s[1]))
    elif kind == "open":
        h.clock.set(next_open(now, s[1]))
    elif kind == "cancel":
        working = await h.broker.open_orders()
        if working:
            await h.broker.cancel(working[s[1] % len(working)].client_order_id)
    elif kind == "state":
        m.state = s[1]
        if s[1] is not TradingState.HALTED:
            m.kill = False  # a resume clears the file/signal kill switches
        h.state.request(s[1], who="operator", why="property")
    elif kind == "kill":
        m.kill, m.state = True, TradingState.HALTED
        h.state.request(TradingState.HALTED, who="kill switch", why="property",
                        kill_switch=KillSwitchSource(s[1]))
    elif kind == "reconcile":
        m.reconciling = s[1] == "recovering"
        h.bus.publish(ReconciliationChanged(ready=s[1] == "ready", why="property", ts=now))


class TestGateProperty:
    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.sampled_from(list(PAPER)), st.sampled_from(RISK),
           st.lists(step, min_size=8, max_size=40))
    def test_any_sequence_when_orders_reach_paper_broker_then_no_limit_broken(
            self, broker: str, cfg: RiskConfig, steps: list[tuple[Any, ...]]) -> None:
        m = asyncio.run(run(cfg, PAPER[broker], steps))
        assert m.checked == len(m.intents)
