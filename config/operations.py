"""Config of the operator surface: the HTTP server (``http``) and webhook alerts (``alerts``).

They live in the config package, not beside ``daemon/http.py``, because the layer
contract lets ``config`` import only what is below it; the app layer reads them from
``Settings``.

Secrets: ``http.token`` comes only from ``TRADINGD_HTTP__TOKEN`` (``load_settings``
refuses it in the YAML); webhook URLs can carry secrets (Slack's do) and are
``SecretStr``: masked by ``check-config``, scrubbed from logs, never logged.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from kernel.config import ComponentConfig

DEFAULT_LISTEN = "127.0.0.1:8787"
MIN_TOKEN_CHARS = 16


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) into its parts.

    Raises:
        ValueError: not ``host:port`` with a port in 0..65535 (0: any free port).
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected host:port (e.g. {DEFAULT_LISTEN}), got {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and any 127.0.0.0/8 or ::1 address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere


class HttpConfig(ComponentConfig):
    """The daemon's HTTP server (health, metrics, status page, operator actions).

    Defaults: ``enabled`` None (off in a replay, on in a live session), ``listen``
    127.0.0.1:8787 (``TRADINGD_HTTP__LISTEN``), ``token`` from ``TRADINGD_HTTP__TOKEN``
    only (at least 16 characters; without one every mutating endpoint refuses, and a
    non-loopback ``listen`` refuses to start), ``sse_queue`` 256 events per client,
    ``sse_clients`` 16, ``feed_stale_secs`` 180, ``loop_stall_secs`` 5.
    """

    enabled: bool | None = Field(None, description="None: on live, off in a replay")
    listen: str = Field(DEFAULT_LISTEN, description="host:port; port 0 picks a free one")
    token: SecretStr | None = Field(None, description="from TRADINGD_HTTP__TOKEN only")
    sse_queue: int = Field(256, ge=8, le=100_000, description="events buffered per client")
    sse_clients: int = Field(16, ge=1, le=1000, description="concurrent event streams")
    status_push_secs: float = Field(1.0, gt=0, description="status pushed to streams every")
    feed_stale_secs: float = Field(180.0, gt=0, description="readyz: bars older than this")
    loop_stall_secs: float = Field(5.0, gt=0, description="healthz: loop beat older than this")
    symbol_metrics: bool = Field(
        False, description="per-symbol position gauges (only with a configured universe "
                           "of at most 100 risk.symbols)")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        split_listen(v)
        return v

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value():
            return None  # an empty variable means no token
        if v is not None and len(v.get_secret_value()) < MIN_TOKEN_CHARS:
            raise ValueError(f"the token must have at least {MIN_TOKEN_CHARS} characters")
        return v

    @model_validator(mode="after")
    def _exposed_needs_token(self) -> HttpConfig:
        host, _ = split_listen(self.listen)
        if not is_loopback(host) and self.token is None:
            raise ValueError(f"listening on {host} (not loopback) needs TRADINGD_HTTP__TOKEN")
        return self

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def is_enabled(self, *, replay: bool) -> bool:
        return (not replay) if self.enabled is None else self.enabled


class AlertsConfig(ComponentConfig):
    """Webhook alerts (generic JSON with a Slack-compatible ``text``).

    Off while ``webhooks`` is empty. Defaults: ``disconnect_secs`` 30 (a broker
    disconnected longer alerts), a reject storm is ``storm_denials`` 200 gate denials
    within ``storm_window_secs`` 60, the same (name, cause) is sent once per
    ``dedupe_secs`` 600, at most ``max_per_minute`` 12 alerts are sent a minute, each
    POST times out after ``timeout_secs`` 5 and is tried ``attempts`` 5 times with
    exponential backoff, and at most ``queue_size`` 256 wait to be sent.
    """

    webhooks: list[SecretStr] = Field(default_factory=list, description="URLs (secret)")
    disconnect_secs: float = Field(30.0, gt=0)
    storm_denials: int = Field(200, ge=1)
    storm_window_secs: float = Field(60.0, gt=0)
    dedupe_secs: float = Field(600.0, ge=0)
    max_per_minute: int = Field(12, ge=1)
    timeout_secs: float = Field(5.0, gt=0)
    attempts: int = Field(5, ge=1, le=20)
    backoff_secs: float = Field(0.5, gt=0, description="first retry wait (doubles, jittered)")
    backoff_max_secs: float = Field(30.0, gt=0)
    queue_size: int = Field(256, ge=1)
    stop_flush_secs: float = Field(5.0, ge=0, description="wait at exit for queued alerts")

    @field_validator("webhooks", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("webhooks")
    @classmethod
    def _urls(cls, v: list[SecretStr]) -> list[SecretStr]:
        for i, url in enumerate(v):
            if not url.get_secret_value().startswith(("http://", "https://")):
                # Never echo the value: it may be a secret.
                raise ValueError(f"webhook #{i} must be an http:// or https:// URL")
        return v

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks)


__all__ = ["DEFAULT_LISTEN", "AlertsConfig", "HttpConfig", "is_loopback", "split_listen"]
