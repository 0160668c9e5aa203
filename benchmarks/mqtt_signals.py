"""External signals through a real Mosquitto on loopback: publish -> gate decision.

Starts its own Mosquitto on a free port. A producer in a *separate process* publishes
single-signal JSON payloads (QoS 1, up to 1,000 awaiting their PUBACK) to
``bench/signals``; each carries its send time (``time.monotonic_ns``, the same
CLOCK_MONOTONIC in both processes) in its id. The producer is Debian's ``mosquitto_pub
-l`` (mosquitto-clients, one message per line of its stdin) by default: about 13 µs of CPU
a message against paho's 130-150, so the two shared cores go to the daemon side
(``--producer paho`` for paho; the table shows each phase's producer CPU). The
daemon side is the product's path, wired as ``daemon.app.Daemon`` wires it for one
account from the shipped ``config/execution.yaml``: the real ``MqttBridge`` (validation,
dedup, ``Inbox.offer``) -> the inbox pump onto the daemon's bus -> routing
(``engine.routing.Accounts``) -> the account's ``TradingSystem`` from
``engine.system.build_system`` (sizing, the risk gate with every check and XNYS market
hours, the order manager, the journal, session stats). The latency of a signal ends when
the gate decides (``OrderApproved`` or ``OrderDenied``). Every decision is journaled and
handed to the bridge to publish (denials within ``lossy_events_per_sec``); the log is the
daemon's own JSON log at ``info``, written to a file (every decision is a line). The
broker is a sink that acknowledges and cancels each order at once: the books stay flat.

Risk limits are the shipped ones by default: the gate approves the day's first orders
and then denies with its order-count reasons (``MAX_ORDERS_*``), each decision a full
evaluation. ``--relaxed`` lifts the order-count limits and allows shorts, each symbol's
signals alternating long and short: most signals become orders (each intent fsynced
before its broker call, three order events to publish instead of one denial); a signal
whose symbol still has an open order on the same side is denied ``DUPLICATE_ORDER``.

Phases, after ``prime`` (one signal per symbol, whose orders are left to finish) and
``warm`` (2,000 signals): ``blast`` (N one-signal messages as fast as the producer can
publish them:
throughput, from the first send to the last decision), ``paced`` (one-signal messages at a
steady rate well below capacity: the latency of a signal through Mosquitto when nothing
queues) and ``batch`` (N signals as 10-symbol batch messages, the model's shape, as fast
as possible). "CPU µs/signal" is this process's CPU time per signal, i.e. the daemon
side's cost whatever else the machine is running; its inverse is the capacity of one free
core. ``--profile FILE`` runs the blast phase under cProfile.

Targets: at least 5,000 signals/s (the one-signal blast is the headline figure); paced
p99 under 5 ms. Prints a table, then as its LAST line one JSON object with the figures.
Run: ``python benchmarks/mqtt_signals.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import multiprocessing as mp
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import percentile, print_json
from config.settings import Settings, load_settings
from daemon.app import install_uvloop
from engine.accounts import account_specs
from engine.routing import Accounts
from engine.system import TradingSystem, build_system
from kernel import logging as dlog
from kernel.broker import BrokerFill, BrokerOrder, EventSink
from kernel.bus import Bus
from kernel.clock import ReplayClock
from kernel.errors import BrokerRejected
from kernel.events import (
    BarBatch,
    Event,
    OrderApproved,
    OrderCanceled,
    OrderDenied,
    OrderIntent,
    OrderNew,
    SignalBatch,
)
from kernel.inbox import Inbox
from kernel.model import AccountSnapshot, BrokerPosition, MarketClock
from risk.market import MarketHours
from signals.mqtt import MqttBridge
from tests.signals.mosquitto import Mosquitto, find_binary

NOW = datetime(2024, 7, 1, 15, 0, tzinfo=UTC)
SYMBOLS = [f"S{i:02d}" for i in range(53)]
PRICES = dict(zip(SYMBOLS, np.linspace(20.0, 400.0, len(SYMBOLS)).round(2).tolist(),
                  strict=True))
PREFIX = "bench"


# -- producer (separate process) ---------------------------------------------------------


BATCH = 10  # symbols per message in the batch phase
PRODUCER_WINDOW = 1000  # QoS 1 publishes awaiting their PUBACK at once
SETTLE_S = 0.3  # for mosquitto_pub to connect before the first (time-stamped) line


@dataclass(frozen=True)
class ProducerSpec:
    """``kind``: ``mosquitto_pub`` (Debian's mosquitto-clients, ``-l``: one message per
    line of its stdin, fed by the producer process) or ``paho`` (paho-mqtt with its
    network thread). ``alternate``: each symbol's signals alternate between long and
    short (``--relaxed``: every signal then asks for a different position than the one its
    symbol's working orders are heading for, so each needs an order)."""

    kind: str = "mosquitto_pub"
    alternate: bool = False


def _strength(index: int, alternate: bool) -> float:
    return -0.2 if alternate and (index // len(SYMBOLS)) % 2 else 0.2


def _payload(phase: str, seq: int, alternate: bool = False) -> bytes:
    stamp = f"{phase}-{seq}-{time.monotonic_ns()}"
    if phase == "batch":  # signal ids become "<id>:<symbol>"
        picks = [(i, SYMBOLS[i % len(SYMBOLS)]) for i in range(seq * BATCH, (seq + 1) * BATCH)]
        strengths = ",".join(f'"{s}":{_strength(i, alternate)}' for i, s in picks)
        prices = ",".join(f'"{s}":{PRICES[s]}' for _, s in picks)
        return (f'{{"id":"{stamp}","ts":"{NOW.isoformat()}","source":"bench",'
                f'"signals":{{{strengths}}},"prices":{{{prices}}}}}').encode()
    sym = SYMBOLS[seq % len(SYMBOLS)]
    return (f'{{"id":"{stamp}","symbol":"{sym}","strength":{_strength(seq, alternate)},'
            f'"price":{PRICES[sym]},"ts":"{NOW.isoformat()}","source":"bench"}}').encode()


def producer_main(port: int, phase: str, n: int, rate: float | None, spec: ProducerSpec,
                  cpu_s: Any) -> None:
    """Publish ``n`` messages (QoS 1), as fast as possible or at ``rate`` per second, and
    put the CPU seconds it took (this process and its children) into ``cpu_s``.

    Either way a deep in-flight window keeps the producer from waiting on
    acknowledgements; mosquitto_pub costs the two shared cores about a tenth of what paho
    does per message (13 µs against 130-150 µs, measured alone against Mosquitto)."""
    def payload(i: int) -> bytes:
        return _payload(phase, i, spec.alternate)

    def cpu() -> float:  # this process (from here on: not its imports) and its children
        own, kids = (resource.getrusage(who)
                     for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    cpu0 = cpu()
    if spec.kind == "paho":
        _produce_paho(port, phase, n, rate, payload)
    else:
        _produce_mosquitto_pub(port, phase, n, rate, payload)
    cpu_s.value = cpu() - cpu0


def _produce_mosquitto_pub(port: int, phase: str, n: int, rate: float | None,
                           payload: Callable[[int], bytes]) -> None:
    cmd = [find_binary("mosquitto_pub"), "-h", "127.0.0.1", "-p", str(port),
           "-t", f"{PREFIX}/signals", "-q", "1", "-l", "-M", str(PRODUCER_WINDOW),
           "--nodelay", "-i", f"bench-producer-{phase}"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    stdin = proc.stdin
    assert stdin is not None
    time.sleep(SETTLE_S)  # lines are stamped when written: connected first
    t0 = time.monotonic()
    for i in range(n):
        if rate is not None:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        stdin.write(payload(i) + b"\n")
        if rate is not None:
            stdin.flush()
    stdin.close()  # mosquitto_pub exits once every message is acknowledged
    if proc.wait(60) != 0:
        raise RuntimeError(f"mosquitto_pub exited with {proc.returncode}")


def _produce_paho(port: int, phase: str, n: int, rate: float | None,
                  payload: Callable[[int], bytes]) -> None:
    import socket

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-producer-{phase}")
    c.max_inflight_messages_set(PRODUCER_WINDOW)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    sock = c.socket()
    assert isinstance(sock, socket.socket)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.loop_start()
    topic = f"{PREFIX}/signals"
    t0 = time.monotonic()
    info = None
    for i in range(n):
        if rate is not None:
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        info = c.publish(topic, payload(i), qos=1)
    if info is not None:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


# -- daemon side -------------------------------------------------------------------------


@dataclass
class Recorder:
    """Gate decisions, with the latency from each signal's send time."""

    latencies_us: dict[str, list[float]] = field(default_factory=dict)
    first_send_ns: dict[str, int] = field(default_factory=dict)
    last_decision_ns: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)

    def on_decision(self, event: OrderApproved | OrderDenied) -> None:
        now = time.monotonic_ns()
        sig = event.intent.signal
        assert sig is not None
        phase, _, rest = sig.id.split("-", 2)
        sent = rest.split(":", 1)[0]
        self.latencies_us.setdefault(phase, []).append((now - int(sent)) / 1000)
        self.first_send_ns[phase] = min(self.first_send_ns.get(phase, now), int(sent))
        self.last_decision_ns[phase] = now
        key = "approved" if isinstance(event, OrderApproved) else event.reason
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def count(self, phase: str) -> int:
        return len(self.latencies_us.get(phase, []))


class SinkBroker:
    """A ``kernel.broker.Broker`` that acknowledges every order and cancels it at once, so
    the books stay flat and every signal gets a full gate evaluation. Reports go through
    ``sink`` (the system's order manager), as a broker stream's would."""

    name = "bench-sink"

    def __init__(self, clock: ReplayClock, cash: Decimal) -> None:
        self.sink: EventSink | None = None
        self._clock = clock
        self._cash = cash

    async def __aenter__(self) -> SinkBroker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def submit(self, intent: OrderIntent) -> None:
        assert self.sink is not None
        cid, now = intent.client_order_id, self._clock.now()
        self.sink(OrderNew(client_order_id=cid, ts=now, broker_order_id=cid))
        self.sink(OrderCanceled(client_order_id=cid, ts=now, reason="bench"))

    async def cancel(self, client_order_id: str) -> None:
        return None

    async def cancel_all(self) -> None:
        return None

    async def replace(self, client_order_id: str, new_client_order_id: str, *,
                      qty: int | None = None, limit_price: Decimal | None = None,
                      stop_price: Decimal | None = None) -> None:
        raise BrokerRejected("replace is not supported by the benchmark's sink")

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        return None

    async def open_orders(self) -> list[BrokerOrder]:
        return []

    async def fills_since(self, since: datetime) -> list[BrokerFill]:
        return []

    async def positions(self) -> list[BrokerPosition]:
        return []

    async def account(self) -> AccountSnapshot:
        return AccountSnapshot(ts=self._clock.now(), cash=self._cash, equity=self._cash,
                               buying_power=self._cash)

    async def clock(self) -> MarketClock | None:
        return None


def load_bench_settings(state_dir: Path, url: str, *, relaxed: bool) -> Settings:
    """The shipped ``config/execution.yaml`` with the benchmark's broker, state and
    queues: the inbound queues are deep enough that a 30,000-message blast is measured,
    not refused with QUEUE_FULL."""
    risk: dict[str, Any] = {}
    if relaxed:  # every signal passes the order counts, shorts allowed (see ProducerSpec)
        risk = {"max_orders_per_symbol_day": 10**7, "max_orders_per_day": 10**8,
                "max_orders_per_second": 10**8, "max_orders_per_execution": 10**7,
                "allow_shorts": True}
    return load_settings(environ={}, overrides={
        "daemon": {"state_dir": str(state_dir)},
        "feed": {"queue_size": 4096},
        "broker": {"paper": {"initial_cash": "1000000"}},
        "risk": risk,
        "signals": {"demo": {"enabled": False}, "mqtt": {
            "enabled": True, "url": url, "prefix": PREFIX, "inbound_queue": 65536,
            "dedup_window": 10**6, "heartbeat_secs": 1.0}},
    })


@dataclass
class DaemonSide:
    """What ``daemon.app.Daemon`` wires for one account with MQTT on: the account's
    ``TradingSystem`` from ``build_system``, the routing table, the daemon's bus, the
    inbox and the bridge."""

    system: TradingSystem
    accounts: Accounts
    bus: Bus
    inbox: Inbox
    bridge: MqttBridge

    async def pump(self) -> None:
        """``Daemon._pump``: every inbox message onto the daemon's bus."""
        while True:
            msg = await self.inbox.get()
            if isinstance(msg, Event):
                self.bus.publish(msg)

    def route(self, batch: SignalBatch) -> None:
        """``Daemon._route``: signal batches to the accounts that trade them."""
        for system, share in self.accounts.route(batch):
            system.on_signals(share)


def build_daemon_side(settings: Settings, clock: ReplayClock) -> DaemonSide:
    market = MarketHours()
    (spec,) = account_specs(settings.accounts, broker=settings.broker, risk=settings.risk,
                            state_dir=settings.daemon.state_dir, environ={})
    sink = SinkBroker(clock, settings.broker.paper.initial_cash)
    system = build_system(spec, daemon=settings.daemon, clock=clock, environ={},
                          broker=sink, market=market)
    sink.sink = system.orders.on_report
    accounts = Accounts(settings.routing, settings.accounts)
    accounts.add(system)
    bus, inbox = Bus(), Inbox(settings.feed.queue_size)
    bridge = MqttBridge(settings.signals.mqtt, clock=clock, bus=system.bus, inbox=inbox,
                        orders=system.orders.orders,
                        trading_state=str(system.risk_state.state))
    side = DaemonSide(system, accounts, bus, inbox, bridge)
    bus.subscribe(BarBatch, system.on_bars)
    bus.subscribe(SignalBatch, side.route)
    market.warm()
    return side


def the_bars() -> BarBatch:
    prices = np.array([PRICES[s] for s in SYMBOLS])
    return BarBatch(ts=NOW, symbols=tuple(SYMBOLS), open=prices, high=prices, low=prices,
                    close=prices, volume=np.full(len(SYMBOLS), 1e6))


@dataclass(frozen=True)
class PhaseResult:
    signals_per_s: float  # first send to last decision
    cpu_us: float  # this process's CPU per signal: the daemon side's cost
    producer_cpu_us: float  # the producer's CPU per message (its process and children)
    no_order: int  # signals that needed no order (see run_phase)


QUIET_S = 0.5  # no decision for this long, everything received and taken: the phase is over


async def run_phase(port: int, side: DaemonSide, rec: Recorder, phase: str, n: int,
                    rate: float | None, producer: ProducerSpec,
                    per_message: int = 1) -> PhaseResult:
    """Run one producer to the end and wait for every signal's gate decision.

    A signal repeated while its symbol's order still works (the order manager's worker
    has not submitted it yet) asks for the position that order heads for: the sizer
    places nothing and there is no decision. Bursts read in one go make that possible
    for the shipped limits' ten approvals (``prime`` lets them finish first) and with
    ``--relaxed``; such signals are counted as ``no_order`` once every message of the
    phase has been received and taken from the inbox and no decision came for QUIET_S."""
    bridge = side.bridge
    ctx = mp.get_context("spawn")
    cpu_s = ctx.Value("d", -1.0)
    proc = ctx.Process(target=producer_main, args=(port, phase, n, rate, producer, cpu_s),
                       daemon=True)
    received0 = bridge.stats.received
    proc.start()
    t0, cpu0 = time.monotonic(), time.process_time()
    expected = n * per_message
    seen, quiet_since = 0, time.monotonic()
    while rec.count(phase) < expected:
        now = time.monotonic()
        if now - t0 > 120 or (not proc.is_alive() and proc.exitcode):
            raise RuntimeError(f"phase {phase}: {rec.count(phase)} of {expected} decided, producer "
                               f"exit {proc.exitcode}, bridge {bridge.stats.as_dict()}")
        if rec.count(phase) != seen:
            seen, quiet_since = rec.count(phase), now
        elif (bridge.stats.received - received0 == n and not len(side.inbox)
              and now - quiet_since > QUIET_S):
            break
        await asyncio.sleep(0.01)
    decided = rec.count(phase)
    cpu_us = (time.process_time() - cpu0) * 1e6 / decided
    await asyncio.to_thread(proc.join, 10)
    if proc.exitcode != 0:
        raise RuntimeError(f"phase {phase}: producer exit {proc.exitcode}")
    span_s = (rec.last_decision_ns[phase] - rec.first_send_ns[phase]) / 1e9
    return PhaseResult(decided / span_s, cpu_us, cpu_s.value * 1e6 / n, expected - decided)


async def prime(port: int, side: DaemonSide, rec: Recorder, producer: ProducerSpec) -> None:
    """One signal per symbol, then wait until no order works: with the shipped limits
    these are the day's only approvals, and from then on every signal gets a decision."""
    await run_phase(port, side, rec, "prime", len(SYMBOLS), None, producer)
    t0 = time.monotonic()
    while side.system.orders.open_orders():
        if time.monotonic() - t0 > 30:
            raise RuntimeError(f"orders still open: {side.system.orders.open_orders()}")
        await asyncio.sleep(0.01)


@contextlib.contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """cProfile the block into ``path`` (and print its top functions) when asked."""
    if path is None:
        yield
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(path)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


async def bench(n_blast: int, n_paced: int, rate: float, relaxed: bool,
                profile: Path | None, log_to: Path | None,
                kind: str) -> dict[str, float]:
    producer = ProducerSpec(kind, alternate=relaxed)
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "mosquitto") as broker:
        log_path = log_to or Path(tmp) / "daemon.log"
        with log_path.open("w") as log_file:
            dlog.configure("info", stream=log_file, json=True)  # as `tradingd run` does
            settings = load_bench_settings(Path(tmp) / "state", broker.url, relaxed=relaxed)
            clock, rec = ReplayClock(NOW), Recorder()
            side = build_daemon_side(settings, clock)
            side.system.bus.subscribe(OrderApproved, rec.on_decision)
            side.system.bus.subscribe(OrderDenied, rec.on_decision)
            async with side.system, side.bridge:
                await side.system.start_books()
                side.bus.publish(the_bars())
                pump = asyncio.create_task(side.pump(), name="bus.pump")
                await side.bridge.wait_connected()
                await prime(broker.port, side, rec, producer)
                await run_phase(broker.port, side, rec, "warm", 2000, None, producer)
                gc.collect()  # as the daemon does once started: long-lived objects out of
                gc.freeze()  # the cyclic collector's way
                with profiled(profile):
                    blast = await run_phase(broker.port, side, rec, "blast", n_blast, None,
                                            producer)
                paced = await run_phase(broker.port, side, rec, "paced", n_paced, rate, producer)
                batch = await run_phase(broker.port, side, rec, "batch", n_blast // BATCH,
                                        None, producer, per_message=BATCH)
                pump.cancel()
                rejected = side.bridge.stats.rejected_total
                failure = side.system.failure or side.bus.failure
            log_file.flush()
            lines = sum(1 for _ in log_path.open())
        if failure is not None:
            raise RuntimeError(f"the daemon side failed: {failure!r}")
    return report(rec, {"blast": blast, "paced": paced, "batch": batch}, rate, rejected,
                  relaxed, lines, kind)


def report(rec: Recorder, phases: dict[str, PhaseResult], rate: float,
           rejected: int, relaxed: bool, log_lines: int, producer: str) -> dict[str, float]:
    limits = "relaxed (order counts lifted, shorts allowed)" if relaxed else "shipped"
    print(f"MQTT signals -> gate decision, real Mosquitto on loopback, {producer} producer in "
          f"its own process, QoS 1, {len(SYMBOLS)} symbols, {limits} risk limits, "
          f"build_system wiring, JSON log at info ({log_lines:,} lines)")
    print(f"gate decisions: {dict(sorted(rec.outcomes.items()))}")
    print(f"{'phase':<8}{'n':>8}{'signals/s':>12}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
          f"{'max ms':>9}{'CPU µs/signal':>15}{'producer µs/msg':>17}{'no order':>10}")
    out: dict[str, float] = {}
    for phase, r in phases.items():
        rate_s, cpu_us = r.signals_per_s, r.cpu_us
        xs = [x / 1000 for x in rec.latencies_us[phase]]
        p50, p90, p99 = statistics.median(xs), percentile(xs, 90), percentile(xs, 99)
        print(f"{phase:<8}{len(xs):>8}{rate_s:>12,.0f}{p50:>9.3f}{p90:>9.3f}{p99:>9.3f}"
              f"{max(xs):>9.3f}{cpu_us:>15.1f}{r.producer_cpu_us:>17.1f}{r.no_order:>10}")
        out |= {f"{phase}_signals_per_s": round(rate_s, 1), f"{phase}_p50_ms": round(p50, 3),
                f"{phase}_p90_ms": round(p90, 3), f"{phase}_p99_ms": round(p99, 3),
                f"{phase}_max_ms": round(max(xs), 3), f"{phase}_n": float(len(xs)),
                f"{phase}_cpu_us_per_signal": round(cpu_us, 1),
                f"{phase}_producer_cpu_us_per_message": round(r.producer_cpu_us, 1),
                f"{phase}_no_order": float(r.no_order)}
    capacity = 1e6 / out["blast_cpu_us_per_signal"]
    print(f"(paced at {rate:,.0f} signals/s; daemon-side capacity on one free core "
          f"~{capacity:,.0f} signals/s; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"targets: >= 5,000 signals/s, paced p99 < 5 ms)")
    out |= {"signals_per_s": out["blast_signals_per_s"], "p50_ms": out["paced_p50_ms"],
            "p99_ms": out["paced_p99_ms"], "paced_rate": rate, "rejected": float(rejected),
            "target_signals_per_s": 5000.0, "target_p99_ms": 5.0,
            "relaxed_limits": float(relaxed), "log_lines": float(log_lines),
            "paho_producer": float(producer == "paho"),
            "capacity_signals_per_cpu_s": round(capacity, 1),
            "cpus": float(os.cpu_count() or 0), "load_1m": round(os.getloadavg()[0], 2),
            "ok": float(out["blast_signals_per_s"] >= 5000 and out["paced_p99_ms"] < 5.0)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--blast", type=int, default=30_000,
                   help="signals in the blast phase (and in the batch phase)")
    p.add_argument("--paced", type=int, default=5_000, help="signals in the paced phase")
    p.add_argument("--rate", type=float, default=1_000.0, help="paced rate (signals/s)")
    p.add_argument("--relaxed", action="store_true",
                   help="lift the order-count limits (and allow shorts) so that most signals "
                        "become orders (three QoS 1 events per signal instead of one)")
    p.add_argument("--profile", type=Path, metavar="FILE",
                   help="cProfile the blast phase into FILE and print its top functions")
    p.add_argument("--log", type=Path, metavar="FILE",
                   help="keep the daemon's JSON log here (default: a temporary file)")
    p.add_argument("--producer", choices=("mosquitto_pub", "paho"), default="mosquitto_pub",
                   help="the producer's MQTT client (paho costs the shared cores ~10x more "
                        "CPU per message)")
    a = p.parse_args()
    figures = install_uvloop()(bench(a.blast, a.paced, a.rate, a.relaxed, a.profile, a.log,
                                     a.producer))
    print_json(figures)


if __name__ == "__main__":
    main()
