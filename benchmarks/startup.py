"""Start to READY: ``tradingd run`` as systemd starts it, with the model and the Alpaca
broker against the loopback emulator, from the process spawn to its ``READY=1``.

Run: ``python benchmarks/startup.py [--runs 5] [--model DIR] [--keep] [--checkout DIR]
[--rtt SECS]`` (from the repo; ``--checkout`` runs the daemon from another source tree,
e.g. main's; ``--rtt`` makes the emulator answer each request after SECS, as a remote
broker would).

What it does, as an operator's machine would:

* the project's demo bars and a demo model, as ``make model`` makes them
  (``python -m signals.demodata ... --days 11 --symbols 50 --seed 7``, then
  ``tradingd train --bars train.csv --out model --small``), unless ``--model DIR`` names
  a model directory ``tradingd train`` wrote;
* the daemon's packages byte-compiled (``compile_bytecode``), as an installed daemon's are;
* the Alpaca emulator as a process (``tests/alpaca_emulator``) on the XNYS calendar at
  this machine's clock, with the demo day's bars, and paper keys;
* ``tradingd run`` with the systemd unit's ExecStart (``--config config/execution.yaml
  --broker alpaca --session forever --state-dir DIR``) and the shipped config plus only
  what points it at the emulator: ``APCA_API_*`` keys and URLs, ``feed.symbols`` (the
  model's 50 symbols), ``signals.model.enabled`` and ``model_path``, the HTTP listener
  on a free loopback port (the shipped 8787 may be taken on a shared machine; the HTTP
  server itself stays on, as in any live session), ``NOTIFY_SOCKET`` (an AF_UNIX
  datagram socket this script binds) and ``WATCHDOG_USEC`` (the unit's WatchdogSec=30).

Each run measures wall time from just before the spawn to the arrival of the datagram
with ``READY=1`` (``time.perf_counter``), and the CPU time (user + system) the daemon had
used by then (``/proc/PID/stat``: less sensitive to other processes on a shared machine
than wall time). The run then stops the daemon with SIGTERM and requires exit 0. The
state directory is kept across runs, as systemd keeps ``StateDirectory``: the first run
starts a fresh account, the others are restarts that recover the journal.

Phases come from the daemon's own JSON log lines: for each start-up event, its
timestamp minus the spawn time (both this machine's wall clock), median over the runs.

The run fails (exit 1) if a daemon does not reach READY within ``--timeout``, sends
READY without having loaded the model or connected the Alpaca account, or does not exit 0.
The last line is one JSON object with the figures (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from _common import REPO, print_json, print_table

from tests.alpaca_emulator.process import EmulatorProcess

KEY, SECRET = "PKSTARTUPBENCH00", "startup-bench-secret-0123456789"
GOAL_SECS = 2.0
UNIT = REPO / "systemd" / "paper-trading-session.service"
# Start-up events of the daemon's log, in the order they happen today. Others are shown
# too when they appear; these are only the ones the phase table names.
PHASES = {
    "model.loaded": "interpreter, imports, config, model loaded",
    "http.listening": "HTTP server listening",
    "daemon.start": "daemon run begins",
    "journal.opened": "journal open",
    "alpaca.started": "broker connected (trading stream)",
    "recovery.loaded": "journal recovered",
    "reconcile.ready": "reconciled with the broker",
    "portfolio.restored": "books restored",
    "alpaca.data_started": "data stream subscribed",
    "daemon.ready": "daemon.ready logged",
}


PACKAGES = ("kernel", "engine", "daemon", "brokers", "risk", "portfolio", "signals", "config")


def _tradingd(checkout: Path | None = None) -> list[str]:
    """The console script next to this Python (what the unit runs), else the module; for
    another checkout, the module from its tree."""
    script = Path(sys.executable).parent / "tradingd"
    if checkout is None and script.exists():
        return [str(script)]
    return [sys.executable, "-m", "daemon.cli"]


def compile_bytecode(tree: Path) -> None:
    """Byte-compile the daemon's packages, as an installed daemon has them (pip compiles
    site-packages at install; a source tree gets its caches on the first run where it is
    writable). Without it, a shell with PYTHONDONTWRITEBYTECODE=1, or a unit whose tree is
    read-only (ProtectSystem=strict), compiles ~90 modules from source at every start."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", *PACKAGES], cwd=tree,
                   check=True, stdout=subprocess.DEVNULL)


