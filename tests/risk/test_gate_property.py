"""Property: whatever the sequence of signals, prices, fills, cancels, state changes and
clock jumps, no order that reaches the broker breaks a limit.

Each order is checked on arrival against the broker's OWN books (``FakeBroker``:
positions from its fills, cash, its open orders, its last prices), not the daemon's.
The broker here is the recording fake of ``tests.risk.harness`` (the paper broker has
not landed on main yet); fills go back through the real order manager and portfolio.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.events import OrderCanceled, OrderIntent, SignalBatch
from daemon.model import OrderSide, Signal
from daemon.time import trading_day
from risk.config import RiskConfig
from risk.sizing import Sizer
from risk.state import TradingState
from tests.risk.harness import PRICES, Harness

SYMS = ["AAPL", "MSFT", "XOM", "CVX", "F"]
_SECTORS = {"XOM": "energy", "CVX": "energy"}
CONFIGS = [
    # Tight exposure and rate limits.
    RiskConfig(max_orders_per_second=5, max_orders_per_execution=3, max_gross_exposure=0.12,
               sector_map=_SECTORS, max_sector_exposure=0.08),
    # Big positions: buying power and the loss limits bind.
    RiskConfig(max_position_pct=0.5, max_gross_exposure=1.5, max_order_notional=Decimal(60_000),
               max_daily_loss=0.005, max_drawdown=0.01, session_drawdown=0.5,
               sector_map=_SECTORS, max_sector_exposure=1.0, max_orders_per_second=3),
]

sym = st.sampled_from(SYMS)
step = st.one_of(
    st.tuples(st.just("batch"), st.lists(st.tuples(sym, st.floats(0.1, 1.0)), max_size=6)),
    st.tuples(st.just("raw"), sym, st.just(OrderSide.BUY), st.integers(1, 400), st.just(False)),
    st.tuples(st.just("fill"), st.integers(0, 5)),
    st.tuples(st.just("signal"), sym,
              st.one_of(st.floats(-1.2, 1.2), st.sampled_from([math.nan, math.inf])),
              st.floats(0.99, 1.01), st.sampled_from([0, 5, 119, 121, 300])),
    st.tuples(st.just("batch"), st.lists(st.tuples(sym, st.floats(0.1, 1.0)), max_size=6)),
    st.tuples(st.just("raw"), sym, st.sampled_from([OrderSide.BUY, OrderSide.SELL]),
              st.integers(0, 400), st.booleans()),
    st.tuples(st.just("fill"), st.integers(0, 5)),
    st.tuples(st.just("cancel"), st.integers(0, 5)),
    st.tuples(st.just("price"), sym, st.floats(0.85, 1.15)),
    st.tuples(st.just("clock"), st.sampled_from([0.2, 1, 30, 130, 3600, 86_400])),
    st.tuples(st.just("state"), st.sampled_from(list(TradingState))),
)


@dataclass
class Model:
    """The test's own record of what limits mean, from the broker's books."""

    last: dict[str, Decimal] = field(default_factory=lambda: {
        s: Decimal(repr(p)) for s, p in PRICES.items()})
    day: str = ""
    per_symbol: dict[str, int] = field(default_factory=dict)
    total: int = 0
    batches: dict[str, int] = field(default_factory=dict)
    times: list[datetime] = field(default_factory=list)
    sod: Decimal | None = None
    peak: Decimal | None = None


def equity(h: Harness, m: Model) -> Decimal:
    b = h.broker
    return b.cash + sum((q * m.last[s] for s, q in b.books.items()), Decimal(0))


def _d(x: float) -> Decimal:
    return Decimal(repr(x))


def check_order(h: Harness, m: Model, i: OrderIntent, now: datetime) -> None:
    """Every limit, recomputed from the broker's books before ``i`` is added to them."""
    b, cfg, p = h.broker, h.cfg, i.reference_price
    state = h.state
    assert not state.kill_switch
    emergency = i.reduce_only and i.origin == "emergency"
    assert state.state is not TradingState.HALTED or emergency
    assert i.qty > 0 and p > 0
    held = b.books.get(i.symbol, 0)
    buys = sum(o.qty for o in b.open.values() if o.symbol == i.symbol and o.side is OrderSide.BUY)
    sells = sum(o.qty for o in b.open.values() if o.symbol == i.symbol and o.side is not
                OrderSide.BUY)
    assert not any(o.symbol == i.symbol and o.side is i.side for o in b.open.values())
    base = held + buys if i.side is OrderSide.BUY else sells - held
    other = abs(held - sells) if i.side is OrderSide.BUY else abs(held + buys)
    grows = i.qty > max(0, -base)
    if state.state is TradingState.REDUCING or i.reduce_only:
        assert not grows
    if i.reduce_only:
        return
    if i.signal is not None:
        assert (now - i.signal.ts).total_seconds() <= cfg.stale_signal_secs
        assert -1 <= i.signal.strength <= 1
    assert cfg.min_order_notional <= p * i.qty <= cfg.max_order_notional
    eq = equity(h, m)
    new = abs(base + i.qty)
    assert new * p <= _d(cfg.max_position_pct) * eq or new <= abs(base)
    cur = max(abs(base), other)
    new_exp = max(new, other)

    def exposure(syms: list[str]) -> Decimal:
        total = Decimal(0)
        for s in syms:
            if s == i.symbol:
                continue
            q = b.books.get(s, 0)
            ob = sum(o.qty for o in b.open.values() if o.symbol == s and o.side is OrderSide.BUY)
            os_ = sum(o.qty for o in b.open.values() if o.symbol == s and o.side is not
                      OrderSide.BUY)
            total += max(abs(q + ob), abs(q - os_)) * m.last[s]
        return total

    assert exposure(SYMS) + new_exp * p <= _d(cfg.max_gross_exposure) * eq or new_exp <= cur
    if i.symbol in _SECTORS:
        assert (exposure(list(_SECTORS)) + new_exp * p <= _d(cfg.max_sector_exposure) * eq
                or new_exp <= cur)
    if i.side is OrderSide.SELL:
        assert held - sells - i.qty >= 0
    else:
        working = sum((o.qty * (o.limit_price or o.reference_price) for o in b.open.values()
                       if o.side is OrderSide.BUY), Decimal(0))
        assert i.qty * p <= b.cash - working
    if grows:
        last = float(m.last[i.symbol])
        assert abs(float(p) / last - 1) <= cfg.max_slip_pct + 1e-12
        if m.sod is not None and m.peak is not None:
            assert (m.sod - eq) / m.sod < _d(cfg.max_daily_loss)
            assert (m.peak - eq) / m.peak < _d(cfg.max_drawdown)
    day = trading_day(now)
    if day != m.day:
        m.day, m.per_symbol, m.total = day, {}, 0
    m.per_symbol[i.symbol] = m.per_symbol.get(i.symbol, 0) + 1
    m.total += 1
    assert m.per_symbol[i.symbol] <= cfg.max_orders_per_symbol_day
    assert m.total <= cfg.max_orders_per_day
    if i.batch_id is not None:
        m.batches[i.batch_id] = m.batches.get(i.batch_id, 0) + 1
        assert m.batches[i.batch_id] <= cfg.max_orders_per_execution
    m.times.append(now)
    recent = [t for t in m.times if (now - t).total_seconds() < 1]
    assert len(recent) <= cfg.max_orders_per_second


