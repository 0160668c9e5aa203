"""Replay throughput and bar-batch-to-broker latency through the whole pipeline.

Workloads:
  real    (default) the real one-minute bars in ../shared/data/market: the first 53
          symbols (alphabetically) x the first 5 trading days, regular session, through
          the demo momentum rule, sizing, the gate, the order manager and the paper broker.
  parity  the comparison workload used against other engines (``_parity``): 53 symbols x
          20 full XNYS sessions of 390 one-minute bars from a seeded random walk; on every
          10th bar of each symbol a market order toward +10 shares if its last return was
          up, else toward 0, never on a session's last bar (nothing fills after it).
          Every limit that would deny the strategy is opened (loss, drawdown, session
          drawdown, order caps, rate limit); every check still runs. The same bars and
          decisions run twice: without sending orders (the bars' cost), then with them;
          the difference per order is the marginal cost of an order end to end (intent,
          gate, order manager, journal, paper fill, portfolio, stats). Prints intents,
          orders, fills and denials by reason, and exits 1 when more than 1% of the
          strategy's intents were denied (then it is not the comparison engine's work).

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
import json
import os
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MARKET_DIR, peak_rss_mb, percentile, print_json, print_table
from _parity import ParityRule, closes_session, parity_frame, reference_orders

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


class ParityStrategy:
    """The parity rule (``_parity.ParityRule``) as a tradingd strategy: it sees every bar
    batch after the account's books and gate did, and sends a ``PlaceOrder`` (a market day
    order) on the account's bus for the difference between its target and what the
    account holds plus works. Counts its intents."""

    def __init__(self, daemon: Daemon, *, place_orders: bool = True) -> None:
        self._d = daemon
        self._rule = ParityRule()
        self._place = place_orders
        self.intents = 0

    def on_bars(self, batch: BarBatch) -> None:
        system = self._d.system
        decide = self._rule.decide
        last_of_session = closes_session(batch.ts)
        for sym, close in zip(batch.symbols, batch.close.tolist(), strict=True):
            target = decide(sym, close, last_of_session)
            if target is None:
                continue
            delta = target - system.portfolio.qty(sym) - system.orders.working_qty(sym)
            if delta == 0:
                continue
            self.intents += 1
            if not self._place:
                continue
            system.bus.send(PlaceOrder(OrderIntent(
                client_order_id=f"parity-{self.intents}", symbol=sym,
                side=OrderSide.BUY if delta > 0 else OrderSide.SELL, qty=abs(delta),
                order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY,
                ts=self._d.clock.now(), reference_price=to_price(close), origin="parity",
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


def prepare(workload: str, days: int, symbols: int, out: Path) -> dict[str, Any]:
    """Write the workload's bars in a child process, so the benchmark's peak RSS is the
    daemon's and not pandas' decompressing the 1.7M-row source file. Returns what the
    child says about them (parity: the engine-free order count)."""
    subprocess.run([sys.executable, __file__, "--prepare", str(out), "--workload", workload,
                    "--days", str(days), "--symbols", str(symbols)], check=True)
    meta: dict[str, Any] = json.loads(out.with_suffix(".json").read_text())
    return meta


def write_bars(workload: str, days: int, symbols: int, out: Path) -> None:
    meta: dict[str, Any] = {}
    if workload == "real":
        real_bars(days, symbols, out)
    else:
        frame = parity_frame(days, symbols)
        frame.to_csv(out, index=False)
        meta["reference_orders"] = reference_orders(frame)
    out.with_suffix(".json").write_text(json.dumps(meta))


# Parity: every limit that would deny the strategy is opened (all checks still run):
# the loss limits (the random walk's drawdown moved the session to REDUCING, then every
# buy was REDUCE_ONLY), the order caps and the rate limit. The fill price is the next
# bar's open without slippage, which is the comparison engine's fill at the bar's close.
PARITY_RISK = {"max_orders_per_symbol_day": 100_000, "max_orders_per_day": 10_000_000,
               "max_orders_per_execution": 100_000, "max_orders_per_second": 1e9,
               "max_daily_loss": 0.99, "max_drawdown": 0.99, "session_drawdown": 0.99,
               "stop_loss_pct": 0.99}


async def run(workload: str, days: int, symbols: int, *,
              place_orders: bool = True) -> dict[str, Any]:
    """One replay through a daemon built from the settings (``daemon.app.Daemon``, whose
    accounts ``engine.system.build_system`` wires). ``place_orders=False`` (parity) runs
    the same bars and decisions without sending the orders: the cost of the bars alone."""
    tmp = Path(tempfile.mkdtemp(prefix="tradingd-bench-"))
    csv = tmp / "bars.csv"
    meta = prepare(workload, days, symbols, csv)
    risk: dict[str, Any] = {}
    signals: dict[str, Any] = {}
    broker: dict[str, Any] = {}
    if workload == "parity":
        risk, signals = PARITY_RISK, {"demo": {"enabled": False}}
        broker = {"paper": {"slippage_bps": 0}}
    settings = load_settings(overrides={
        "daemon": {"state_dir": str(tmp / "state")},
        "feed": {"source": "replay", "replay": str(csv), "speed": "max"},
        "risk": risk, "signals": signals, "broker": broker,
    })
    daemon = Daemon(settings)
    strategy = None
    if workload == "parity":
        strategy = ParityStrategy(daemon, place_orders=place_orders)
        daemon.bus.subscribe(BarBatch, strategy.on_bars)
    latencies, handoff, orders = instrument(daemon)
    t0, c0 = time.perf_counter(), time.process_time()
    code = await daemon.run()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert code == 0, f"daemon exited {code}"
    stats = daemon.system.stats
    rows = stats.bar_rows
    figures = {
        "workload": workload, "symbols": symbols, "days": days, "bars": rows,
        "batches": stats.bar_batches, "orders": orders(), "fills": stats.fills,
        "denied": dict(sorted(stats.denied.items())), "broker_rejects": stats.rejected,
        "seconds": round(elapsed, 3), "cpu_seconds": round(cpu, 3),
        "bars_per_s": round(rows / elapsed), "orders_per_s": round(orders() / elapsed, 1),
        "latency_p50_us": round(percentile(latencies, 50), 1),
        "latency_p99_us": round(percentile(latencies, 99), 1),
        "pipeline_p50_us": round(percentile(handoff, 50), 1),
        "pipeline_p99_us": round(percentile(handoff, 99), 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }
    if strategy is not None:
        figures["intents"] = strategy.intents
        figures["reference_orders"] = meta["reference_orders"]
    journal = daemon.system.journal
    if journal is not None:
        figures["journal_fsync_seconds"] = round(journal.fsync_secs, 3)
    return figures


def parity_report(bars_only: dict[str, Any], full: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The parity figures (the full run's, plus the marginal cost of an order: the run
    with orders less the same bars and decisions without them), and the exit code: 1 when
    more than ``MAX_DENIED`` of the strategy's intents were denied."""
    orders = full["orders"]
    denied = sum(full["denied"].values()) + full["broker_rejects"]
    share = denied / full["intents"] if full["intents"] else 0.0
    out = dict(full)
    out["denied_share"] = round(share, 4)
    out["bars_only_seconds"] = bars_only["seconds"]
    out["bars_only_bars_per_s"] = bars_only["bars_per_s"]
    if orders:
        out["per_order_us"] = round((full["seconds"] - bars_only["seconds"]) / orders * 1e6, 1)
        out["per_order_cpu_us"] = round(
            (full["cpu_seconds"] - bars_only["cpu_seconds"]) / orders * 1e6, 1)
    out["ok"] = share <= MAX_DENIED
    return out, 0 if out["ok"] else 1


