"""``tradingd``: the command line.

Exit codes: 0 success, 1 the daemon failed (a component or handler raised; for
``preflight``: a check failed, the session cannot trade), 2 invalid configuration or
usage, 3 no running daemon to talk to.

The read-only commands (``status``, ``audit``, ``report``) find the state directory by
itself when none is given and the configured one has no daemon state: the newest
directory under it that has (``make run`` uses ``state/demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from kernel.errors import ConfigError

EXIT_FAILED, EXIT_CONFIG, EXIT_NO_DAEMON = 1, 2, 3


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML config (default: the shipped one)")
    p.add_argument("--state-dir", type=Path, help="state directory (journal, status)")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if getattr(args, "state_dir", None):
        o.setdefault("daemon", {})["state_dir"] = str(args.state_dir)
    if getattr(args, "broker", None):
        o.setdefault("broker", {})["kind"] = args.broker
    if getattr(args, "replay", None):
        o.setdefault("feed", {}).update(source="replay", replay=str(args.replay))
    if getattr(args, "speed", None):
        o.setdefault("feed", {})["speed"] = args.speed
    if getattr(args, "session", None):
        o.setdefault("session", {})["repeat"] = args.session
    return o


def _settings(args: argparse.Namespace) -> Any:
    from config.settings import load_settings

    return load_settings(args.config, _overrides(args))


def _masked(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {k: _masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(v) for v in value]
    return value if isinstance(value, bool | int | float | str | None) else str(value)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    resolved = _masked(settings.model_dump())
    if args.json:
        print(json.dumps(resolved, indent=2))
    else:
        import yaml

        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        print("# config OK", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from daemon.startup import freeze_built, hold_gc

    hold_gc()  # until just before READY (daemon/startup.py)
    import structlog

    from daemon.lock import StateDirLock, StateDirLocked
    from kernel import logging as dlog

    settings = _settings(args)
    dlog.configure(settings.daemon.log_level)
    for secret in (settings.broker.alpaca.key_id, settings.broker.alpaca.secret_key):
        if secret is not None:
            dlog.register_secret(secret.get_secret_value())
    try:  # before anything touches the state directory: one daemon per directory
        lock = StateDirLock(settings.daemon.state_dir).acquire()
    except StateDirLocked as exc:
        structlog.get_logger("daemon.cli").error(
            "daemon.state_dir_locked", holder_pid=exc.holder, state_dir=str(exc.state_dir))
        print(f"tradingd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    from daemon.app import Daemon, install_uvloop
    from daemon.operations import run_operated

    runner = install_uvloop()

    async def main() -> int:
        daemon = Daemon(settings)
        freeze_built()
        # HTTP, metrics and alerts around the session (daemon/operations.py).
        return await run_operated(daemon)

    try:
        code: int = runner(main())
    except (ConfigError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug: one structured line with the traceback in it
        import structlog

        structlog.get_logger("daemon.cli").critical("daemon.crashed", error=repr(exc),
                                                    exc_info=exc)
        return EXIT_FAILED
    finally:
        lock.release()
    return code


_STATE_MARKERS = ("journal.sqlite", "status.json", "control.sock")


def _has_state(d: Path) -> bool:
    return any((d / m).exists() for m in _STATE_MARKERS)


def _state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir``, else the configured one; when that holds no daemon state, the
    newest directory under it that does (said on stderr, so it is never a surprise)."""
    if args.state_dir:
        return Path(args.state_dir)
    configured = Path(_settings(args).daemon.state_dir)
    if _has_state(configured) or not configured.is_dir():
        return configured
    found = [d for d in configured.iterdir() if d.is_dir() and _has_state(d)]
    if not found:
        return configured
    newest = max(found, key=lambda d: max((d / m).stat().st_mtime for m in _STATE_MARKERS
                                          if (d / m).exists()))
    print(f"tradingd: no daemon state in {configured}/; using {newest} (the newest under "
          "it; --state-dir to choose)", file=sys.stderr)
    return newest


def cmd_status(args: argparse.Namespace) -> int:
    from daemon.control import request
    from daemon.status_file import read_status

    state_dir = _state_dir(args)
    try:
        status = asyncio.run(request(state_dir, "status"))
        status.pop("ok", None)
    except ConnectionError:
        last = read_status(state_dir)
        if last is None:
            print(f"no daemon running and no status in {state_dir}", file=sys.stderr)
            return EXIT_NO_DAEMON
        status = {"running": False, **last}
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        _print_status(status)
    return 0


