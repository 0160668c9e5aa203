"""Soak: the daemon against the Alpaca emulator, both as processes, under faults and kills.

The emulator replays demo minute bars as live minutes, again and again as the following
minutes for as long as the soak runs; ``tradingd run --broker alpaca``
trades them through the real alpaca-py SDK while this script

* injects faults through the emulator's ``/_control`` API the whole time: 5xx after the
  order took effect, 504 before it, 429 storms, hung requests (longer than the
  daemon's request timeout), 422 validation refusals, dropped / duplicated / reordered
  trade-stream events, asynchronous rejections and cut streams;
* SIGKILLs the daemon at random points (one life in five during start-up or
  recovery, the others a random while after ``daemon.ready``) and restarts it;

until at least ``--faults`` faults have fired at the emulator and ``--kills`` kills were
done. A last life then trades without faults until its orders are settled and is
stopped with SIGTERM. Checked against the emulator's books and the journal:

* duplicate orders: a ``client_order_id`` or a signal at the broker more than once, or
  a broker order the journal has no intent for;
* lost fills: an execution at the broker that the journal never booked (fills are
  identified by order and cumulative quantity), and fills booked twice;
* books equal: positions and cash of ``tradingd status`` equal the broker's.

Peak RSS of every life is read from ``/proc/<pid>/status`` (VmHWM) just before it is
stopped. The last line printed is one JSON object. Usage::

    python benchmarks/soak.py [--kills 100] [--faults 1000] [--seed 7]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, print_json, print_table

from engine.journal import JOURNAL_FILE, Journal
from signals import demodata

SYMBOLS = [f"DEMO{i:02d}" for i in range(20)]
KEYS = {"APCA_API_KEY_ID": "SOAKKEY", "APCA_API_SECRET_KEY": "SOAK-SECRET-0123456789"}
DAEMON_ENV = {
    "TRADINGD_FEED__SOURCE": "alpaca",
    "TRADINGD_FEED__SYMBOLS": json.dumps(SYMBOLS),
    "TRADINGD_SIGNALS__DEMO__LOOKBACK": "3",
    "TRADINGD_SIGNALS__DEMO__EVERY_BARS": "2",
    "TRADINGD_RISK__MAX_ORDERS_PER_SYMBOL_DAY": "100000",
    "TRADINGD_RISK__MAX_ORDERS_PER_DAY": "1000000",
    "TRADINGD_RISK__MAX_DAILY_LOSS": "0.5",
    "TRADINGD_RISK__MAX_DRAWDOWN": "0.5",
    "TRADINGD_RISK__SESSION_DRAWDOWN": "0.5",
    "TRADINGD_BROKER__ALPACA__REQUEST_TIMEOUT_SECS": "2",
    "TRADINGD_BROKER__ALPACA__STREAM_SILENCE_SECS": "5",
    "TRADINGD_BROKER__ALPACA__RETRY_BACKOFF_SECS": "0.1",
    "TRADINGD_BROKER__ALPACA__RETRY_BACKOFF_MAX_SECS": "1",
    "TRADINGD_BROKER__ALPACA__RECONNECT_BACKOFF_SECS": "0.2",
    "TRADINGD_BROKER__ALPACA__RATE_LIMIT_PER_MIN": "100000",
    "TRADINGD_DAEMON__RECONCILE_INTERVAL_SECS": "3",
    "TRADINGD_DAEMON__EXECUTION_TIMEOUT_SECS": "15",
    "TRADINGD_HTTP__LISTEN": "127.0.0.1:0",  # not the fixed port of a daemon beside it
    "PYTHONUNBUFFERED": "1",
}
REFUSALS = ("qty must be a whole number of shares", "limit_price must be > 0",
            "asset DEMO is not tradable", "order would exceed the position limit")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADINGD_", "APCA_"))}
    return {**env, **KEYS, **extra}


class Emulator:
    """The emulator process and its control API."""

    def __init__(self, csv: Path, bar_interval: float, log: Path) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.alpaca_emulator", "--port", "0", "--bars", str(csv),
             "--bar-interval", str(bar_interval), "--rebase-now", "--wait-subscriber", "--loop",
             "--fill-parts", "2", "--key-id", KEYS["APCA_API_KEY_ID"],
             "--secret-key", KEYS["APCA_API_SECRET_KEY"]],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        found = re.search(r"127\.0\.0\.1:(\d+)", self.proc.stdout.readline())
        assert found is not None, "the emulator did not start"
        self.base = f"http://127.0.0.1:{found.group(1)}"

    def control(self, name: str, **kwargs: Any) -> None:
        req = urllib.request.Request(f"{self.base}/_control/{name}",
                                     data=json.dumps(kwargs).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def snapshot(self, what: str = "snapshot") -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/_control/{what}", timeout=30) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()


def arm_random_fault(emu: Emulator, rng: random.Random) -> str:
    """One fault of a random kind; returns its kind."""
    kind = rng.choice(["after_effect", "gateway_before", "storm", "hung", "refusal",
                       "drop_event", "duplicate", "reorder", "reject", "cut"])
    post = {"method": "POST", "path": "/v2/orders"}
    match kind:
        case "after_effect":
            emu.control("fail_next", n=1, status=rng.choice([500, 502, 503, 504]),
                        after_effect=True, **post)
        case "gateway_before":
            emu.control("fail_next", n=1, status=504, **post)
        case "storm":
            emu.control("fail_next", n=rng.randint(2, 3), status=429, path="/v2/*")
        case "hung":
            emu.control("delay_next", n=1, seconds=2.5, path="/v2/*",
                        method=rng.choice(["GET", "POST"]))
        case "refusal":
            emu.control("refuse_next_orders", n=1, message=rng.choice(REFUSALS))
        case "drop_event":
            emu.control("drop_events", n=1, event=rng.choice(["partial_fill", "fill", "new"]))
        case "duplicate":
            emu.control("duplicate_events", n=rng.randint(1, 3))
        case "reorder":
            emu.control("reorder_events", n=rng.randint(2, 4))
        case "reject":
            emu.control("reject_next_orders", n=1, reason="soak: rejected at the venue")
        case "cut":
            emu.control("drop_stream")
    return kind


def fired(emu: Emulator) -> int:
    return sum(emu.snapshot("faults")["faults_fired"].values())


def peak_rss_mb(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) / 1024 if m else None


def spawn(emu: Emulator, state: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--broker", "alpaca",
             "--state-dir", str(state)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env=_env(APCA_API_BASE_URL=emu.base, APCA_API_DATA_URL=emu.base, **DAEMON_ENV))


def wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if text in log.read_text(errors="replace"):
            return True
        time.sleep(0.05)
    return False


def lives(emu: Emulator, state: Path, logs: Path, rng: random.Random, kills: int,
          faults: int, max_minutes: float) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Kill-and-restart until ``kills`` kills and ``faults`` fired faults (or time is up:
    the figures then say how far it got)."""
    ended: list[dict[str, Any]] = []
    armed: Counter[str] = Counter()
    n = 0
    stop_at = time.monotonic() + 60 * max_minutes
    while (sum(e["end"] == "killed" for e in ended) < kills or fired(emu) < faults) \
            and time.monotonic() < stop_at:
        log = logs / f"life-{n:03d}.log"
        proc = spawn(emu, state, log)
        early = rng.random() < 0.2
        deadline = time.monotonic() + (rng.uniform(0.3, 2.0) if early else 0.0)
        if not early:
            wait_for(log, '"daemon.ready"', proc, 60)
            deadline = time.monotonic() + rng.uniform(0.5, 4.0)
        while time.monotonic() < deadline and proc.poll() is None:
            # Keep a handful armed: faults fire on the daemon's next requests/events.
            if emu.snapshot("faults")["faults_pending"] < 8:
                armed[arm_random_fault(emu, rng)] += 1
            time.sleep(rng.uniform(0.03, 0.1))
        rss = peak_rss_mb(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            end = "killed"
        else:
            end = f"exited {proc.returncode}"
        proc.wait(10)
        ended.append({"life": n, "end": end, "early": early, "peak_rss_mb": rss})
        n += 1
    return ended, armed


def final_life(emu: Emulator, state: Path, logs: Path) -> dict[str, Any]:
    """No more faults: trade until the broker has no open order, then SIGTERM."""
    emu.control("clear_faults")
    log = logs / "final.log"
    proc = spawn(emu, state, log)
    assert wait_for(log, '"daemon.ready"', proc, 60), log.read_text()[-3000:]
    time.sleep(8.0)  # a few reconciliations settle what the last kill left open
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not [o for o in emu.snapshot()["orders"]
                if o["status"] in ("new", "accepted", "partially_filled", "pending_new")]:
            break
        time.sleep(0.5)
    time.sleep(5.0)  # the last fills' reports are applied; a reconciliation runs
    rss = peak_rss_mb(proc.pid)
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    code = proc.wait(60)
    return {"end": f"exited {code}", "stop_secs": round(time.monotonic() - t0, 2),
            "peak_rss_mb": rss}


def check(state: Path, snap: dict[str, Any]) -> dict[str, Any]:
    journal = Journal(state / JOURNAL_FILE).open()
    intents = list(journal.rows(types=("OrderIntent",)))
    fills = [r.payload["fill"] for r in journal.rows(types=("OrderFilled",))]
    journal.close()
    per_cid = Counter(o["client_order_id"] for o in snap["orders"])
    journaled = {r.client_order_id for r in intents}
    signal_of = {r.client_order_id: (r.payload.get("signal") or {}).get("id") for r in intents}
    per_signal = Counter(signal_of[c] for c in per_cid if signal_of.get(c))
    ours = Counter((f["client_order_id"], f["cum_qty"]) for f in fills)
    theirs = Counter((e["client_order_id"], int(e["cum_qty"])) for e in snap["executions"])
    status = json.loads((state / "status.json").read_text())
    positions = {s: p["qty"] for s, p in status["positions"].items()}
    broker_positions = {s: int(Decimal(p["qty"])) for s, p in snap["positions"].items()
                        if Decimal(p["qty"])}
    return {
        "orders_at_broker": len(per_cid),
        "executions_at_broker": len(theirs),
        "duplicate_orders": sum(n > 1 for n in per_cid.values())
        + sum(n > 1 for n in per_signal.values()) + len(set(per_cid) - journaled),
        "lost_fills": sum(1 for k in theirs if k not in ours),
        "double_fills": sum(n - 1 for n in ours.values() if n > 1),
        "invented_fills": sum(1 for k in ours if k not in theirs),
        "books_equal": positions == broker_positions
        and Decimal(status["cash"]) == Decimal(snap["account"]["cash"]),
    }


def drift_lines(logs: Path) -> int:
    return sum(log.read_text(errors="replace").count('"reconcile.drift"')
               for log in logs.iterdir())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=100)
    p.add_argument("--faults", type=int, default=1000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--bar-interval", type=float, default=0.15, help="seconds per bar minute")
    p.add_argument("--max-minutes", type=float, default=30.0, help="stop the lives after")
    p.add_argument("--keep", action="store_true", help="keep the working directory")
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tradingd-soak-"))
    csv = demodata.write(work / "bars.csv", days=2, n_symbols=len(SYMBOLS), seed=a.seed)
    state, logs = work / "state", work / "logs"
    logs.mkdir()
    rng = random.Random(a.seed)
    t0 = time.monotonic()
    emu = Emulator(csv, a.bar_interval, work / "emulator.log")
    try:
        ended, armed = lives(emu, state, logs, rng, a.kills, a.faults, a.max_minutes)
        last = final_life(emu, state, logs)
        snap = emu.snapshot()
    finally:
        emu.stop()
    (work / "emulator.json").write_text(json.dumps(snap, indent=1))
    result = check(state, snap)
    rss = [e["peak_rss_mb"] for e in ended if e["peak_rss_mb"] is not None]
    figures = {
        "kills": sum(e["end"] == "killed" for e in ended),
        "lives": len(ended) + 1,
        "lives_exited_early": [e["end"] for e in ended if e["end"] != "killed"],
        "faults_fired": sum(snap["faults_fired"].values()),
        "faults_by_kind": dict(sorted(snap["faults_fired"].items())),
        "faults_armed": sum(armed.values()),
        **result,
        "final_life": last,
        "drift_logged": drift_lines(logs),
        "peak_rss_mb_per_restart": [round(x, 1) for x in rss],
        "peak_rss_mb_max": round(max(rss, default=0.0), 1),
        "minutes": round((time.monotonic() - t0) / 60, 1),
        "workdir": str(work),
    }
    print_table("tradingd soak against the Alpaca emulator", [
        ("SIGKILLs survived", figures["kills"]),
        ("faults fired at the emulator", figures["faults_fired"]),
        ("orders at the broker", result["orders_at_broker"]),
        ("duplicate orders", result["duplicate_orders"]),
        ("lost fills", result["lost_fills"]),
        ("fills booked twice", result["double_fills"]),
        ("books equal", "yes" if result["books_equal"] else "no"),
        ("final SIGTERM exit", last["end"]),
        ("peak RSS per restart, max (MB)", figures["peak_rss_mb_max"]),
        ("minutes", figures["minutes"]),
    ])
    if not a.keep and result["books_equal"] and not result["lost_fills"] \
            and not result["duplicate_orders"]:
        figures["workdir"] = "(removed)"
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    print_json(figures)


if __name__ == "__main__":
    main()
