"""The ``signals.mqtt`` config slice and its environment variables."""

from __future__ import annotations

import pytest

from config.settings import load_settings
from kernel.errors import ConfigError
from signals.config import MqttConfig


class TestMqttConfig:
    def test_defaults_when_nothing_set_then_disabled(self) -> None:
        cfg = load_settings(environ={}).signals.mqtt
        assert (cfg.enabled, cfg.url, cfg.prefix, cfg.identifier) == (
            False, None, "tradingd", "tradingd-daemon")

    def test_env_when_mqtt_vars_set_then_mapped_and_secrets_masked(self) -> None:
        s = load_settings(environ={
            "TRADINGD_MQTT_URL": "mqtt://127.0.0.1:1999",
            "TRADINGD_MQTT_USERNAME": "tradingd",
            "TRADINGD_MQTT_PASSWORD": "pw-123456",
            "TRADINGD_MQTT_CONTROL_SECRET": "hmac-key-abcdef",
            "TRADINGD_SIGNALS__MQTT__ENABLED": "true",
        })
        cfg = s.signals.mqtt
        assert (cfg.enabled, cfg.host, cfg.port, cfg.tls) == (True, "127.0.0.1", 1999, False)
        assert cfg.password is not None and cfg.password.get_secret_value() == "pw-123456"
        assert "pw-123456" not in repr(s) and "hmac-key-abcdef" not in repr(s)

    def test_enabled_when_no_url_then_config_error(self) -> None:
        with pytest.raises(ConfigError, match=r"needs signals\.mqtt\.url"):
            load_settings(environ={}, overrides={"signals": {"mqtt": {"enabled": True}}})

    def test_url_when_it_carries_credentials_then_refused_without_echoing_them(self) -> None:
        with pytest.raises(ConfigError) as info:
            load_settings(environ={"TRADINGD_MQTT_URL": "mqtt://u:hunter2@broker:1883"})
        assert "hunter2" not in str(info.value) and "credentials" in str(info.value)

    @pytest.mark.parametrize("prefix", ["", "a/#", "a/+/b", "/a", "a//b"])
    def test_prefix_when_wildcard_or_empty_level_then_refused(self, prefix: str) -> None:
        with pytest.raises(ValueError, match="plain topic levels"):
            MqttConfig(prefix=prefix)

    def test_mqtts_url_then_tls_and_default_port(self) -> None:
        cfg = MqttConfig(url="mqtts://broker.example")
        assert (cfg.tls, cfg.port) == (True, 8883)