def _print_status(s: dict[str, Any]) -> None:
    print(f"running: {s.get('running')}  state: {s.get('trading_state')}  "
          f"mode: {s.get('mode')}  broker: {s.get('broker')}  clock: {s.get('clock')}")
    print(f"cash: {s.get('cash')}  equity: {s.get('equity')}  "
          f"gross: {s.get('gross_exposure')}  realized: {s.get('realized_pnl')}  "
          f"unrealized: {s.get('unrealized_pnl')}")
    positions = s.get("positions") or {}
    if positions:
        print(f"{'symbol':<8}{'qty':>8}{'avg_price':>12}{'mkt_value':>12}{'unreal':>10}")
        for sym, p in positions.items():
            print(f"{sym:<8}{p['qty']:>8}{p['avg_price']:>12}{p['market_value']:>12}"
                  f"{p['unrealized_pnl']:>10}")
    session = s.get("session")
    if session:
        print(f"session: {session['phase']} ({session['session']})  next: "
              f"{session['next_phase']} at {session['next_at']}"
              + ("  early close" if session.get("early_close") else ""))
    print(f"open orders: {len(s.get('open_orders') or [])}")
    print("counters: " + json.dumps(s.get("counters", {})))


def _open_journal(args: argparse.Namespace) -> Any:
    from engine.journal import JOURNAL_FILE, Journal
    from kernel import logging as dlog

    # stdout carries the answer (tables, JSON, CSV); log lines go to stderr.
    dlog.configure("warning", stream=sys.stderr)

    state_dir = _state_dir(args)
    if getattr(args, "account", None):
        from engine.accounts import ACCOUNTS_DIR

        state_dir = state_dir / ACCOUNTS_DIR / args.account
    path = state_dir / JOURNAL_FILE
    if not path.exists():
        print(f"tradingd: no journal at {path}", file=sys.stderr)
        return None
    return Journal(path).open(read_only=True)  # tools never write a daemon's journal


def _since(text: str | None) -> Any:
    from datetime import UTC, datetime

    if text is None:
        return None
    ts = datetime.fromisoformat(text)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def cmd_audit(args: argparse.Namespace) -> int:
    from daemon import audit

    journal = _open_journal(args)
    if journal is None:
        return EXIT_CONFIG
    try:
        rows = audit.select(journal, symbol=args.symbol, order=args.order, signal=args.signal,
                            since=_since(args.since))
        print(audit.render(rows, args.format))
        if args.order and args.format == "table":
            print(f"outcome: {audit.outcome(rows)}")
    finally:
        journal.close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from daemon import report

    journal = _open_journal(args)
    if journal is None:
        return EXIT_CONFIG
    try:
        day = args.date or report.last_day(journal)
        if day is None:
            print("tradingd: the journal has no trading day yet", file=sys.stderr)
            return EXIT_CONFIG
        rep = report.build(journal, day)
    finally:
        journal.close()
    out = args.out or journal.path.parent / f"report-{day}.html"
    out.write_text(report.render_html(rep))
    print(report.render_text(rep))
    print(f"html: {out}")
    return 0


def cmd_preflight(args: argparse.Namespace) -> int:
    """Read-only readiness checks; exit 0 only when the session can trade."""
    import os

    from daemon import preflight
    from kernel import logging as dlog

    dlog.configure("warning", stream=sys.stderr)  # stdout carries the report
    try:
        settings = _settings(args)
    except ConfigError as exc:
        report = preflight.config_error_report(exc)
        code = EXIT_CONFIG
    else:
        for secret in (settings.broker.alpaca.key_id, settings.broker.alpaca.secret_key):
            if secret is not None:
                dlog.register_secret(secret.get_secret_value())
        report = asyncio.run(preflight.run_preflight(settings, environ=dict(os.environ)))
        code = 0 if report.ready else EXIT_FAILED
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.render_text())
    return code


def cmd_train(args: argparse.Namespace) -> int:
    from signals import train  # numpy, pandas, xgboost: for this command only

    code: int = train.run(args)
    return code


def _control(cmd: str, arg_names: tuple[str, ...] = ()) -> Any:
    """A subcommand that sends ``cmd`` to the running daemon and prints its reply."""

    def run(args: argparse.Namespace) -> int:
        from daemon.control import request

        state_dir = args.state_dir or _settings(args).daemon.state_dir
        payload = {k: getattr(args, k) for k in (*arg_names, "account")
                   if getattr(args, k, None) is not None}
        try:
            reply = asyncio.run(request(state_dir, cmd, payload, timeout=args.timeout))
        except ConnectionError as exc:
            print(f"tradingd: {exc}", file=sys.stderr)
            return EXIT_NO_DAEMON
        print(json.dumps(reply, indent=2, default=str))
        return 0 if reply.get("ok") else EXIT_FAILED

    return run


