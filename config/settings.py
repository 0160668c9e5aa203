"""The root settings object, composed of each component's frozen config.

Precedence, highest first: explicit overrides (CLI flags) > environment
(``TRADINGD_<KEY>``, ``__`` between levels, e.g. ``TRADINGD_RISK__MAX_POSITION_PCT``;
Alpaca keys and URLs also from ``APCA_API_KEY_ID``, ``APCA_API_SECRET_KEY``,
``APCA_API_BASE_URL``, ``APCA_API_DATA_URL``; MQTT from ``TRADINGD_MQTT_URL``,
``TRADINGD_MQTT_USERNAME``, ``TRADINGD_MQTT_PASSWORD``, ``TRADINGD_MQTT_CONTROL_SECRET``)
> the YAML file > defaults. ``http.token`` comes from ``TRADINGD_HTTP__TOKEN`` only: a
token in the YAML is refused.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from brokers.config import IB_LIVE_PORTS, BrokerConfig
from config.operations import AlertsConfig, HttpConfig
from engine.accounts import account_specs, check_routing
from engine.config import AccountConfig, DaemonConfig, FeedConfig, RoutingConfig, SessionConfig
from kernel.errors import ConfigError
from risk.config import GlobalRiskConfig, RiskConfig
from signals.config import SignalsConfig

ENV_PREFIX = "TRADINGD_"
_URL_USERINFO = re.compile(r"//[^/@]*@")
# Keys whose value must never be echoed in an error message.
_SECRET_KEYS = ("token", "password", "secret", "key_id", "webhooks")
_ENV_ALIASES = {
    "APCA_API_KEY_ID": ("broker", "alpaca", "key_id"),
    "APCA_API_SECRET_KEY": ("broker", "alpaca", "secret_key"),
    "APCA_API_BASE_URL": ("broker", "alpaca", "base_url"),
    "APCA_API_DATA_URL": ("broker", "alpaca", "data_url"),
    "TRADINGD_MQTT_URL": ("signals", "mqtt", "url"),
    "TRADINGD_MQTT_USERNAME": ("signals", "mqtt", "username"),
    "TRADINGD_MQTT_PASSWORD": ("signals", "mqtt", "password"),
    "TRADINGD_MQTT_CONTROL_SECRET": ("signals", "mqtt", "control_secret"),
}


class Settings(BaseSettings):
    """Everything the daemon is configured with. Frozen; unknown keys are errors."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", frozen=True, extra="forbid",
        validate_default=True,
    )

    daemon: DaemonConfig = DaemonConfig()
    broker: BrokerConfig = BrokerConfig()
    risk: RiskConfig = RiskConfig()
    feed: FeedConfig = FeedConfig()
    session: SessionConfig = SessionConfig()
    signals: SignalsConfig = SignalsConfig()
    accounts: list[AccountConfig] = []
    routing: RoutingConfig = RoutingConfig()
    global_risk: GlobalRiskConfig = GlobalRiskConfig()
    http: HttpConfig = HttpConfig()
    alerts: AlertsConfig = AlertsConfig()


def default_config_path() -> Path:
    """The ``execution.yaml`` shipped inside the package (works without a checkout)."""
    return Path(str(resources.files("config") / "execution.yaml"))


