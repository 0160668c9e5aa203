"""Replay throughput and bar-batch-to-broker latency through the whole pipeline.

Workloads:
  real    (default) the real one-minute bars in ../shared/data/market: the first 53
          symbols (alphabetically) x the first 5 trading days, regular session, through
          the demo momentum rule, sizing, the gate, the order manager and the paper broker.
  parity  the comparison workload used against other engines: 53 symbols, 20 days x 390
          one-minute bars from a seeded geometric random walk; on every 10th bar of each
          symbol a market order toward a target of +10 shares if its last return was up,
          else 0. Risk limits (order counts and loss limits) are opened wide so the gate
          passes the strategy's orders every day (all checks still run).

Latency is measured from the moment a bar batch is handed to the bus
(``BarBatch.received_ns``) to the moment each of its orders is taken by the order manager
(the pipeline: signals, sizing, the gate), and to the moment it enters ``Broker.submit``
(after the journal has fsynced the batch's intents: the durable write is on this path by
design, and its cost is the disk's).
Logging is on (info, JSON) but written to /dev/null. Usage:

    python benchmarks/replay.py [--workload real|parity] [--days N] [--symbols N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MARKET_DIR, peak_rss_mb, percentile, print_json, print_table

from config.settings import load_settings
from daemon.app import Daemon
from kernel import logging as dlog
from kernel.events import BarBatch, OrderIntent, OrderSubmitted, PlaceOrder
from kernel.model import OrderSide, OrderType, TimeInForce, to_price


def real_bars(days: int, symbols: int, out: Path) -> Path:
    frame = pd.read_csv(MARKET_DIR / "us_equities_1min_2018-02-16_2018-04-20.csv.gz")
    chosen = sorted(frame["symbol"].unique())[:symbols]
    frame = frame[frame["symbol"].isin(chosen)]
    day = frame["timestamp"].str.slice(0, 10)
    frame = frame[day.isin(sorted(day.unique())[:days])]
    frame = frame[frame["timestamp"].str.slice(11, 16) >= "09:30"]
    frame.to_csv(out, index=False)
    return out


def parity_bars(days: int, symbols: int, out: Path, seed: int = 42) -> Path:
    """Seeded geometric random walk, 390 one-minute bars a day on real XNYS sessions."""
    from signals.demodata import trading_days

    rng = np.random.default_rng(seed)
    syms = [f"P{i:03d}" for i in range(symbols)]
    price = np.full(symbols, 100.0)
    stamps: list[str] = []
    closes = []
    for day in trading_days(days):
        base = pd.Timestamp(f"{day} 09:30", tz="America/New_York")
        for m in range(390):
            stamps.append((base + pd.Timedelta(minutes=m)).isoformat())
            price = price * np.exp(rng.normal(0, 0.001, symbols))
            closes.append(price.copy())
    close = np.array(closes)
    open_ = np.vstack([close[:1], close[:-1]])
    frame = pd.DataFrame({
        "timestamp": np.repeat(stamps, symbols), "symbol": np.tile(syms, len(stamps)),
        "open": open_.ravel().round(4), "close": close.ravel().round(4),
        "volume": 1000,
    })
    frame["high"] = frame[["open", "close"]].max(axis=1)
    frame["low"] = frame[["open", "close"]].min(axis=1)
    frame[["timestamp", "symbol", "open", "high", "low", "close", "volume"]].to_csv(
        out, index=False)
    return out


class ParityStrategy:
    """Every 10th bar of each symbol: a market order toward +10 shares if the last
    return was up, else toward 0."""

    def __init__(self, daemon: Daemon) -> None:
        self._d = daemon
        self._count: dict[str, int] = {}
        self._last: dict[str, float] = {}
        self._seq = 0

    def on_bars(self, batch: BarBatch) -> None:
        d = self._d
        for sym, close in zip(batch.symbols, batch.close.tolist(), strict=True):
            n = self._count.get(sym, 0) + 1
            self._count[sym] = n
            prev = self._last.get(sym)
            self._last[sym] = close
            if n % 10 or prev is None:
                continue
            target = 10 if close > prev else 0
            delta = target - d.system.portfolio.qty(sym) - d.system.orders.working_qty(sym)
            if delta == 0:
                continue
            self._seq += 1
            d.system.bus.send(PlaceOrder(OrderIntent(
                client_order_id=f"parity-{self._seq}", symbol=sym,
                side=OrderSide.BUY if delta > 0 else OrderSide.SELL, qty=abs(delta),
                order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY,
                ts=d.clock.now(), reference_price=to_price(close), origin="parity",
            )))


def instrument(daemon: Daemon) -> tuple[array[float], array[float], Callable[[], int]]:
    """Record, per order, the µs from its bar batch entering the bus to (a) the order
    manager taking it (``OrderSubmitted``: signals, sizing, the gate) and (b) the broker's
    ``submit`` (adds the worker hop and the journal's fsync of the intent before it).
    Packed arrays (8 bytes a sample): the benchmark's own memory must not hide the
    daemon's in the peak RSS of a long run."""
    to_broker: array[float] = array("d")
    to_manager: array[float] = array("d")
    last_batch = [0]
    broker: Any = daemon.system.broker
    original = broker.submit

    def on_bars(batch: BarBatch) -> None:
        last_batch[0] = batch.received_ns

    def on_submitted(_event: OrderSubmitted) -> None:
        to_manager.append((time.perf_counter_ns() - last_batch[0]) / 1000)

    async def timed_submit(intent: OrderIntent) -> None:
        to_broker.append((time.perf_counter_ns() - last_batch[0]) / 1000)
        await original(intent)

    broker.submit = timed_submit
    daemon.system.bus.subscribe(BarBatch, on_bars)
    daemon.system.bus.subscribe(OrderSubmitted, on_submitted)
    return to_broker, to_manager, lambda: len(to_broker)


def prepare(workload: str, days: int, symbols: int, out: Path) -> Path:
    """Write the workload's bars in a child process, so the benchmark's peak RSS is the
    daemon's and not pandas' decompressing the 1.7M-row source file."""
    subprocess.run([sys.executable, __file__, "--prepare", str(out), "--workload", workload,
                    "--days", str(days), "--symbols", str(symbols)], check=True)
    return out


async def run(workload: str, days: int, symbols: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="tradingd-bench-"))
    csv = prepare(workload, days, symbols, tmp / "bars.csv")
    risk: dict[str, Any] = {}
    signals: dict[str, Any] = {}
    if workload == "parity":
        # Loss limits too: with the default 1% session drawdown the random walk halted
        # new buys after about four days, and a longer run measured nothing more.
        risk = {"max_orders_per_symbol_day": 1000, "max_orders_per_day": 100000,
                "max_orders_per_execution": 1000, "max_orders_per_second": 1e9,
                "stale_signal_secs": 1e9, "max_daily_loss": 0.99, "max_drawdown": 0.99,
                "session_drawdown": 0.99, "stop_loss_pct": 0.99}
        signals = {"demo": {"enabled": False}}
    settings = load_settings(overrides={
        "daemon": {"state_dir": str(tmp / "state")},
        "feed": {"source": "replay", "replay": str(csv), "speed": "max"},
        "risk": risk, "signals": signals,
    })
    daemon = Daemon(settings)
    if workload == "parity":
        daemon.system.bus.subscribe(BarBatch, ParityStrategy(daemon).on_bars)
    latencies, handoff, orders = instrument(daemon)
    t0 = time.perf_counter()
    code = await daemon.run()
    elapsed = time.perf_counter() - t0
    assert code == 0, f"daemon exited {code}"
    rows = daemon.system.stats.bar_rows
    return {
        "workload": workload, "symbols": symbols, "days": days, "bars": rows,
        "batches": daemon.system.stats.bar_batches, "orders": orders(),
        "fills": daemon.system.stats.fills,
        "seconds": round(elapsed, 3), "bars_per_s": round(rows / elapsed),
        "orders_per_s": round(orders() / elapsed, 1),
        "latency_p50_us": round(percentile(latencies, 50), 1),
        "latency_p99_us": round(percentile(latencies, 99), 1),
        "pipeline_p50_us": round(percentile(handoff, 50), 1),
        "pipeline_p99_us": round(percentile(handoff, 99), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=["real", "parity"], default="real")
    p.add_argument("--days", type=int)
    p.add_argument("--symbols", type=int, default=53)
    p.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args()
    days = a.days or (5 if a.workload == "real" else 20)
    if a.prepare:
        make = real_bars if a.workload == "real" else parity_bars
        make(days, a.symbols, a.prepare)
        return
    dlog.configure("info", stream=open(os.devnull, "w"), json=True)  # noqa: SIM115
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    figures = runner(run(a.workload, days, a.symbols))
    print_table(f"tradingd replay benchmark ({a.workload})", [
        ("bars (symbol-minutes)", figures["bars"]), ("bar batches", figures["batches"]),
        ("orders", figures["orders"]), ("fills", figures["fills"]),
        ("wall seconds", figures["seconds"]), ("bars/s", figures["bars_per_s"]),
        ("orders/s", figures["orders_per_s"]),
        ("batch->order manager p50 (µs)", figures["pipeline_p50_us"]),
        ("batch->order manager p99 (µs)", figures["pipeline_p99_us"]),
        ("batch->broker incl. fsync p50 (µs)", figures["latency_p50_us"]),
        ("batch->broker incl. fsync p99 (µs)", figures["latency_p99_us"]),
        ("peak RSS (MB)", figures["peak_rss_mb"]),
    ])
    print_json(figures)


if __name__ == "__main__":
    main()
