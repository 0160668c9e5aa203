"""``tradingd preflight``: can today's session trade? Read-only checks, one row each.

Each check is a small function returning a ``Check`` (name, ok/warn/fail, the observed
value, and what to do about it). The session can trade when no check fails; warnings
are worth reading. The checks, in order:

``config`` (valid; what runs), ``feed`` (where bars come from: the broker's live feed
with ``feed.symbols``; a replay against a broker account only on a loopback URL),
``credentials`` (keys present and accepted; a refusal names APCA_API_KEY_ID and
APCA_API_SECRET_KEY), ``account`` (ACTIVE, not blocked, buying power), ``symbols`` (each
``feed.symbols`` listed and tradable at the broker), ``market_clock`` (the broker's clock
against the exchange calendar, the next open and close), ``clock_skew`` (the broker's
time against ours), ``journal`` (its books and open orders against the broker's),
``kill_switch`` (environment ``KILL_SWITCH``, the kill-switch file), ``trading_state``
(the state the journal will restore: HALTED fails), ``model`` (model file and feature
version, when model signals are on), ``mqtt`` (the broker reachable, when enabled),
``state_dir`` (writable, free disk).

Read-only by construction: the broker is queried over REST only (``rest_only``: no
trade stream, which Alpaca allows once per account and a running daemon holds), no
order manager exists, the journal is opened read-only, the state directory is not
written, and the MQTT probe connects under its own client id and publishes nothing.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import structlog

from config.settings import Settings
from engine.journal import JOURNAL_FILE, Journal
from engine.recovery import load_state, restore_books
from engine.session import CheckStatus, TradingCalendar
from kernel.broker import BrokerOrder
from kernel.clock import Clock, WallClock
from kernel.errors import BrokerAuthError, BrokerError, ConfigError
from kernel.model import AccountSnapshot, BrokerPosition, MarketClock
from kernel.time import NEW_YORK
from portfolio import Portfolio
from risk.killswitch import ENV_VAR, env_engaged

log = structlog.get_logger("daemon.preflight")

S = CheckStatus
KEY_VARS = "APCA_API_KEY_ID / APCA_API_SECRET_KEY"
MIN_FREE_BYTES, WARN_FREE_BYTES = 100 * 2**20, 2**30
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass(frozen=True, slots=True)
class Check:
    """One row: ``observed`` is what was seen, ``detail`` what it means or what to do."""

    name: str
    status: CheckStatus
    observed: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class PreflightReport:
    ts: datetime
    checks: tuple[Check, ...]

    @property
    def ready(self) -> bool:
        """The session can trade: no check failed."""
        return all(c.status is not S.FAIL for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"ready": self.ready, "ts": self.ts.isoformat(),
                "checks": [{"name": c.name, "status": str(c.status), "observed": c.observed,
                            "detail": c.detail} for c in self.checks]}

    def render_text(self) -> str:
        lines = [f"{c.status.upper():<5} {c.name:<14} {c.observed}"
                 + (f"\n{'':20}{c.detail}" if c.detail else "") for c in self.checks]
        lines.append("ready: the session can trade" if self.ready
                     else "NOT READY: " + ", ".join(c.name for c in self.checks
                                                    if c.status is S.FAIL))
        return "\n".join(lines)


class BrokerView(Protocol):
    """What preflight reads from a broker (the Alpaca adapter in ``rest_only`` mode)."""

    async def account(self) -> AccountSnapshot: ...
    async def clock(self) -> MarketClock | None: ...
    async def positions(self) -> list[BrokerPosition]: ...
    async def open_orders(self) -> list[BrokerOrder]: ...
    async def untradable(self, symbols: list[str]) -> dict[str, str]: ...


@dataclass(slots=True)
class BrokerSeen:
    """What the broker said, for the checks that compare against it."""

    account: AccountSnapshot | None = None
    error: str = ""  # why the broker could not be asked
    rtt_secs: float = 0.0
    clock: MarketClock | None = None
    local_mid: datetime | None = None


def config_error_report(exc: ConfigError, clock: Clock | None = None) -> PreflightReport:
    """The report when the configuration does not load: one failing row."""
    now = (clock or WallClock()).now()
    return PreflightReport(now, (Check("config", S.FAIL, f"{exc.key}={exc.value!r}",
                                       exc.expected),))


async def run_preflight(settings: Settings, *, environ: Mapping[str, str],
                        clock: Clock | None = None,
                        broker: BrokerView | None = None) -> PreflightReport:
    """Every check against ``settings``; ``broker`` defaults to the configured one
    (Alpaca over REST only; the paper broker has nothing remote to ask)."""
    clock = clock or WallClock()
    checks = [_check_config(settings), _check_feed(settings)]
    async with _broker_view(settings, clock, broker) as view:
        seen = await ask(view, clock) if view is not None else None
        checks += await broker_checks(settings, view, seen, clock)
        checks.append(await _check_journal(settings, view, seen))
    checks += [_check_kill_switch(settings, environ), _check_trading_state(settings)]
    checks += await local_checks(settings)
    report = PreflightReport(clock.now(), tuple(checks))
    log.info("preflight.done", ready=report.ready,
             failed=[c.name for c in checks if c.status is S.FAIL],
             warned=[c.name for c in checks if c.status is S.WARN])
    return report


async def broker_checks(settings: Settings, view: BrokerView | None, seen: BrokerSeen | None,
                        clock: Clock) -> list[Check]:
    """``credentials``, ``account``, ``symbols``, ``market_clock``, ``clock_skew``:
    what the broker says (``seen`` from ``ask``), against the settings and the calendar."""
    cal = TradingCalendar(settings.session)
    return [_check_credentials(settings, seen), _check_account(settings, seen),
            await _check_symbols(settings, view, seen), _check_market_clock(cal, clock, seen),
            _check_skew(settings, seen)]


async def local_checks(settings: Settings) -> list[Check]:
    """``model``, ``mqtt``, ``state_dir``: what this host must have."""
    return [_check_model(settings), await _check_mqtt(settings), _check_state_dir(settings)]


def head_checks(settings: Settings) -> list[Check]:
    """``config`` and ``feed``: what runs."""
    return [_check_config(settings), _check_feed(settings)]


def _broker_view(settings: Settings, clock: Clock, given: BrokerView | None
                 ) -> AbstractAsyncContextManager[BrokerView | None]:
    if given is not None or settings.broker.kind != "alpaca":
        return nullcontext(given)
    from brokers.alpaca import AlpacaBroker

    a = settings.broker.alpaca
    if a.key_id is None or a.secret_key is None:
        return nullcontext(None)
    return AlpacaBroker(a, clock=clock, sink=lambda _: None).rest_only()


async def ask(view: BrokerView, clock: Clock) -> BrokerSeen:
    """Ask the broker once for its account and clock (timed, for the skew check)."""
    seen = BrokerSeen()
    try:
        seen.account = await view.account()
        t0 = time.monotonic()
        before = clock.now()
        seen.clock = await view.clock()
        seen.rtt_secs = time.monotonic() - t0
        seen.local_mid = before + (clock.now() - before) / 2
    except BrokerAuthError as exc:
        seen.error = f"auth: {exc}"
    except BrokerError as exc:
        seen.error = f"{type(exc).__name__}: {exc}"
    return seen


def _skipped(name: str, settings: Settings, seen: BrokerSeen | None) -> Check | None:
    """The row of a broker check that could not run, else None."""
    if settings.broker.kind != "alpaca":
        return Check(name, S.OK, "paper broker (built in)", "nothing remote to check")
    if seen is None or seen.account is None:
        return Check(name, S.FAIL, "not checked", "needs the broker: see credentials")
    return None


# -- configuration and feed ----------------------------------------------------------------


def _check_config(s: Settings) -> Check:
    return Check("config", S.OK,
                 f"broker={s.broker.kind} mode={s.daemon.mode} feed={s.feed.source} "
                 f"execution_mode={s.daemon.execution_mode} at_close={s.session.at_close}")


def is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOOPBACK


def _check_feed(s: Settings) -> Check:
    source = s.feed.replay or "the demo day"
    if s.broker.kind != "alpaca":
        if s.feed.source == "alpaca":
            return Check("feed", S.OK, f"{len(s.feed.symbols)} symbols from Alpaca's data")
        return Check("feed", S.OK, f"replay of {source} on the paper broker")
    # A replay against a real broker account never loads (config.settings refuses it).
    if s.feed.source == "replay":
        return Check("feed", S.OK,
                     f"replay of {source} against the loopback {s.broker.alpaca.base_url}")
    return Check("feed", S.OK, f"{len(s.feed.symbols)} symbols from the {s.broker.alpaca.feed} "
                 f"feed: {', '.join(s.feed.symbols[:10])}"
                 + (" ..." if len(s.feed.symbols) > 10 else ""))


# -- the broker ------------------------------------------------------------------------


def _check_credentials(s: Settings, seen: BrokerSeen | None) -> Check:
    if s.broker.kind != "alpaca":
        return Check("credentials", S.OK, "paper broker: no keys")
    a = s.broker.alpaca
    if a.key_id is None or a.secret_key is None:
        return Check("credentials", S.FAIL, "missing", f"set {KEY_VARS} (the environment "
                     "file of the unit); keys never go in the YAML")
    assert seen is not None
    if seen.error.startswith("auth:"):
        return Check("credentials", S.FAIL, f"refused by {a.base_url}",
                     f"check {KEY_VARS}: {seen.error[len('auth: '):]}")
    if seen.error:
        return Check("credentials", S.FAIL, f"broker unreachable at {a.base_url}", seen.error)
    return Check("credentials", S.OK, f"accepted by {a.base_url}")


def _check_account(s: Settings, seen: BrokerSeen | None) -> Check:
    skipped = _skipped("account", s, seen)
    if skipped is not None:
        return skipped
    assert seen is not None and seen.account is not None
    a = seen.account
    observed = (f"status {a.status}, buying power {a.buying_power}, equity {a.equity}"
                + (", TRADING BLOCKED" if a.trading_blocked else ""))
    if a.status.upper() != "ACTIVE" or a.trading_blocked:
        return Check("account", S.FAIL, observed, "the broker will refuse orders")
    if a.buying_power < s.risk.min_order_notional:
        return Check("account", S.FAIL, observed,
                     f"below risk.min_order_notional ({s.risk.min_order_notional})")
    return Check("account", S.OK, observed)


async def _check_symbols(s: Settings, view: BrokerView | None, seen: BrokerSeen | None) -> Check:
    skipped = _skipped("symbols", s, seen)
    if skipped is not None:
        return skipped
    symbols = list(s.feed.symbols)
    if not symbols:
        return Check("symbols", S.FAIL, "feed.symbols is empty",
                     "a live session needs feed.symbols (TRADINGD_FEED__SYMBOLS)")
    assert view is not None
    try:
        bad = await view.untradable(symbols)
    except BrokerError as exc:
        return Check("symbols", S.FAIL, "not checked", str(exc))
    if bad:
        return Check("symbols", S.FAIL, ", ".join(f"{k}: {v}" for k, v in bad.items()),
                     "remove them from feed.symbols: orders for them would be refused")
    return Check("symbols", S.OK, f"{len(symbols)} listed and tradable")


def _check_market_clock(cal: TradingCalendar, clock: Clock, seen: BrokerSeen | None) -> Check:
    now = clock.now()
    w = cal.where(now)
    up = w.upcoming
    plan = (f"{w.phase} ({w.session.date}); next {w.next_phase} at {_ny(w.next_at)}; "
            f"session {up.date} {_hm(up.open)}-{_hm(up.close)} New York"
            + (" (early close)" if up.early_close else ""))
    if seen is None or seen.clock is None:
        return Check("market_clock", S.OK, plan, f"{cal.cfg.calendar} calendar (no broker clock)")
    agreement = cal.cross_check(seen.clock)
    b = seen.clock
    observed = (f"broker {'open' if b.is_open else 'closed'}, next open {_ny(b.next_open)}, "
                f"next close {_ny(b.next_close)}; calendar {plan}")
    detail = "; ".join(agreement.problems) or f"agrees with {cal.cfg.calendar}"
    return Check("market_clock", agreement.status, observed, detail)


def _check_skew(s: Settings, seen: BrokerSeen | None) -> Check:
    skipped = _skipped("clock_skew", s, seen)
    if skipped is not None:
        return skipped
    assert seen is not None
    if seen.clock is None or seen.local_mid is None:
        return Check("clock_skew", S.WARN, "the broker has no clock")
    skew = abs((seen.clock.ts - seen.local_mid).total_seconds())
    slack = seen.rtt_secs / 2
    observed = f"{skew:.3f} s (request round trip {seen.rtt_secs:.3f} s)"
    cfg = s.session
    if skew - slack > cfg.max_skew_fail_secs:
        return Check("clock_skew", S.FAIL, observed, "fix the host clock (NTP)")
    if skew - slack > cfg.max_skew_secs:
        return Check("clock_skew", S.WARN, observed, f"above {cfg.max_skew_secs} s: check NTP")
    return Check("clock_skew", S.OK, observed)


# -- the journal -------------------------------------------------------------------------


def _journal_books(path: Path) -> tuple[dict[str, int], set[str]] | None:
    """Positions and open order ids as the daemon would rebuild them; None when the
    journal has no books yet."""
    journal = Journal(path).open(read_only=True)
    try:
        state = load_state(journal)
        if state.books is None:
            return None
        book = Portfolio(Decimal(0), publish=lambda _: None)
        restore_books(book, state.books)
        held = {sym: p.qty for sym, p in book.positions.items() if p.qty}
        return held, {cid for cid, o in state.orders.items() if o.is_open}
    finally:
        journal.close()


async def _check_journal(s: Settings, view: BrokerView | None, seen: BrokerSeen | None) -> Check:
    path = s.daemon.state_dir / JOURNAL_FILE
    if not path.exists():
        return Check("journal", S.OK, "no journal yet", "the first start adopts the broker's "
                     "books")
    skipped = _skipped("journal", s, seen)
    if skipped is not None:
        return Check("journal", skipped.status, skipped.observed,
                     skipped.detail if s.broker.kind == "alpaca"
                     else "the paper account lives in the state dir: reconciled at start")
    assert view is not None
    books = _journal_books(path)
    if books is None:
        return Check("journal", S.OK, "no books journaled yet", "the broker's are adopted")
    held, open_j = books
    broker_held = {p.symbol: p.qty for p in await view.positions() if p.qty}
    open_b = {o.client_order_id for o in await view.open_orders()}
    return _compare_books(held, open_j, broker_held, open_b)


def _compare_books(held: dict[str, int], open_j: set[str], broker_held: dict[str, int],
                   open_b: set[str]) -> Check:
    differ = sorted(sym for sym in held.keys() | broker_held.keys()
                    if held.get(sym, 0) != broker_held.get(sym, 0))
    done_while_down = open_j - open_b  # filled or cancelled while the daemon was down
    unknown = open_b - open_j
    observed = (f"{len(held)} positions, {len(open_j)} open orders in the journal; "
                f"broker {len(broker_held)} positions, {len(open_b)} open orders")
    if unknown:
        return Check("journal", S.FAIL, observed,
                     f"open at the broker, unknown to the journal: {sorted(unknown)[:5]} "
                     "(unexplained drift: the daemon would adopt the broker and escalate)")
    if differ and not done_while_down:
        diffs = ", ".join(f"{k} journal {held.get(k, 0)} broker {broker_held.get(k, 0)}"
                          for k in differ[:5])
        return Check("journal", S.FAIL, observed, f"positions differ: {diffs} (unexplained "
                     "drift: the daemon would adopt the broker and escalate)")
    if differ or done_while_down:
        return Check("journal", S.WARN, observed,
                     f"{len(done_while_down)} journaled orders are no longer open at the "
                     "broker: their fills are booked by the reconciliation at start")
    return Check("journal", S.OK, observed, "agrees with the broker")


# -- local state ---------------------------------------------------------------------------


def _check_kill_switch(s: Settings, environ: Mapping[str, str]) -> Check:
    engaged = []
    if env_engaged(environ):
        engaged.append(f"{ENV_VAR}={environ.get(ENV_VAR)!r} in the environment")
    path = s.daemon.kill_switch_path
    if path.exists():
        engaged.append(f"kill-switch file {path}")
    if engaged:
        return Check("kill_switch", S.FAIL, "; ".join(engaged),
                     f"engaged: the daemon halts before it trades (unset {ENV_VAR} in the "
                     "environment file, remove the file)")
    return Check("kill_switch", S.OK, f"disengaged ({ENV_VAR} unset, no {path})")


def _check_trading_state(s: Settings) -> Check:
    path = s.daemon.state_dir / JOURNAL_FILE
    if not path.exists():
        return Check("trading_state", S.OK, "ACTIVE (no journal)")
    journal = Journal(path).open(read_only=True)
    try:
        row = journal.last("TradingStateChanged")
    finally:
        journal.close()
    if row is None:
        return Check("trading_state", S.OK, "ACTIVE")
    p = row.payload
    observed = f"{p.get('new')} since {row.ts.isoformat()} by {p.get('who')}: {p.get('why')}"
    if p.get("new") == "HALTED":
        return Check("trading_state", S.FAIL, observed,
                     "the session starts HALTED (restored from the journal): `tradingd "
                     "resume` once it runs")
    if p.get("new") == "REDUCING":
        return Check("trading_state", S.WARN, observed, "the session starts reduce-only")
    return Check("trading_state", S.OK, observed)


def _check_model(s: Settings) -> Check:
    m = s.signals.model
    if not m.enabled:
        return Check("model", S.OK, "model signals off")
    if m.model_path is None:
        return Check("model", S.FAIL, "signals.model.model_path unset")
    from signals.artifacts import load_model_dir

    try:
        loaded = load_model_dir(m.model_path, m.features_path, m.metadata_path)
    except ConfigError as exc:
        return Check("model", S.FAIL, f"{exc.key}={exc.value!r}", exc.expected)
    meta = loaded.metadata
    ranges = meta.get("ranges", {})
    return Check("model", S.OK, f"{m.model_path}: feature_version {meta.get('feature_version')}, "
                 f"trained {ranges.get('train')}, validated {ranges.get('validation')}")


async def _check_mqtt(s: Settings) -> Check:
    cfg = s.signals.mqtt
    if not cfg.enabled:
        return Check("mqtt", S.OK, "off")
    import ssl

    import aiomqtt

    # Its own client id: reusing the daemon's would disconnect a running daemon.
    client = aiomqtt.Client(
        cfg.host, cfg.port, identifier=f"{cfg.identifier}-preflight", username=cfg.username,
        password=cfg.password.get_secret_value() if cfg.password else None,
        tls_context=ssl.create_default_context() if cfg.tls else None, timeout=5)
    try:
        async with client:
            pass
    except aiomqtt.MqttError as exc:
        return Check("mqtt", S.FAIL, f"{cfg.url}: {exc}", "signals.mqtt is enabled: start "
                     "the MQTT broker or fix TRADINGD_MQTT_URL / credentials")
    return Check("mqtt", S.OK, f"{cfg.url} accepted the connection")


def _check_state_dir(s: Settings) -> Check:
    d = s.daemon.state_dir
    probe = d if d.exists() else next((p for p in d.parents if p.exists()), Path("."))
    if not os.access(probe, os.W_OK | os.X_OK):
        return Check("state_dir", S.FAIL, f"{probe} not writable",
                     "the journal, status and reports live here (StateDirectory= in the unit)")
    free = shutil.disk_usage(probe).free
    observed = f"{d}{'' if d.exists() else ' (created at start)'}, {free / 2**30:.1f} GiB free"
    if free < MIN_FREE_BYTES:
        return Check("state_dir", S.FAIL, observed, "under 100 MiB free: the journal may fail")
    if free < WARN_FREE_BYTES:
        return Check("state_dir", S.WARN, observed, "under 1 GiB free")
    return Check("state_dir", S.OK, observed)


def _hm(t: datetime) -> str:
    return t.astimezone(NEW_YORK).strftime("%H:%M")


def _ny(t: datetime | None) -> str:
    return t.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M %Z") if t is not None else "none"


__all__ = ["BrokerSeen", "BrokerView", "Check", "PreflightReport", "ask", "broker_checks",
           "config_error_report", "head_checks", "is_loopback", "local_checks",
           "run_preflight"]
