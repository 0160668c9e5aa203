"""Cost of the pre-trade gate per order intent, with realistic state.

The account is wired by the product (``engine.system.build_system``: the gate, its
order manager, portfolio, risk state, modes and the real XNYS market-hours check, as the
daemon has them), on a ``FakeBroker`` that reports nothing and without a journal: the
figures are the gate's. 53 symbols with bars, 20 positions, 10 open orders, a sector
map, quotes. Measures ``Gate.evaluate`` (every check, no logging or publishing), the
account-view rebuild that a fill or bar batch triggers once per batch, and a whole
43-intent batch sent through the account's bus (rebuild + ``execute`` per intent with its
log call, ``OrderApproved`` and ``SubmitOrder``), per intent; the ``SubmitOrder`` is
counted, not handed to the order manager (the order manager's cost is the replay
benchmark's). Log lines are filtered, not rendered: rendering is the app's cost,
whatever the gate does.

Prints a table, then as its LAST line one JSON object with the figures (microseconds).
Run: ``python -m benchmarks.gate``.
"""

from __future__ import annotations

import json
import logging
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
import structlog

from brokers.config import BrokerConfig, PaperConfig
from brokers.fake import FakeBroker
from engine.config import DaemonConfig
from engine.execution import OrderManager
from engine.system import SystemSpec, TradingSystem, build_system
from kernel.clock import ReplayClock
from kernel.events import BarBatch, OrderIntent, PlaceOrder, ReconciliationChanged, SubmitOrder
from kernel.model import Fill, OrderSide, OrderType, Signal, TimeInForce
from risk.config import RiskConfig
from risk.gate import Gate