def _deep_set(d: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        d = d.setdefault(key, {})
    d.setdefault(path[-1], value)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError("--config", str(path), "an existing YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError("--config", str(path), f"valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError("<root>", type(data).__name__, "a mapping of sections")
    return data


def load_settings(
    path: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Resolve the settings; raise ``ConfigError`` naming the first bad key.

    Raises:
        ConfigError: a key has a bad value, is unknown, or live mode lacks TRADINGD_LIVE=1.
    """
    env = os.environ if environ is None else environ
    file_data = _read_yaml(path or default_config_path())
    _refuse_yaml_token(file_data)
    init = dict(overrides or {})
    for var, key_path in _ENV_ALIASES.items():
        if env.get(var):
            _deep_set(init, key_path, env[var])

    class _Sourced(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            return (init_settings, env_settings, InitSettingsSource(settings_cls, file_data))

    try:
        built = _Sourced(**init) if environ is None else _with_env(_Sourced, init, env)
    except ValidationError as exc:
        raise _config_error(exc, env) from None
    settings = Settings.model_construct(**{k: getattr(built, k) for k in Settings.model_fields})
    _check_live(settings, env)
    # Each account's broker, credentials and limits must resolve now, not at connect time.
    specs = account_specs(settings.accounts, broker=settings.broker, risk=settings.risk,
                          state_dir=settings.daemon.state_dir, environ=env)
    check_routing(settings.routing, settings.accounts)
    _check_live_endpoints(settings, [s.broker for s in specs])
    return _resolve_feed(settings, [s.broker for s in specs])


_ALPACA_PAPER_HOST = "paper-api.alpaca.markets"
_IB_STANDARD_PORTS = frozenset({4001, 4002, 7496, 7497})  # Gateway/TWS, live and paper


def _resolve_feed(settings: Settings, brokers: list[BrokerConfig]) -> Settings:
    """``feed.source: auto`` becomes the broker's own data; a live feed needs symbols; a
    replay may trade only the paper broker or a loopback emulator, never a real account.

    Raises:
        ConfigError: naming ``feed.symbols``, ``feed.source`` or ``feed.replay``.
    """
    feed = settings.feed
    kinds = {b.kind for b in brokers}
    source = feed.source
    if source == "auto":
        if "alpaca" in kinds:
            source = "alpaca"
        elif kinds == {"paper"}:
            source = "replay"
        else:
            raise ConfigError("feed.source", "auto", "'alpaca' (with Alpaca data keys) or "
                              "'replay' with feed.replay: Interactive Brokers accounts have no "
                              "bar feed of their own in tradingd")
    if source == "alpaca" and not feed.symbols:
        raise ConfigError("feed.symbols", [], "the symbols to trade: a live session never "
                          "invents a universe (e.g. TRADINGD_FEED__SYMBOLS='[\"AAPL\",\"MSFT\"]')")
    if source == "replay":
        for b in brokers:
            if b.kind != "paper" and not _loopback_endpoint(b):
                raise ConfigError("feed.replay", str(feed.replay or "the demo day"),
                                  f"a replay trades only the paper broker or a loopback "
                                  f"emulator, never a {b.kind} account ({_endpoint(b)}): use "
                                  f"--broker paper, or drop --replay to trade the live session")
        if feed.replay is None and kinds != {"paper"}:
            raise ConfigError("feed.replay", None, "a CSV of bars: the demo day exists only "
                              "for the built-in paper broker")
    if source == feed.source:
        return settings
    return settings.model_copy(update={"feed": feed.model_copy(update={"source": source})})


def _loopback_endpoint(b: BrokerConfig) -> bool:
    """An emulator on this machine: a loopback URL (Alpaca), or a loopback host on a port
    that is not one of IB Gateway's or TWS's (IB)."""
    if b.kind == "alpaca":
        host = urlsplit(b.alpaca.base_url).hostname or ""
        return _is_loopback(host)
    ib = getattr(b, "ib", None)
    if str(b.kind) == "ib" and ib is not None:
        return _is_loopback(str(ib.host)) and int(ib.port) not in _IB_STANDARD_PORTS
    return False


def _endpoint(b: BrokerConfig) -> str:
    return b.alpaca.base_url if b.kind == "alpaca" else f"{b.ib.host}:{b.ib.port}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _with_env(cls: type[Settings], init: dict[str, Any], env: Mapping[str, str]) -> Settings:
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return cls(**init)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _config_error(exc: ValidationError, env: dict[str, str] | os._Environ[str]) -> ConfigError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"])
    env_name = ENV_PREFIX + "__".join(str(p) for p in err["loc"]).upper()
    if env_name in env:
        key = f"{key} (from {env_name})"
    value = err.get("input")
    if any(part in key for part in _SECRET_KEYS):
        value = "***"
    elif isinstance(value, dict):
        value = "{...}"
    elif isinstance(value, str):
        # A URL with user:password@ must not carry the password into the error message.
        value = _URL_USERINFO.sub("//***@", value)
    return ConfigError(key, value, err["msg"])


def _refuse_yaml_token(file_data: dict[str, Any]) -> None:
    http = file_data.get("http")
    if isinstance(http, dict) and http.get("token") is not None:
        raise ConfigError("http.token", "***",
                          "set it in the environment (TRADINGD_HTTP__TOKEN), never in the YAML")


def _check_live(settings: Settings, env: dict[str, str] | os._Environ[str]) -> None:
    if settings.daemon.mode == "live" and env.get("TRADINGD_LIVE") != "1":
        raise ConfigError(
            "daemon.mode", "live",
            "live trading also needs TRADINGD_LIVE=1 in the environment (paper is the default)",
        )


def _check_live_endpoints(settings: Settings, brokers: list[BrokerConfig]) -> None:
    """A broker endpoint that trades real money needs ``daemon.mode: live`` (which itself
    needs TRADINGD_LIVE=1): Alpaca anywhere but its paper API or a loopback emulator, IB
    on the Gateway's or TWS's live port."""
    if settings.daemon.mode == "live":
        return
    for i, b in enumerate(brokers):
        multi = bool(settings.accounts)
        if b.kind == "alpaca":
            host = urlsplit(b.alpaca.base_url).hostname or ""
            if host != _ALPACA_PAPER_HOST and not _is_loopback(host):
                raise ConfigError(
                    f"accounts.{i}.broker.base_url" if multi else "broker.alpaca.base_url",
                    b.alpaca.base_url, f"the paper API (https://{_ALPACA_PAPER_HOST}): another "
                    "endpoint trades real money and needs daemon.mode: live and TRADINGD_LIVE=1")
        if b.kind == "ib" and b.ib.port in IB_LIVE_PORTS:
            raise ConfigError(
                f"accounts.{i}.broker.port" if multi else "broker.ib.port",
                b.ib.port, "a paper port (4002 IB Gateway, 7497 TWS): 4001/7496 trade real "
                "money and need daemon.mode: live (and TRADINGD_LIVE=1)")

