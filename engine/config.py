"""Daemon-level configuration: mode, state directory, timers, shutdown, feed, and the
trading session's schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from kernel.config import ComponentConfig


class FeedConfig(ComponentConfig):
    """Where bars come from. ``replay`` is a CSV (``timestamp,symbol,open,high,low,close,
    volume``, optionally gzipped); empty means the built-in demo day. ``speed`` is
    ``max`` (as fast as possible), or a multiple of real time (1 = real time)."""

    source: Literal["replay", "alpaca"] = "replay"
    replay: Path | None = None
    speed: str = "max"
    queue_size: int = Field(256, ge=1)
    symbols: list[str] = Field(default_factory=list,
                               description="symbols to subscribe to (live feeds)")

    @model_validator(mode="after")
    def _live_needs_symbols(self) -> FeedConfig:
        if self.source == "alpaca" and not self.symbols:
            raise ValueError("feed.source 'alpaca' needs feed.symbols (the symbols to trade)")
        return self

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

    @property
    def kill_switch_path(self) -> Path:
        return self.kill_switch_file or self.state_dir / "KILL_SWITCH"


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
    """

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
        if self.max_skew_fail_secs < self.max_skew_secs:
            raise ValueError("max_skew_fail_secs must be >= max_skew_secs")
        return self