NOW = datetime(2024, 7, 1, 15, 0, tzinfo=UTC)
SYMBOLS = [f"S{i:02d}" for i in range(53)]
N = 20_000


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def build(state_dir: Path) -> tuple[TradingSystem, ReplayClock, list[SubmitOrder]]:
    """The account as the daemon wires it; returns it, its clock and the list the
    account's ``SubmitOrder`` commands land in (instead of the order manager)."""
    cfg = RiskConfig(sector_map={s: f"sec{i % 8}" for i, s in enumerate(SYMBOLS)},
                     max_orders_per_symbol_day=10**6, max_orders_per_day=10**7,
                     max_orders_per_second=10**7, max_orders_per_execution=10**7)
    clock = ReplayClock(NOW)
    system = build_system(
        SystemSpec(name="bench", broker=BrokerConfig(paper=PaperConfig(initial_cash=1_000_000)),
                   risk=cfg, state_dir=state_dir),
        daemon=DaemonConfig(state_dir=state_dir), clock=clock, environ={},
        broker=FakeBroker(report=False).connect, journaling=False)
    bus, pf, orders, gate = system.bus, system.portfolio, system.orders, system.gate
    market = system.market
    if hasattr(market, "warm"):
        market.warm()
    # The books are confirmed with the broker (the reconciler's start-up pass says so).
    bus.publish(ReconciliationChanged(ready=True, why="benchmark", ts=NOW))
    prices = np.linspace(20.0, 400.0, len(SYMBOLS))
    batch = BarBatch(ts=NOW, symbols=tuple(SYMBOLS), open=prices, high=prices, low=prices,
                     close=prices, volume=np.full(len(SYMBOLS), 1e6))
    pf.on_bars(batch)
    gate.on_bars(batch)
    for i, s in enumerate(SYMBOLS[:20]):
        qty = int(20_000 // prices[i])
        pf.apply_fill(Fill(f"x{i}", f"h{i}", s, OrderSide.BUY, qty,
                           Decimal(repr(float(prices[i]))), NOW))
    # Ten working orders in the order manager (through it, as the gate sends them).
    for i, s in enumerate(SYMBOLS[30:40]):
        bus.send(SubmitOrder(_intent(s, float(prices[30 + i]), i, OrderSide.BUY)))
    assert len(orders.open_orders()) == 10, orders.stats
    # From here on, approved orders are counted, not taken (see the module doc).
    taken: list[SubmitOrder] = []
    bus._cmd[SubmitOrder] = taken.append  # the benchmark's one rewiring (a private)
    for i, s in enumerate(SYMBOLS):
        gate.set_quote(s, float(prices[i]) * 0.9999, float(prices[i]) * 1.0001)
    return system, clock, taken


def _intent(sym: str, price: float, n: int, side: OrderSide,
            ts: datetime = NOW) -> OrderIntent:
    sig = Signal(id=f"sig{n}", symbol=sym, strength=0.2, price=price, ts=ts, source="bench")
    return OrderIntent(client_order_id=f"c{n}", symbol=sym, side=side, qty=max(1, int(
        3000 // price)), order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY, ts=ts,
        reference_price=Decimal(repr(price)), signal=sig, batch_id=f"b{n // 10}")


def _reset(gate: Gate, orders: OrderManager) -> None:
    for cid in [c for c in orders.orders if c.startswith("c1")]:
        del orders.orders[cid]
    orders.restore_counters("", {})
    gate._in_transit.clear()
    gate.invalidate()


def run() -> dict[str, float]:
    # Log lines are filtered (rendering is the app's cost, not the gate's).
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with tempfile.TemporaryDirectory(prefix="tradingd-gate-") as tmp:
        system, clock, taken = build(Path(tmp))
        return _measure(system, clock, taken)


def _measure(system: TradingSystem, clock: ReplayClock,
             taken: list[SubmitOrder]) -> dict[str, float]:
    gate, bus, orders = system.gate, system.bus, system.orders
    prices = {s: float(p) for s, p in zip(SYMBOLS, np.linspace(20.0, 400.0, len(SYMBOLS)),
                                          strict=True)}
    # Buys of symbols without working orders (they pass every check: worst case, all run).
    pool = [s for s in SYMBOLS if not "S30" <= s < "S40"]
    intents = [_intent(pool[i % len(pool)], prices[pool[i % len(pool)]], 1000 + i,
                       OrderSide.BUY) for i in range(N)]
    evaluate = gate.evaluate
    gate.evaluate(_intent("S00", prices["S00"], -1, OrderSide.BUY))  # warm-up
    checks: list[float] = []
    outcomes: dict[str, int] = {}
    for it in intents:
        t0 = time.perf_counter_ns()
        r = evaluate(it)
        checks.append((time.perf_counter_ns() - t0) / 1000)
        k = "pass" if isinstance(r, int) else str(r.reason)
        outcomes[k] = outcomes.get(k, 0) + 1
    rebuild: list[float] = []
    for _ in range(2000):
        gate.invalidate()
        t0 = time.perf_counter_ns()
        gate._book = gate._rebuild(clock.now())  # the cost a bar batch or fill triggers
        rebuild.append((time.perf_counter_ns() - t0) / 1000)
    # A whole signal batch through the bus: rebuild once, then one execute per symbol
    # (log, OrderApproved, SubmitOrder); reset between rounds so every intent passes.
    full: list[float] = []
    for r in range(300):
        _reset(gate, orders)
        taken.clear()
        clock.set(NOW + timedelta(seconds=r))
        batch = [PlaceOrder(_intent(s, prices[s], 10**6 + r * 100 + i, OrderSide.BUY,
                                   clock.now()))
                 for i, s in enumerate(pool)]
        t0 = time.perf_counter_ns()
        for cmd in batch:
            bus.send(cmd)
        full.append((time.perf_counter_ns() - t0) / 1000 / len(batch))
    assert gate.passed >= 300 * len(pool), gate.stats()
    assert len(taken) == len(pool), len(taken)  # the last round: every intent approved
    rows = {"checks": checks, "rebuild": rebuild, "batch": full}
    print(f"gate benchmark: {len(SYMBOLS)} symbols, 20 positions, 10 open orders, "
          f"{N} intents; outcomes {outcomes}")
    print(f"{'path':<10}{'n':>8}{'median µs':>12}{'p90 µs':>10}{'p99 µs':>10}")
    out: dict[str, float] = {}
    for name, xs in rows.items():
        med, p90, p99 = statistics.median(xs), _pct(xs, 0.9), _pct(xs, 0.99)
        print(f"{name:<10}{len(xs):>8}{med:>12.2f}{p90:>10.2f}{p99:>10.2f}")
        out |= {f"{name}_median_us": round(med, 2), f"{name}_p90_us": round(p90, 2),
                f"{name}_p99_us": round(p99, 2)}
    out["target_median_us"] = 20.0
    out["checks_ok"] = float(out["checks_median_us"] < 20.0)
    return out


if __name__ == "__main__":
    print(json.dumps(run()))
