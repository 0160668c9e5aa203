"""Engine configuration: the process (mode, state directory, timers, shutdown), the feed,
the trading session's schedule, the broker accounts and how signals are routed among them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kernel.config import ComponentConfig


class FeedConfig(ComponentConfig):
    """Where bars come from.

    ``source``: ``auto`` (the default) takes the broker's own data: a live session with
    Alpaca bars for a daemon with an Alpaca account, the built-in demo day for the paper
    broker. ``replay`` plays a CSV (``timestamp,symbol,open,high,low,close,volume``,
    optionally gzipped; ``tradingd run --replay FILE``); ``alpaca`` is the live Alpaca
    data stream for ``symbols``. ``speed`` (replays) is ``max`` or a multiple of real time.
    """

    source: Literal["auto", "replay", "alpaca"] = "auto"
    replay: Path | None = None
    speed: str = "max"
    queue_size: int = Field(256, ge=1)
    symbols: list[str] = Field(default_factory=list,
                               description="symbols to subscribe to (live feeds)")

    @field_validator("speed")
    @classmethod
    def _speed(cls, v: str) -> str:
        if v != "max":
            try:
                if float(v) <= 0:
                    raise ValueError
            except ValueError:
                raise ValueError("expected 'max' or a positive number (x real time)") from None
        return v


class DaemonConfig(ComponentConfig):
    """Process-wide settings.

    ``mode``: ``paper`` (default) or ``live``; live also needs TRADINGD_LIVE=1 in the
    environment. ``execution_mode``: FULL_AUTO, SEMI_AUTO, MANUAL, RESEARCH, EMERGENCY.
    """

    mode: Literal["paper", "live"] = "paper"
    execution_mode: Literal["FULL_AUTO", "SEMI_AUTO", "MANUAL", "RESEARCH", "EMERGENCY"] = (
        "FULL_AUTO"
    )
    state_dir: Path = Path("state")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    reconcile_interval_secs: float = Field(60, gt=0)
    risk_interval_secs: float = Field(10, gt=0)
    execution_timeout_secs: float = Field(30, gt=0)
    shutdown_grace_secs: float = Field(10, ge=0)
    kill_switch_file: Path | None = Field(None, description="default: <state_dir>/KILL_SWITCH")
    watchdog: bool = Field(True, description="sd_notify WATCHDOG=1 when systemd asks")
    orders_retained: int = Field(
        1000, ge=0, description="ended orders kept in memory (older ones stay in the journal)")
    reconcile_confirm_secs: float = Field(
        0.5, ge=0, description="wait before a second look confirms a difference as drift")
    reconcile_request_delay_secs: float = Field(
        0.5, ge=0, description="an adapter's reconcile request waits this long for the stream")
    connect_attempts: int = Field(
        0, ge=0, description="broker connection attempts at start; 0 = keep trying")
    connect_backoff_secs: float = Field(1.0, gt=0, description="first wait between attempts")
    connect_backoff_max_secs: float = Field(60.0, gt=0, description="longest wait (doubles)")

    @property
    def kill_switch_path(self) -> Path:
        return self.kill_switch_file or self.state_dir / "KILL_SWITCH"


ACCOUNT_NAME = r"^[a-z][a-z0-9_-]{0,31}$"


class AccountConfig(ComponentConfig):
    """One broker account of a multi-account daemon (the ``accounts`` list).

    ``kind`` picks the broker; the account's broker settings are the root ``broker``
    section's settings for that kind with ``broker`` (a mapping of keys of that kind's
    section, e.g. ``{"port": 4002, "client_id": 7}`` for IB) laid over them. Secrets are
    never written here: ``credentials`` maps a secret key of that section to the name of
    the environment variable holding it (``{"key_id": "APCA2_API_KEY_ID"}``); without it
    the root section's (``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``) apply. ``risk``
    lays keys over the root ``risk`` section for this account's own limits. ``symbols``
    are routed to this account (the routing table).
    """

    name: str = Field(pattern=ACCOUNT_NAME)
    kind: Literal["paper", "alpaca", "ib"]
    symbols: list[str] = Field(default_factory=list, description="symbols routed here")
    broker: dict[str, Any] = Field(default_factory=dict, description="over broker.<kind>")
    credentials: dict[str, str] = Field(default_factory=dict,
                                        description="secret key -> environment variable")
    risk: dict[str, Any] = Field(default_factory=dict, description="over the risk section")


class RoutingConfig(ComponentConfig):
    """Which account trades a signal's symbol.

    A symbol held (or worked) by an account stays there: its signals go to that account,
    so a position is never split or doubled across brokers. A flat symbol goes to the
    account whose ``symbols`` list has it, else to ``preferred`` (default: the first
    account). When that account cannot trade (broker disconnected, reconciling, or
    HALTED): with ``failover`` the next account of ``order`` (default: the ``accounts``
    order) that can takes it; without, the signal is refused with ``ROUTE_UNAVAILABLE``.
    """

    preferred: str | None = None
    failover: bool = True
    order: list[str] = Field(default_factory=list, description="failover order")
class SessionConfig(ComponentConfig):
    """The trading day on the exchange calendar (``engine.session``, ``engine.lifecycle``).

    Before each session: preflight ``preflight_lead_mins`` before the open (default 60),
    feature warm-up ``warmup_lead_mins`` before it (30). Trading from the open; from
    ``no_new_entries_before_close_mins`` before the close (10) the gate refuses new
    entries (``SESSION_CLOSING``; exits pass). At the close: working day orders are
    cancelled, then positions are held or flattened (``at_close``: ``hold`` | ``flatten``).
    ``repeat``: ``forever`` (the systemd unit: idle overnight, roll the day at the next
    session) or ``once`` (exit after the first session's close).

    The broker's market clock is cross-checked against the calendar: an open/closed
    disagreement fails, next open/close times further apart than
    ``clock_tolerance_secs`` (60) warn. ``max_skew_secs`` (2) is the broker clock skew
    that warns, ``max_skew_fail_secs`` (30) the one that fails. The runner re-reads the
    wall clock at least every ``max_sleep_secs`` (30), so a clock step (NTP, suspend) is
    noticed within that time.

    ``lifecycle`` (on by default) runs this day in a live session (``daemon.live``);
    off, a live session trades its feed from start to stop and the gate follows the
    broker's clock alone (a venue without sessions; tests against an always-open
    emulator). A replay never runs it. A failed preflight halts the accounts it failed
    for (``who: preflight``) and is re-checked every ``preflight_retry_secs`` (60) until
    the close; when it passes, that halt (and only that one) is lifted. At the close,
    cancels and flatten orders get ``close_timeout_secs`` (30) per round to finish,
    flatten tries ``flatten_rounds`` (3) rounds.
    """

    lifecycle: bool = True
    preflight_retry_secs: float = Field(60.0, gt=0)
    close_timeout_secs: float = Field(30.0, gt=0)
    flatten_rounds: int = Field(3, ge=1, le=10)
    calendar: str = Field("XNYS", description="exchange_calendars name")
    preflight_lead_mins: int = Field(60, ge=0, le=360)
    warmup_lead_mins: int = Field(30, ge=0, le=360)
    no_new_entries_before_close_mins: int = Field(
        10, ge=0, le=180, description="the shortest (early-close) session lasts 210 min")
    at_close: Literal["hold", "flatten"] = "hold"
    repeat: Literal["once", "forever"] = "forever"
    clock_tolerance_secs: float = Field(60.0, gt=0)
    max_skew_secs: float = Field(2.0, gt=0)
    max_skew_fail_secs: float = Field(30.0, gt=0)
    max_sleep_secs: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _leads_in_order(self) -> SessionConfig:
        if self.warmup_lead_mins > self.preflight_lead_mins:
            raise ValueError("warmup_lead_mins must not exceed preflight_lead_mins "
                             "(preflight runs first, then the warm-up)")
        if self.at_close == "flatten" and self.no_new_entries_before_close_mins < 1:
            raise ValueError("at_close: flatten needs no_new_entries_before_close_mins >= 1: "
                             "positions are closed with market orders while the market is "
                             "still open, in the CLOSING window")
        if self.max_skew_fail_secs < self.max_skew_secs:
            raise ValueError("max_skew_fail_secs must be >= max_skew_secs")
        return self
