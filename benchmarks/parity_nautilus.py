"""The parity workload on the comparison engine: NautilusTrader's BacktestEngine.

The same bars (``_parity.parity_frame``: same generator, seed, sessions) and the same
rule (``_parity.ParityRule``: every 10th bar of each symbol, a market order toward +10
shares if the last return was up, else toward 0, never on a session's last bar) as
``benchmarks/replay.py --workload parity``. A cash account (USD 100,000, no fees),
netting, 1-minute LAST bars, one equity per symbol (tick 0.0001, lot 1). Nautilus fills
a market order on bar data at the bar's close; in these bars the next bar's open (where
tradingd's paper broker fills) is that same price.

NautilusTrader is not a tradingd dependency and never committed: install it into its own
virtualenv and run this script with it::

    python3 -m venv /work/nautilus-venv
    /work/nautilus-venv/bin/pip install nautilus_trader==1.221.0 exchange_calendars
    /work/nautilus-venv/bin/python benchmarks/parity_nautilus.py [--days N] [--symbols N]

Prints orders, fills, the engine-free reference count and bars/s (the engine's ``run``
only: the bars are built before the clock starts), then one JSON object. Exits 1 when
its orders differ from the reference count (the work would not be the same).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from decimal import Decimal
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _parity import TARGET, ParityRule, closes_session, parity_frame, reference_orders
from nautilus_trader.backtest.engine import BacktestEngine, BacktestEngineConfig
from nautilus_trader.config import LoggingConfig, StrategyConfig
from nautilus_trader.model.currencies import USD
from nautilus_trader.model.data import Bar, BarType
from nautilus_trader.model.enums import AccountType, OmsType, OrderSide, TimeInForce
from nautilus_trader.model.events import OrderFilled
from nautilus_trader.model.identifiers import InstrumentId, Symbol, TraderId, Venue
from nautilus_trader.model.instruments import Equity
from nautilus_trader.model.objects import Money, Price, Quantity
from nautilus_trader.persistence.wranglers import BarDataWrangler
from nautilus_trader.trading.strategy import Strategy

VENUE = Venue("XNYS")


class ParityConfig(StrategyConfig, frozen=True):
    bar_types: tuple[str, ...] = ()
    # ts_event (ns, the bar's close) of every session's last bar: a set lookup per bar,
    # so the comparison engine pays nothing for the rule's calendar.
    session_last: frozenset[int] = frozenset()


class ParityStrategy(Strategy):
    """``ParityRule`` on every bar; a market order for the difference to the target."""

    def __init__(self, config: ParityConfig) -> None:
        super().__init__(config)
        self.rule = ParityRule()
        self.intents = 0
        self.fills = 0
        self._types = [BarType.from_str(t) for t in config.bar_types]
        self._last = config.session_last
        self._symbol: dict[InstrumentId, str] = {}

    def on_start(self) -> None:
        for bar_type in self._types:
            self._symbol[bar_type.instrument_id] = bar_type.instrument_id.symbol.value
            self.subscribe_bars(bar_type)

    def on_bar(self, bar: Bar) -> None:
        iid = bar.bar_type.instrument_id
        target = self.rule.decide(self._symbol[iid], bar.close.as_double(),
                                  bar.ts_event in self._last)
        if target is None:
            return
        held = int(self.portfolio.net_position(iid))
        delta = target - held
        if delta == 0:
            return
        self.intents += 1
        order = self.order_factory.market(
            instrument_id=iid, order_side=OrderSide.BUY if delta > 0 else OrderSide.SELL,
            quantity=Quantity.from_int(abs(delta)), time_in_force=TimeInForce.DAY)
        self.submit_order(order)

    def on_order_filled(self, event: OrderFilled) -> None:
        self.fills += 1


def instrument(symbol: str) -> Equity:
    return Equity(
        instrument_id=InstrumentId(Symbol(symbol), VENUE), raw_symbol=Symbol(symbol),
        currency=USD, price_precision=4, price_increment=Price.from_str("0.0001"),
        lot_size=Quantity.from_int(1), ts_event=0, ts_init=0,
        maker_fee=Decimal(0), taker_fee=Decimal(0))


def build(frame: pd.DataFrame) -> tuple[BacktestEngine, ParityStrategy]:
    engine = BacktestEngine(BacktestEngineConfig(
        trader_id=TraderId("PARITY-001"), logging=LoggingConfig(log_level="ERROR"),
        run_analysis=False))
    engine.add_venue(venue=VENUE, oms_type=OmsType.NETTING, account_type=AccountType.CASH,
                     starting_balances=[Money(100_000, USD)], base_currency=USD)
    frame = frame.copy()
    # Nautilus stamps a bar at its close: the bar that starts at t is the one at t + 1 min.
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True) + pd.Timedelta(minutes=1)
    types = []
    for symbol, rows in frame.groupby("symbol", sort=True):
        inst = instrument(str(symbol))
        engine.add_instrument(inst)
        bar_type = BarType.from_str(f"{inst.id}-1-MINUTE-LAST-EXTERNAL")
        bars = BarDataWrangler(bar_type, inst).process(
            rows.set_index("timestamp")[["open", "high", "low", "close", "volume"]])
        engine.add_data(bars)
        types.append(str(bar_type))
    last = frozenset(int(ts.value) for ts in frame["timestamp"].unique()
                     if closes_session((ts - pd.Timedelta(minutes=1)).to_pydatetime()))
    strategy = ParityStrategy(ParityConfig(bar_types=tuple(types), session_last=last))
    engine.add_strategy(strategy)
    return engine, strategy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=20)
    p.add_argument("--symbols", type=int, default=53)
    a = p.parse_args()
    frame = parity_frame(a.days, a.symbols)
    reference = reference_orders(frame)
    engine, strategy = build(frame)
    t0, c0 = time.perf_counter(), time.process_time()
    engine.run()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    orders = len(engine.cache.orders())
    fills = strategy.fills
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures = {
        "engine": "nautilus_trader", "version": _version(), "symbols": a.symbols,
        "days": a.days, "bars": len(frame), "intents": strategy.intents,
        "reference_orders": reference, "orders": orders, "fills": fills,
        "seconds": round(elapsed, 3), "cpu_seconds": round(cpu, 3),
        "bars_per_s": round(len(frame) / elapsed), "orders_per_s": round(orders / elapsed, 1),
        "peak_rss_mb": round(rss, 1), "target_qty": TARGET,
    }
    engine.dispose()
    width = 32
    print("NautilusTrader parity benchmark")
    print("-" * (width + 20))
    for key in ("bars", "intents", "reference_orders", "orders", "fills", "seconds",
                "cpu_seconds", "bars_per_s", "orders_per_s", "peak_rss_mb"):
        print(f"{key:<{width}}  {figures[key]!s:>16}")
    print("-" * (width + 20))
    ok = orders == reference and fills == orders
    if not ok:
        print(f"FAIL: {orders} orders and {fills} fills against {reference} expected: "
              "not the same work as tradingd's parity run", file=sys.stderr)
    print(json.dumps(figures, sort_keys=True))
    sys.exit(0 if ok else 1)


def _version() -> str:
    import nautilus_trader

    return str(nautilus_trader.__version__)


if __name__ == "__main__":
    main()