MAX_DENIED = 0.01


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
        write_bars(a.workload, days, a.symbols, a.prepare)
        return
    dlog.configure("info", stream=open(os.devnull, "w"), json=True)  # noqa: SIM115
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    code = 0
    if a.workload == "parity":
        bars_only = runner(run(a.workload, days, a.symbols, place_orders=False))
        figures, code = parity_report(bars_only, runner(run(a.workload, days, a.symbols)))
    else:
        figures = runner(run(a.workload, days, a.symbols))
    rows: list[tuple[str, Any]] = [
        ("bars (symbol-minutes)", figures["bars"]), ("bar batches", figures["batches"]),
    ]
    if a.workload == "parity":
        rows += [("strategy intents", figures["intents"]),
                 ("reference orders (engine-free)", figures["reference_orders"])]
    rows += [("orders", figures["orders"]), ("fills", figures["fills"])]
    rows += [(f"denied {reason}", n) for reason, n in figures["denied"].items()]
    rows += [("broker rejects", figures["broker_rejects"]),
             ("wall seconds", figures["seconds"]), ("CPU seconds", figures["cpu_seconds"]),
             ("bars/s", figures["bars_per_s"]), ("orders/s", figures["orders_per_s"])]
    if "per_order_us" in figures:
        rows += [("bars only (no orders): bars/s", figures["bars_only_bars_per_s"]),
                 ("per order, wall (µs)", figures["per_order_us"]),
                 ("per order, CPU (µs)", figures["per_order_cpu_us"])]
    rows += [
        ("batch->order manager p50 (µs)", figures["pipeline_p50_us"]),
        ("batch->order manager p99 (µs)", figures["pipeline_p99_us"]),
        ("batch->broker incl. fsync p50 (µs)", figures["latency_p50_us"]),
        ("batch->broker incl. fsync p99 (µs)", figures["latency_p99_us"]),
        ("peak RSS (MB)", figures["peak_rss_mb"]),
    ]
    print_table(f"tradingd replay benchmark ({a.workload})", rows)
    if code:
        print(f"FAIL: {figures['denied_share']:.2%} of the strategy's intents were denied "
              f"(at most {MAX_DENIED:.0%}): the parity workload is not measuring equal work",
              file=sys.stderr)
    print_json(figures)
    sys.exit(code)


if __name__ == "__main__":
    main()
