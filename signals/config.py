"""Signal source configuration."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from kernel.config import ComponentConfig

# A topic prefix is one or more plain MQTT levels: no wildcards, no empty levels.
_PREFIX = re.compile(r"^[A-Za-z0-9_\-]+(/[A-Za-z0-9_\-]+)*$")


class DemoRuleConfig(ComponentConfig):
    """Cross-sectional momentum demo rule (``signals.demo.MomentumRule``).

    Every ``every_bars`` batches, each symbol's return over ``lookback`` bars is ranked
    across symbols; the strength is its centred rank scaled to [-1, 1] (long-only
    configs simply never go below zero after sizing)."""

    enabled: bool = True
    lookback: int = Field(default=30, ge=2)
    every_bars: int = Field(default=15, ge=1)


class ModelConfig(ComponentConfig):
    """XGBoost signal source (``signals.model.ModelSignalSource``), its feature gates and
    its drift monitor. Paths are those ``tradingd train --out DIR`` writes."""

    enabled: bool = False
    model_path: Path | None = Field(default=None, description="DIR/model.ubj")
    features_path: Path | None = Field(
        default=None, description="ordered feature list; default: features.json beside the model")
    metadata_path: Path | None = Field(
        default=None, description="training metadata; default: metadata.json beside the model")
    nthread: int = Field(default=1, ge=1, description="xgboost threads for inference")
    bar_seconds: int = Field(default=60, ge=1, description="bar interval, to detect skipped bars")
    strength_scale: float | None = Field(
        default=None, gt=0,
        description="strength = clip((2p - 1) * scale, -1, 1); default from training: the "
                    "99th percentile of |2p - 1| on the validation period maps to 1")
    range_iqr_k: float = Field(
        default=3.0, ge=0,
        description="FEATURE_OUT_OF_RANGE beyond the training min/max widened by k x IQR")
    max_stale_bars: int = Field(
        default=0, ge=0, description="STALE_DATA when a symbol missed more consecutive bars")
    gap_window_bars: int = Field(default=30, ge=1, description="window of the DATA_GAP count")
    max_gap_bars: int = Field(
        default=5, ge=0, description="DATA_GAP when more bars are missing in the gap window")
    # Window and PSI bounds chosen on the validation period: with 30 batches the rolling PSI
    # of a 53-symbol model against its own validation reference reached 0.45 (predictions
    # within half an hour are correlated), so 0.25 would cry wolf.
    drift_window_batches: int = Field(
        default=60, ge=1, description="batches of predictions the drift monitor looks at")
    drift_min_predictions: int = Field(
        default=300, ge=1, description="predictions needed in the window before judging drift")
    psi_alert: float = Field(default=0.5, gt=0, description="model.drift alert above this PSI")
    psi_disable: float = Field(default=2.0, gt=0, description="stop model signals above this PSI")
    entropy_alert_ratio: float = Field(
        default=0.5, ge=0, le=1,
        description="model.entropy_collapse alert below this share of the training entropy")
    entropy_disable_ratio: float = Field(
        default=0.2, ge=0, le=1, description="stop model signals below this share")
    retrain: bool = Field(
        default=False,
        description="live sessions: after each close, retrain in deploy mode on the bars the "
                    "daemon recorded (<state_dir>/bars/) through that day, plus retrain_bars; "
                    "the new model replaces the running one only if its feature version "
                    "matches the running code's")
    retrain_days: int = Field(default=20, ge=2, description="recorded days kept and trained on")
    retrain_bars: Path | None = Field(
        default=None, description="older history (a bars CSV) trained on before the recorded days")
    retrain_small: bool = Field(default=False, description="a small, fast model (--small)")


class MqttConfig(ComponentConfig):
    """External signals, events and control over MQTT (``signals.mqtt.MqttBridge``).

    Off by default: the daemon then trades on its own signals only. ``enabled`` needs a
    ``url`` (``mqtt://host:1883`` or ``mqtts://host:8883``; also from the environment as
    ``TRADINGD_MQTT_URL``). Credentials never go in the URL: ``username``/``password``
    (``TRADINGD_MQTT_USERNAME``/``TRADINGD_MQTT_PASSWORD``). ``control_secret`` is the
    HMAC-SHA256 key that every message on ``<prefix>/control`` must be signed with
    (``TRADINGD_MQTT_CONTROL_SECRET``); without it every control message is refused.

    Defaults: prefix ``tradingd``, client_id ``<prefix>-daemon`` (with ``/`` as ``-``),
    keepalive 30 s, max_payload_bytes 64 KiB, inbound_queue 4096 messages, outbound_queue
    2048 messages, lossy_events_per_sec 500, dedup_window 100,000 signal ids, heartbeat_secs 5,
    control_max_skew_secs 30, reconnect backoff 0.5 s doubling to 30 s (with jitter).
    """

    enabled: bool = False
    url: str | None = Field(default=None, description="mqtt://host:port, mqtts://host:port")
    prefix: str = Field(default="tradingd", description="topic prefix: <prefix>/signals etc.")
    client_id: str | None = Field(default=None, description="default: <prefix>-daemon")
    username: str | None = None
    password: SecretStr | None = None
    control_secret: SecretStr | None = Field(default=None, description="HMAC key (control)")
    control_commands: tuple[str, ...] = Field(
        default=("halt", "resume", "emergency-stop", "liquidate"),
        description="commands accepted on <prefix>/control (when signed)",
    )
    control_max_skew_secs: float = Field(default=30.0, gt=0, le=3600)
    keepalive_secs: int = Field(default=30, ge=5, le=3600)
    max_payload_bytes: int = Field(default=64 * 1024, ge=256, le=16 * 1024 * 1024)
    max_batch_symbols: int = Field(default=1000, ge=1)
    inbound_queue: int = Field(default=4096, ge=1, description="received, not yet validated")
    outbound_queue: int = Field(default=2048, ge=1, description="events not yet published")
    lossy_events_per_sec: float = Field(default=500.0, gt=0, description=(
        "per kind, for rejects, positions, heartbeats (orders and fills are never limited)"))
    dedup_window: int = Field(default=100_000, ge=1, description="signal ids remembered")
    heartbeat_secs: float = Field(default=5.0, gt=0)
    reconnect_min_secs: float = Field(default=0.5, gt=0)
    reconnect_max_secs: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
        if parts.username or parts.password:
            raise ValueError("credentials do not belong in the URL: use username/password")
        _ = parts.port  # raises ValueError on a bad port
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not _PREFIX.match(v):
            raise ValueError("plain topic levels only (letters, digits, _ -), no wildcards")
        return v

    @model_validator(mode="after")
    def _enabled_needs_url(self) -> MqttConfig:
        if self.enabled and self.url is None:
            raise ValueError("signals.mqtt.enabled needs signals.mqtt.url (or TRADINGD_MQTT_URL)")
        if self.reconnect_max_secs < self.reconnect_min_secs:
            raise ValueError("reconnect_max_secs must be >= reconnect_min_secs")
        return self

    @property
    def host(self) -> str:
        return urlsplit(self.url or "mqtt://127.0.0.1").hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        parts = urlsplit(self.url or "mqtt://127.0.0.1")
        return parts.port or (8883 if parts.scheme == "mqtts" else 1883)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url or "").scheme == "mqtts"

    @property
    def identifier(self) -> str:
        return self.client_id or f"{self.prefix.replace('/', '-')}-daemon"


class SignalsConfig(ComponentConfig):
    demo: DemoRuleConfig = DemoRuleConfig()
    model: ModelConfig = ModelConfig()
    mqtt: MqttConfig = MqttConfig()
