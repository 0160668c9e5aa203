"""The root settings object, composed of each component's frozen config.

Precedence, highest first: explicit overrides (CLI flags) > environment
(``TRADINGD_<KEY>``, ``__`` between levels, e.g. ``TRADINGD_RISK__MAX_POSITION_PCT``;
Alpaca keys and URLs also from ``APCA_API_KEY_ID``, ``APCA_API_SECRET_KEY``,
``APCA_API_BASE_URL``, ``APCA_API_DATA_URL``; MQTT from ``TRADINGD_MQTT_URL``,
``TRADINGD_MQTT_USERNAME``, ``TRADINGD_MQTT_PASSWORD``, ``TRADINGD_MQTT_CONTROL_SECRET``)
> the YAML file > defaults.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from brokers.config import BrokerConfig
from engine.config import DaemonConfig, FeedConfig, SessionConfig
from kernel.errors import ConfigError
from risk.config import RiskConfig
from signals.config import SignalsConfig

ENV_PREFIX = "TRADINGD_"
_URL_USERINFO = re.compile(r"//[^/@]*@")
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
    return settings


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
    if isinstance(value, dict):
        value = "{...}"
    elif isinstance(value, str):
        # A URL with user:password@ must not carry the password into the error message.
        value = _URL_USERINFO.sub("//***@", value)
    return ConfigError(key, value, err["msg"])


def _check_live(settings: Settings, env: dict[str, str] | os._Environ[str]) -> None:
    if settings.daemon.mode == "live" and env.get("TRADINGD_LIVE") != "1":
        raise ConfigError(
            "daemon.mode", "live",
            "live trading also needs TRADINGD_LIVE=1 in the environment (paper is the default)",
        )