_OPERATOR_COMMANDS = (
    ("halt", "stop new orders now (tracking and reconciliation go on)", ("why",)),
    ("resume", "clear an operator/file/signal halt (never an environment KILL_SWITCH)", ("why",)),
    ("emergency-stop", "cancel all open orders and halt", ("why",)),
    ("liquidate", "cancel all, close every position with reduce-only orders, halt", ("why",)),
    ("pending", "list orders waiting for approval (SEMI_AUTO / MANUAL)", ()),
    ("approve", "approve a pending order by id", ("id",)),
    ("reject", "reject a pending order by id", ("id",)),
    ("mode", "show or set the execution mode", ("mode",)),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tradingd", description="Event-driven trading daemon "
                                     "(paper trading by default).")
    sub = parser.add_subparsers(dest="command", required=True)
    _session_commands(sub)
    _journal_commands(sub)
    p = sub.add_parser("check-config", help="validate and print the resolved config")
    _add_config_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check_config)

    from signals.train_options import add_arguments

    p = sub.add_parser("train", help="train the XGBoost signal model on minute bars")
    add_arguments(p)
    p.set_defaults(func=cmd_train)
    _operator_commands(sub)
    return parser


Subparsers = Any  # argparse's _SubParsersAction


def _session_commands(sub: Subparsers) -> None:
    p = sub.add_parser("run", help="run a trading session")
    _add_config_args(p)
    p.add_argument("--broker", choices=["paper", "alpaca", "ib"])
    p.add_argument("--replay", type=Path, help="replay bars from this CSV")
    p.add_argument("--speed", help="'max' or a multiple of real time (e.g. 60)")
    p.add_argument("--session", choices=["once", "forever"],
                   help="exit after the first session's close, or run day after day "
                        "(session.repeat)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("preflight", help="can the session trade? read-only checks "
                       "(exit 0 only when it can)")
    _add_config_args(p)
    p.add_argument("--broker", choices=["paper", "alpaca", "ib"])
    p.add_argument("--replay", type=Path, help="the replay the run would play")
    p.add_argument("--json", action="store_true", help="one JSON object with every check")
    p.set_defaults(func=cmd_preflight)

    p = sub.add_parser("status", help="show positions, cash, state and counters")
    _add_config_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)


def _journal_commands(sub: Subparsers) -> None:
    p = sub.add_parser("audit", help="what happened to a signal or an order, and why")
    _add_config_args(p)
    p.add_argument("--account", help="the journal of this account (multi-account daemons)")
    p.add_argument("--symbol", help="only rows about this symbol")
    p.add_argument("--order", help="one order by client_order_id (with its signal)")
    p.add_argument("--signal", help="one signal by id (with the orders it led to)")
    p.add_argument("--since", help="ISO time, e.g. 2024-03-01T14:30 (UTC unless given)")
    p.add_argument("--format", choices=["table", "json", "csv"], default="table")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("report", help="the day's orders, fills, slippage, rejects, P&L")
    _add_config_args(p)
    p.add_argument("--account", help="the journal of this account (multi-account daemons)")
    p.add_argument("--date", help="New York trading day YYYY-MM-DD (default: the last)")
    p.add_argument("--out", type=Path, help="HTML file (default: <state_dir>/report-DAY.html)")
    p.set_defaults(func=cmd_report)


def _operator_commands(sub: Subparsers) -> None:
    for name, help_text, arg_names in _OPERATOR_COMMANDS:
        p = sub.add_parser(name, help=help_text)
        _add_config_args(p)
        p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait")
        p.add_argument("--account", help="one account of a multi-account daemon (default: all)")
        if "why" in arg_names:
            p.add_argument("--why", help="reason, recorded in the log and journal")
        if "id" in arg_names:
            p.add_argument("id")
        if "mode" in arg_names:
            p.add_argument("mode", nargs="?",
                           choices=["FULL_AUTO", "SEMI_AUTO", "MANUAL", "RESEARCH", "EMERGENCY"])
        p.set_defaults(func=_control(name, arg_names))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"tradingd: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return code


if __name__ == "__main__":
    raise SystemExit(main())