def run(cfg: RiskConfig, steps: list[tuple[Any, ...]]) -> None:
    h = Harness(cfg)
    m = Model()
    sizer = Sizer(cfg, equity=h.portfolio.equity,
                  holding=lambda s: h.portfolio.qty(s) + h.orders.working_qty(s), send=h.bus.send)

    def deliver() -> None:
        # The order sink hands each new order to the broker, which checks it first.
        for i in h.sink.submitted[len(h.broker.received):]:
            check_order(h, m, i, h.clock.now())
            h.broker.received.append(i)
            h.broker.open[i.client_order_id] = i

    for n, s in enumerate(steps):
        kind = s[0]
        now = h.clock.now()
        if kind in ("signal", "batch"):
            if kind == "signal":
                _, sy, strength, f, age = s
                sigs = (Signal(f"g{n}", sy, strength, float(m.last[sy]) * f,
                               now - timedelta(seconds=age), "prop"),)
            else:
                sigs = tuple(Signal(f"g{n}.{k}", sy, stn, float(m.last[sy]), now, "prop")
                             for k, (sy, stn) in enumerate(s[1]))
            sizer.on_signals(SignalBatch(ts=now, source="prop", signals=sigs))
        elif kind == "raw":
            _, sy, side, qty, ro = s
            h.place(h.intent(sy, qty, side=side, price=float(m.last[sy]), signal=False,
                             batch_id=None, reduce_only=ro, origin="operator"))
        elif kind == "fill" and h.broker.open:
            cid = list(h.broker.open)[s[1] % len(h.broker.open)]
            i = h.broker.open[cid]
            h.fill(cid, m.last[i.symbol])
        elif kind == "cancel" and h.broker.open:
            cid = list(h.broker.open)[s[1] % len(h.broker.open)]
            h.broker.open.pop(cid)
            h.orders.on_report(OrderCanceled(client_order_id=cid, ts=now))
        elif kind == "price":
            _, sy, f = s
            m.last[sy] = Decimal(repr(round(float(m.last[sy]) * f, 2)))
            h.bars({k: float(v) for k, v in m.last.items() if k in SYMS})
        elif kind == "clock":
            h.clock.advance(s[1])
        elif kind == "state":
            h.state.request(s[1], who="operator", why="property")
        # Reference equities (start of day, peak) are the marks the monitor and gate keep
        # (the journal persists them); the loss is measured on the broker's equity.
        m.sod, m.peak = h.gate.marks.start_of_day, h.gate.marks.peak
        deliver()


class TestGateProperty:
    @settings(max_examples=2000, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.sampled_from(CONFIGS), st.lists(step, min_size=1, max_size=40))
    def test_any_sequence_when_orders_reach_broker_then_no_limit_broken(
            self, cfg: RiskConfig, steps: list[tuple[Any, ...]]) -> None:
        run(cfg, steps)