def unit_args(state_dir: Path) -> list[str]:
    """The systemd unit's ExecStart arguments with this checkout's config and state dir."""
    (line,) = [ln for ln in UNIT.read_text().splitlines() if ln.startswith("ExecStart=")]
    argv = line.removeprefix("ExecStart=").split()
    subst = {"/etc/tradingd/execution.yaml": str(REPO / "config" / "execution.yaml"),
             "${STATE_DIRECTORY}": str(state_dir)}
    return [subst.get(a, a) for a in argv[1:]]


def make_model(work: Path) -> tuple[Path, Path, float]:
    """Demo bars and a demo model as ``make model`` makes them; (model dir, day CSV, secs)."""
    started = time.perf_counter()
    train, day = work / "train.csv", work / "day.csv"
    subprocess.run([sys.executable, "-m", "signals.demodata", "--out", str(train),
                    "--last-day-to", str(day), "--days", "11", "--symbols", "50",
                    "--seed", "7"], cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    subprocess.run([*_tradingd(), "train", "--bars", str(train), "--out",
                    str(work / "model"), "--small"], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return work / "model", day, time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def daemon_env(base: str, model: Path, notify: Path, checkout: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TRADINGD_", "APCA_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    symbols = json.loads((model / "metadata.json").read_text())["symbols"]
    env.update(
        APCA_API_KEY_ID=KEY, APCA_API_SECRET_KEY=SECRET, APCA_API_BASE_URL=base,
        APCA_API_DATA_URL=base, TRADINGD_FEED__SYMBOLS=json.dumps(symbols),
        TRADINGD_SIGNALS__MODEL__ENABLED="true",
        TRADINGD_SIGNALS__MODEL__MODEL_PATH=str(model / "model.ubj"),
        TRADINGD_HTTP__LISTEN=f"127.0.0.1:{_free_port()}",
        NOTIFY_SOCKET=str(notify), WATCHDOG_USEC="30000000")
    return env


def _cpu_secs(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (fields 14 and 15 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_start(state: Path, env: dict[str, str], notify: Path, log: Path,
              timeout: float, checkout: Path | None = None) -> dict[str, Any]:
    """Spawn the daemon, wait for READY=1, stop it; the run's figures."""
    notify.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, log.open("wb") as out:
        sock.bind(str(notify))
        wall0 = time.time()
        t0 = time.perf_counter()
        proc = subprocess.Popen([*_tradingd(checkout), *unit_args(state)],
                                cwd=checkout or REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            ready_at, status, cpu, rss = None, "", float("nan"), float("nan")
            deadline = t0 + timeout
            while ready_at is None:
                left = deadline - time.perf_counter()
                if left <= 0 or proc.poll() is not None:
                    break
                sock.settimeout(min(left, 0.5))
                try:
                    msg = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                if "READY=1" in msg.split("\n"):
                    ready_at = time.perf_counter() - t0
                    cpu, rss = _cpu_secs(proc.pid), _rss_mb(proc.pid)
                    status = next((ln.removeprefix("STATUS=") for ln in msg.split("\n")
                                   if ln.startswith("STATUS=")), "")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"ready_secs": ready_at, "cpu_secs": cpu, "rss_mb": rss, "status": status,
            "exit": code, "events": _event_offsets(log, wall0)}


def _event_offsets(log: Path, wall0: float) -> dict[str, float]:
    """First occurrence of each logged event, in seconds after the spawn."""
    seen: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("event") and "timestamp" in rec and rec["event"] not in seen:
            ts = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
            seen[rec["event"]] = ts - wall0
        if rec.get("event") == "daemon.ready":
            break
    return seen


def check(run: dict[str, Any]) -> str | None:
    """Why this run does not count (None when it does): it measured other work."""
    ev = run["events"]
    if run["ready_secs"] is None:
        return "no READY=1 before the timeout (see the daemon log)"
    if "model.loaded" not in ev:
        return "READY without model.loaded: the model was not enabled"
    if "alpaca.started" not in ev or "reconcile.ready" not in ev:
        return "READY without the Alpaca account connected and reconciled"
    if ev.get("model.loaded", 0) > ev.get("daemon.ready", float("inf")):
        return "the model was loaded after daemon.ready"
    if run["exit"] != 0:
        return f"the daemon exited {run['exit']} on SIGTERM"
    return None


def report(runs: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    ready = [r["ready_secs"] for r in runs]
    cpu = [r["cpu_secs"] for r in runs]
    print(f"{'run':>4}  {'kind':<8}{'READY s':>9}{'CPU s':>8}{'RSS MB':>8}  status")
    for i, r in enumerate(runs, 1):
        kind = "fresh" if i == 1 else "restart"
        print(f"{i:>4}  {kind:<8}{r['ready_secs']:>9.3f}{r['cpu_secs']:>8.2f}"
              f"{r['rss_mb']:>8.1f}  {r['status']}")
    print()
    names = sorted({e for r in runs for e in r["events"]},
                   key=lambda e: statistics.median(r["events"][e] for r in runs
                                                   if e in r["events"]))
    phases: dict[str, float] = {}
    print(f"{'after spawn (median s)':>22}  {'+delta':>7}  event")
    prev = 0.0
    for name in names:
        at = statistics.median(r["events"][name] for r in runs if name in r["events"])
        phases[name] = round(at, 4)
        print(f"{at:>22.3f}  {at - prev:>+7.3f}  {name}  {PHASES.get(name, '')}")
        prev = at
    ready_med = statistics.median(ready)
    print(f"{ready_med:>22.3f}  {ready_med - prev:>+7.3f}  READY=1 datagram received")
    print()
    figures = {
        "benchmark": "startup", "runs": len(runs), "goal_secs": GOAL_SECS,
        "ready_secs": {"median": round(ready_med, 4), "min": round(min(ready), 4),
                       "max": round(max(ready), 4)},
        "cpu_secs": {"median": round(statistics.median(cpu), 3), "min": round(min(cpu), 3),
                     "max": round(max(cpu), 3)},
        "rss_mb_at_ready": round(statistics.median(r["rss_mb"] for r in runs), 1),
        "goal_met": ready_med <= GOAL_SECS, "phases_after_spawn": phases, **extra,
    }
    print_table("start to READY (model enabled, Alpaca against the emulator)", [
        ("READY median s", ready_med), ("READY min s", min(ready)),
        ("READY max s", max(ready)), ("CPU to READY median s", statistics.median(cpu)),
        ("RSS at READY MB", figures["rss_mb_at_ready"]),
        ("goal s", GOAL_SECS), ("goal met", "yes" if figures["goal_met"] else "NO"),
        ("load before/after", " / ".join(f"{x:.2f}" for x in extra["load_1min"]))])
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--model", type=Path, help="a model directory `tradingd train` wrote "
                   "(default: train the demo model first, as `make model` does)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for READY")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    p.add_argument("--rtt", type=float, default=0.0,
                   help="seconds the emulator holds each request (REST and stream "
                        "handshakes) before answering: a remote broker's round trip "
                        "(default 0: loopback)")
    p.add_argument("--checkout", type=Path, help="run the daemon from this source tree "
                   "(e.g. `git archive main` unpacked, for a before figure)")
    args = p.parse_args()
    checkout = args.checkout.resolve() if args.checkout else None
    work = Path(tempfile.mkdtemp(prefix="tradingd-startup-"))
    load_before = os.getloadavg()[0]
    extra: dict[str, Any] = {}
    try:
        if args.model is None:
            model, day, secs = make_model(work)
            extra["train_secs"] = round(secs, 2)
        else:
            model, day = args.model.resolve(), None
        compile_bytecode(checkout or REPO)
        emu_args = ["--calendar", "XNYS", "--key-id", KEY, "--secret-key", SECRET]
        if day is not None:
            emu_args = ["--bars", str(day), "--rebase-now", *emu_args]
        runs: list[dict[str, Any]] = []
        with EmulatorProcess(work / "emulator.log", *emu_args) as emu:
            if args.rtt > 0:
                emu.call("delay_next", n=10**9, seconds=args.rtt)
            notify = work / "notify.sock"
            env = daemon_env(emu.base, model, notify, checkout)
            for i in range(args.runs):
                run = one_start(work / "state", env, notify, work / f"daemon-{i + 1}.log",
                                args.timeout, checkout)
                why = check(run)
                if why is not None:
                    print(f"run {i + 1}: {why}; log: {work / f'daemon-{i + 1}.log'}",
                          file=sys.stderr)
                    args.keep = True
                    return 1
                runs.append(run)
        extra["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        extra["cpus"] = os.cpu_count()
        extra["daemon_tree"] = str(checkout or REPO)
        extra["broker_rtt_secs"] = args.rtt
        print_json(report(runs, extra))
        return 0
    finally:
        if args.keep:
            print(f"work directory kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
