"""Round-trip latency of the IB adapter against the fake TWS on loopback.

Run: ``python -m benchmarks.ib_roundtrip [--orders 300] [--fill-parts 1] [--interval-ms 30]``
(from the repo root).

The fake TWS runs as its own process (``python -m tests.fake_tws``), so its work is not
on this process's CPU. ``IbBroker`` (the real ib_async 2.1 client, TCP on 127.0.0.1)
submits N market orders one at a time; per order the benchmark measures, on the event
loop's thread with ``time.perf_counter_ns``, from just before ``submit(intent)`` to the
moment the sink receives ``OrderNew`` (the ack) and the final ``OrderFilled`` (the last
execution joined with its commission report).

The adapter's own share is measured, not estimated:

* ``submit_own``: the wall time of ``submit`` minus the time inside ib_async's
  ``placeOrder`` (encoding, socket write) and minus the wait for TWS's first answer.
  What remains is our code: intent mapping, the orderRef check, shadow-order
  bookkeeping, logging.
* ``event_own``: for each TWS message about the order, the time our chained handler
  takes after ib_async decoded it (view mapping, de-duplication, the commission join,
  the FSM check, the sink call).

``own_per_order`` = ``submit_own`` + the ``event_own`` of that order's messages (orders
run one at a time, so each message belongs to exactly one order). The rest is the
fake, the loopback TCP and ib_async's framing and decoding. Orders start
``--interval-ms`` apart: ib_async paces requests at 45 a second (TWS allows 50), and
back-to-back orders would measure that pacing (a stall of up to a second), not latency.
structlog is filtered to WARNING, so rendering log lines is not measured. The last line
printed is one JSON object with all figures (microseconds).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from benchmarks._common import REPO, percentile, print_json
from brokers.config import IbConfig
from brokers.ib import IbBroker
from kernel.clock import WallClock
from kernel.events import Event, OrderFilled, OrderIntent, OrderNew
from kernel.model import OrderSide, OrderType, TimeInForce


def _start_fake(fill_parts: int) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_tws", "--port", "0", "--price", "AAPL=170.50",
         "--cash", "100000000", "--fill-parts", str(fill_parts)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    found = re.search(r"127\.0\.0\.1:(\d+) control", proc.stdout.readline())
    assert found is not None, "the fake TWS did not start"
    return proc, int(found.group(1))


async def run(n: int, port: int, interval: float) -> dict[str, list[float]]:
    new_at: dict[str, int] = {}
    fill_at: dict[str, int] = {}
    done: dict[str, asyncio.Event] = {}
    remaining: dict[str, int] = {}

    def sink(event: Event) -> None:
        now = time.perf_counter_ns()
        if isinstance(event, OrderNew):
            new_at.setdefault(event.client_order_id, now)
        elif isinstance(event, OrderFilled):
            cid = event.client_order_id
            remaining[cid] -= event.fill.qty
            if remaining[cid] == 0:
                fill_at[cid] = now
                done[cid].set()

    cfg = IbConfig(port=port, client_id=21, request_timeout_secs=5.0)
    start: dict[str, int] = {}
    submit_own: list[int] = []
    events_own: list[int] = []
    async with IbBroker(cfg, clock=WallClock(), sink=sink) as broker:
        t = broker.timings
        first_event = len(t.event_ns)
        for i in range(n):
            cid = f"bench-{i:05d}"
            done[cid], remaining[cid] = asyncio.Event(), 10
            intent = OrderIntent(
                client_order_id=cid, symbol="AAPL",
                side=OrderSide.BUY if i % 2 == 0 else OrderSide.SELL, qty=10,
                order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY,
                ts=datetime.now(UTC), reference_price=Decimal("170.50"))
            e0 = len(t.event_ns)
            began = time.perf_counter_ns()
            start[cid] = began
            await broker.submit(intent)
            submit_own.append(t.submit_ns[-1] - t.sdk_ns[-1] - t.wait_ns[-1])
            await asyncio.wait_for(done[cid].wait(), 5)
            await asyncio.sleep(0.005)  # the order's last messages (Filled status) arrive
            events_own.append(sum(list(t.event_ns)[e0:]))
            await asyncio.sleep(max(0.0, interval - (time.perf_counter_ns() - began) / 1e9))
        event_own = list(t.event_ns)[first_event:]
    us = 1000.0
    return {
        "intent_to_new": [(new_at[c] - start[c]) / us for c in start],
        "intent_to_fill": [(fill_at[c] - start[c]) / us for c in start],
        "submit_own": [x / us for x in submit_own],
        "event_own": [x / us for x in event_own],
        "own_per_order": [(s + e) / us for s, e in zip(submit_own, events_own, strict=True)],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--orders", type=int, default=300)
    p.add_argument("--fill-parts", type=int, default=1)
    p.add_argument("--interval-ms", type=float, default=30.0, help="between order starts")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    proc, port = _start_fake(args.fill_parts)
    try:
        samples = asyncio.run(run(args.orders, port, args.interval_ms / 1000))
    finally:
        proc.terminate()
        proc.wait(10)
    res: dict[str, Any] = {k: {"median": round(statistics.median(v), 1),
                               "p99": round(percentile(v, 99), 1), "n": len(v)}
                           for k, v in samples.items()}
    fill_med = res["intent_to_fill"]["median"]
    share = res["own_per_order"]["median"] / fill_med if fill_med else 0.0
    print(f"IB adapter round trip: {args.orders} market orders of 10 shares, "
          f"{args.fill_parts} execution(s) each, {args.interval_ms:g} ms apart, "
          "fake TWS process on loopback (µs)")
    print(f"{'measure':<16}{'median':>10}{'p99':>10}{'n':>6}")
    for k, v in res.items():
        print(f"{k:<16}{v['median']:>10.1f}{v['p99']:>10.1f}{v['n']:>6}")
    print(f"adapter's own share of intent->fill (median): {share:.1%}")
    print_json({"benchmark": "ib_roundtrip", "orders": args.orders,
                "fill_parts": args.fill_parts, "interval_ms": args.interval_ms,
                "own_share_of_fill_median": round(share, 4),
                **res})


if __name__ == "__main__":
    main()
