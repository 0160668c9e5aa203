"""Journal cost: durable order intents per second, and replay throughput with and without
the journal.

1. Durable intents: ``Journal.record_intent`` in a loop, each one committed with an
   fsync (WAL, ``synchronous=FULL``) before it returns, exactly as the order manager
   calls it before every broker submission. Target: at least 2,000 intents/s.
2. Replay overhead: the same real one-minute bars (first N symbols x first N days,
   regular session) through the whole daemon (demo rule, sizing, gate, order manager,
   paper broker), once with the journal (every event journaled, every intent fsynced,
   equity marks, recovery at start) and once without (``Daemon(journaling=False)``).
   Runs alternate and the best of each is kept. Target: the journal costs < 15% of bars/s.

Usage: python benchmarks/journal.py [--intents N] [--days N] [--symbols N] [--rounds N]
The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import percentile, print_json, print_table
from replay import prepare

from config.settings import load_settings
from daemon.app import Daemon
from engine.journal import Journal
from kernel import logging as dlog
from kernel.events import OrderIntent
from kernel.model import OrderSide, OrderType, Signal, TimeInForce


def durable_intents(n: int, tmp: Path) -> dict[str, Any]:
    journal = Journal(tmp / "intents.sqlite").open()
    ts = datetime(2024, 3, 1, 15, 0, tzinfo=UTC)
    intents = [
        OrderIntent(f"td-{i:08d}", "AAPL", OrderSide.BUY, 10, OrderType.MARKET,
                    TimeInForce.DAY, ts, Decimal("187.43"),
                    signal=Signal(f"demo:{i}", "AAPL", 0.8, 187.43, ts, "demo"))
        for i in range(n)
    ]
    lat: list[float] = []
    t0 = time.perf_counter()
    for intent in intents:
        t = time.perf_counter()
        journal.record_intent(intent)
        lat.append((time.perf_counter() - t) * 1e6)
    elapsed = time.perf_counter() - t0
    journal.close()
    return {"intents": n, "intents_per_s": round(n / elapsed),
            "intent_p50_us": round(percentile(lat, 50), 1),
            "intent_p99_us": round(percentile(lat, 99), 1)}


async def replay_once(csv: Path, state: Path, journaling: bool) -> tuple[float, int, int]:
    settings = load_settings(overrides={
        "daemon": {"state_dir": str(state)},
        "feed": {"source": "replay", "replay": str(csv), "speed": "max"},
    })
    daemon = Daemon(settings, journaling=journaling)
    t0 = time.perf_counter()
    code = await daemon.run()
    elapsed = time.perf_counter() - t0
    assert code == 0, f"daemon exited {code}"
    stats = daemon.system.stats
    return stats.bar_rows / elapsed, stats.orders, stats.fills


def replay_overhead(days: int, symbols: int, rounds: int, tmp: Path) -> dict[str, Any]:
    csv = tmp / "bars.csv"
    prepare("real", days, symbols, csv)
    best = {True: 0.0, False: 0.0}
    orders = {True: 0, False: 0}
    for r in range(rounds):
        for journaling in (False, True):
            state = tmp / f"state-{r}-{journaling}"
            rate, n_orders, _ = asyncio.run(replay_once(csv, state, journaling))
            best[journaling] = max(best[journaling], rate)
            orders[journaling] = n_orders
    overhead = (1 - best[True] / best[False]) * 100
    return {"days": days, "symbols": symbols, "orders": orders[True],
            "orders_without_journal": orders[False],
            "bars_per_s_without_journal": round(best[False]),
            "bars_per_s_with_journal": round(best[True]),
            "journal_overhead_pct": round(overhead, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--intents", type=int, default=5000)
    p.add_argument("--days", type=int, default=2)
    p.add_argument("--symbols", type=int, default=53)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    dlog.configure("info", stream=open(os.devnull, "w"), json=True)  # noqa: SIM115
    tmp = Path(tempfile.mkdtemp(prefix="tradingd-journal-bench-"))
    intents = durable_intents(a.intents, tmp)
    replay = replay_overhead(a.days, a.symbols, a.rounds, tmp)
    figures = {**intents, **replay,
               "target_intents_per_s": 2000, "target_overhead_pct": 15,
               "meets_targets": intents["intents_per_s"] >= 2000
               and replay["journal_overhead_pct"] < 15}
    print_table("Durable order intents (fsync each, WAL synchronous=FULL)", [
        ("intents", intents["intents"]),
        ("intents/s", float(intents["intents_per_s"])),
        ("latency p50 (us)", intents["intent_p50_us"]),
        ("latency p99 (us)", intents["intent_p99_us"]),
    ])
    print_table(f"Replay throughput, {a.symbols} symbols x {a.days} days of real 1-min bars "
                f"(best of {a.rounds})", [
        ("orders", replay["orders"]),
        ("bars/s without journal", float(replay["bars_per_s_without_journal"])),
        ("bars/s with journal", float(replay["bars_per_s_with_journal"])),
        ("journal overhead (%)", replay["journal_overhead_pct"]),
    ])
    print_json(figures)


if __name__ == "__main__":
    main()
