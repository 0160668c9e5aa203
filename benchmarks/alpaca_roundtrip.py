"""Round-trip latency of the Alpaca adapter against the loopback emulator.

Run: ``python -m benchmarks.alpaca_roundtrip [--orders 200]`` (from the repo root).

Submits N market orders one at a time through ``AlpacaBroker`` (real alpaca-py SDK,
real HTTP and websockets on 127.0.0.1) and measures, per order, from just before
``submit(intent)`` to the moment the sink receives ``OrderNew`` and the final
``OrderFilled`` (``time.perf_counter_ns``, on the event loop's thread).

The adapter's own share is measured, not estimated:

* ``submit_own``: the wall time of ``await broker.submit()`` minus the time spent inside
  the SDK call itself. The SDK call is timed *inside the worker thread* around
  ``TradingClient.submit_order`` (request model, ``requests``, HTTP over loopback, the
  emulator, JSON and response handling of the SDK). What remains is our code on the loop
  (intent mapping, shadow-order bookkeeping, logging, rate budget) plus the
  ``asyncio.to_thread`` hand-off both ways.
* ``event_own``: for each stream update, the time from entering our loop callback to
  returning from it (mapping, FSM legality check, de-duplication, the sink call).
* ``hop``: from the SDK's handler call in the stream thread to the start of our loop
  callback (``call_soon_threadsafe`` scheduling); reported on its own because it is
  the price of the SDK's threading model rather than of our logic.

Everything else (emulator matching, websocket framing, the SDK's stream parsing) is the
"emulator/SDK" remainder. The client-side rate budget is raised for the run (200/min
would otherwise pace 200 orders over a minute, which measures the budget, not latency).
``own_per_order`` = ``submit_own`` + the ``event_own`` of that order's updates (orders
run one at a time, so each update is attributed to exactly one order). structlog is
filtered to WARNING for the run, so console rendering of info logs is not measured.
The last line printed is one JSON object with all figures (microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import time
from datetime import UTC, datetime
from decimal import Decimal

import structlog
from pydantic import SecretStr

from brokers.alpaca import AlpacaBroker
from brokers.config import AlpacaConfig
from kernel.clock import WallClock
from kernel.events import Event, OrderEvent, OrderFilled, OrderIntent, OrderNew
from kernel.model import OrderSide, OrderType, TimeInForce
from tests.alpaca_emulator import EmulatorThread


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def _us(ns: list[int]) -> list[float]:
    return [n / 1000 for n in ns]


async def run(n: int) -> dict[str, dict[str, float]]:
    new_at: dict[str, int] = {}
    fill_at: dict[str, int] = {}
    done: dict[str, asyncio.Event] = {}

    def sink(event: Event) -> None:
        now = time.perf_counter_ns()
        if isinstance(event, OrderEvent):
            cid = event.client_order_id
            if isinstance(event, OrderNew):
                new_at.setdefault(cid, now)
            elif isinstance(event, OrderFilled):
                fill_at[cid] = now
                done[cid].set()

    with EmulatorThread(key_id="BENCHKEY", secret_key="BENCHSECRET") as emu:
        emu.set_price("AAPL", "170.50")
        cfg = AlpacaConfig(key_id=SecretStr("BENCHKEY"), secret_key=SecretStr("BENCHSECRET"),
                           base_url=emu.base_url, data_url=emu.base_url,
                           rate_limit_per_min=1_000_000, request_timeout_secs=5.0)
        start: dict[str, int] = {}
        submit_wall: list[int] = []
        submit_io: list[int] = []
        events_own: list[int] = []
        async with AlpacaBroker(cfg, clock=WallClock(), sink=sink) as broker:
            t = broker.timings
            t.event_ns.clear()
            t.hop_ns.clear()
            for i in range(n):
                cid = f"bench-{i:05d}"
                done[cid] = asyncio.Event()
                intent = OrderIntent(
                    client_order_id=cid, symbol="AAPL", side=OrderSide.BUY if i % 2 == 0
                    else OrderSide.SELL, qty=1, order_type=OrderType.MARKET,
                    time_in_force=TimeInForce.DAY, ts=datetime.now(UTC),
                    reference_price=Decimal("170.50"))
                k, e0 = len(t.io_ns), len(t.event_ns)
                start[cid] = time.perf_counter_ns()
                await broker.submit(intent)
                submit_wall.append(time.perf_counter_ns() - start[cid])
                submit_io.append(sum(t.io_ns[k:]))
                await asyncio.wait_for(done[cid].wait(), 5)
                await asyncio.sleep(0)  # let the callback that set ``done`` record its time
                events_own.append(sum(t.event_ns[e0:]))  # this order's stream updates
            event_own, hop = list(t.event_ns), list(t.hop_ns)
        to_new = [new_at[c] - start[c] for c in start if c in new_at]
        to_fill = [fill_at[c] - start[c] for c in start]
        submit_own = [w - io for w, io in zip(submit_wall, submit_io, strict=True)]
        per_order_own = [s + e for s, e in zip(submit_own, events_own, strict=True)]
        fig = {
            "intent_to_new": _us(to_new),
            "intent_to_fill": _us(to_fill),
            "submit_call": _us(submit_wall),
            "submit_sdk_io": _us(submit_io),
            "submit_own": _us(submit_own),
            "event_own": _us(event_own),
            "event_hop": _us(hop),
            "own_per_order": _us(per_order_own),
        }
        return {k: {"median": round(statistics.median(v), 1), "p99": round(_pct(v, 99), 1),
                    "n": len(v)} for k, v in fig.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--orders", type=int, default=200)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    res = asyncio.run(run(args.orders))
    fill_med = res["intent_to_fill"]["median"]
    own_med = res["own_per_order"]["median"]
    print(f"Alpaca adapter round trip, {args.orders} market orders, loopback emulator (µs)")
    print(f"{'measure':<16}{'median':>10}{'p99':>10}{'n':>6}")
    for k, v in res.items():
        print(f"{k:<16}{v['median']:>10.1f}{v['p99']:>10.1f}{v['n']:>6}")
    share = own_med / fill_med if fill_med else 0.0
    print(f"adapter's own share of intent->fill (median): {share:.1%}")
    print(json.dumps({"orders": args.orders, "own_share_of_fill_median": round(share, 4),
                      **res}))


if __name__ == "__main__":
    main()
