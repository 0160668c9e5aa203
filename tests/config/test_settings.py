"""Settings: the shipped YAML, environment overrides, errors that name key, value and
expectation, the live-mode guard, and ``tradingd check-config``."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from config.settings import default_config_path, load_settings
from daemon.cli import EXIT_CONFIG, main
from kernel.errors import ConfigError

SECRET = "sk-test-DO-NOT-PRINT-7f3a9c"


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "execution.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No TRADINGD_* / APCA_* variables from the developer's shell leak into a test."""
    import os

    for name in list(os.environ):
        if name.startswith(("TRADINGD_", "APCA_")):
            monkeypatch.delenv(name)
    return monkeypatch


class TestLoadSettings:
    def test_load_when_shipped_yaml_then_seed_values(self) -> None:
        s = load_settings(environ={})

        assert default_config_path().name == "execution.yaml"
        assert s.daemon.mode == "paper"
        assert s.daemon.execution_mode == "FULL_AUTO"
        assert s.broker.kind == "paper"
        assert s.broker.paper.initial_cash == Decimal(100_000)
        assert s.broker.paper.slippage_bps == Decimal(2)
        assert s.risk.signal_threshold == 0.1
        assert s.risk.max_position_pct == 0.05
        assert s.risk.max_gross_exposure == 0.60
        assert s.risk.min_order_notional == Decimal(50)
        assert s.risk.max_order_notional == Decimal(10_000)
        assert s.risk.allow_shorts is False
        assert s.risk.max_orders_per_symbol_day == 5
        assert s.risk.max_orders_per_day == 200
        assert s.daemon.reconcile_interval_secs == 60
        assert s.daemon.risk_interval_secs == 10
        assert s.feed.speed == "max"

    def test_load_when_env_override_then_wins_over_yaml(self) -> None:
        s = load_settings(environ={"TRADINGD_RISK__MAX_POSITION_PCT": "0.04"})

        assert s.risk.max_position_pct == 0.04
        assert s.risk.signal_threshold == 0.1  # the rest of the section is kept

    def test_load_when_override_and_env_then_override_wins(self) -> None:
        s = load_settings(overrides={"risk": {"max_position_pct": 0.03}},
                          environ={"TRADINGD_RISK__MAX_POSITION_PCT": "0.04"})

        assert s.risk.max_position_pct == 0.03

    def test_load_when_apca_env_then_alpaca_keys_set_as_secrets(self) -> None:
        s = load_settings(environ={"APCA_API_KEY_ID": "AKTESTKEY", "APCA_API_SECRET_KEY": SECRET})

        assert s.broker.alpaca.secret_key is not None
        assert s.broker.alpaca.secret_key.get_secret_value() == SECRET
        assert SECRET not in repr(s)

    def test_load_when_unknown_key_in_yaml_then_config_error_names_it(
        self, tmp_path: Path
    ) -> None:
        path = write_yaml(tmp_path, "risk:\n  max_positon_pct: 0.05\n")

        with pytest.raises(ConfigError) as info:
            load_settings(path, environ={})

        assert info.value.key == "risk.max_positon_pct"
        assert "max_positon_pct" in str(info.value)

    def test_load_when_unknown_section_in_yaml_then_config_error_names_it(
        self, tmp_path: Path
    ) -> None:
        path = write_yaml(tmp_path, "riks:\n  max_position_pct: 0.05\n")

        with pytest.raises(ConfigError) as info:
            load_settings(path, environ={})

        assert "riks" in info.value.key

    def test_load_when_bad_value_then_names_key_value_and_expectation(
        self, tmp_path: Path
    ) -> None:
        path = write_yaml(tmp_path, "risk:\n  max_position_pct: 1.5\n")

        with pytest.raises(ConfigError) as info:
            load_settings(path, environ={})

        err = info.value
        assert err.key == "risk.max_position_pct"
        assert err.value == 1.5
        assert "less than or equal to 1" in err.expected
        assert str(err) == ("config error: risk.max_position_pct=1.5: "
                            "Input should be less than or equal to 1")

    def test_load_when_bad_env_value_then_names_the_variable(self) -> None:
        with pytest.raises(ConfigError) as info:
            load_settings(environ={"TRADINGD_RISK__MAX_POSITION_PCT": "lots"})

        assert "TRADINGD_RISK__MAX_POSITION_PCT" in info.value.key
        assert info.value.value == "lots"

    def test_load_when_missing_file_then_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            load_settings(tmp_path / "nope.yaml", environ={})

        assert info.value.key == "--config"

    def test_load_when_live_without_consent_then_refused(self) -> None:
        with pytest.raises(ConfigError) as info:
            load_settings(environ={"TRADINGD_DAEMON__MODE": "live"})

        assert info.value.key == "daemon.mode"
        assert "TRADINGD_LIVE=1" in info.value.expected

    def test_load_when_live_with_consent_then_allowed(self) -> None:
        s = load_settings(environ={"TRADINGD_DAEMON__MODE": "live", "TRADINGD_LIVE": "1"})

        assert s.daemon.mode == "live"

    def test_load_when_environ_given_then_process_env_untouched(
        self, clean_env: pytest.MonkeyPatch
    ) -> None:
        import os

        clean_env.setenv("TRADINGD_RISK__MAX_POSITION_PCT", "0.02")
        before = dict(os.environ)

        s = load_settings(environ={})

        assert s.risk.max_position_pct == 0.05  # the given environ, not the process's
        assert dict(os.environ) == before

    def test_settings_when_loaded_then_frozen(self) -> None:
        s = load_settings(environ={})

        with pytest.raises(ValueError, match="frozen"):
            s.risk.max_position_pct = 0.5  # type: ignore[misc]


class TestCheckConfigCli:
    def test_check_config_when_invalid_then_exit_2_and_one_message(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch
    ) -> None:
        # Arrange
        path = write_yaml(tmp_path, "risk:\n  max_orders_per_day: 0\n")

        # Act
        code = main(["check-config", "--config", str(path)])

        # Assert
        out, err = capsys.readouterr()
        assert code == EXIT_CONFIG == 2
        assert out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1
        assert "risk.max_orders_per_day" in lines[0]
        assert "0" in lines[0]
        assert "greater than or equal to 1" in lines[0]

    def test_check_config_when_valid_then_exit_0_and_yaml(
        self, capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch
    ) -> None:
        code = main(["check-config"])

        out, err = capsys.readouterr()
        assert code == 0
        assert "max_position_pct: 0.05" in out
        assert "config OK" in err

    def test_check_config_when_json_then_valid_json_with_secrets_masked(
        self, capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch
    ) -> None:
        # Arrange
        clean_env.setenv("APCA_API_SECRET_KEY", SECRET)
        clean_env.setenv("APCA_API_KEY_ID", "fake-key-id-should-not-print")

        # Act
        code = main(["check-config", "--json"])

        # Assert
        out, err = capsys.readouterr()
        assert code == 0
        resolved = json.loads(out)
        assert SECRET not in out + err
        assert "fake-key-id-should-not-print" not in out + err
        assert resolved["broker"]["alpaca"]["secret_key"] == "**********"
        assert resolved["broker"]["alpaca"]["key_id"] == "**********"
        assert resolved["risk"]["max_position_pct"] == 0.05
        assert resolved["broker"]["paper"]["initial_cash"] == "100000"

    def test_check_config_when_env_override_then_shown_resolved(
        self, capsys: pytest.CaptureFixture[str], clean_env: pytest.MonkeyPatch
    ) -> None:
        clean_env.setenv("TRADINGD_RISK__MAX_POSITION_PCT", "0.04")

        code = main(["check-config", "--json"])

        assert code == 0
        assert json.loads(capsys.readouterr().out)["risk"]["max_position_pct"] == 0.04


class TestFeedSource:
    """Live by default with a real broker; the demo day only for the paper broker."""

    def test_load_when_paper_then_auto_is_the_demo_replay(self) -> None:
        s = load_settings(environ={})
        assert s.feed.source == "replay" and s.feed.replay is None

    def test_load_when_alpaca_and_symbols_then_live_alpaca_feed(self) -> None:
        s = load_settings(overrides={"broker": {"kind": "alpaca"}},
                          environ={"TRADINGD_FEED__SYMBOLS": '["AAPL","MSFT"]'})
        assert s.feed.source == "alpaca" and s.feed.symbols == ["AAPL", "MSFT"]

    def test_load_when_alpaca_without_symbols_then_error_names_feed_symbols(self) -> None:
        with pytest.raises(ConfigError) as err:
            load_settings(overrides={"broker": {"kind": "alpaca"}}, environ={})
        assert err.value.key == "feed.symbols"

    def test_load_when_replay_against_real_alpaca_then_refused(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as err:
            load_settings(overrides={"broker": {"kind": "alpaca"},
                                     "feed": {"source": "replay",
                                              "replay": str(tmp_path / "day.csv")}},
                          environ={})
        assert err.value.key == "feed.replay"
        assert "never a alpaca account (https://paper-api.alpaca.markets)" in str(err.value)

    def test_load_when_replay_against_loopback_emulator_then_allowed(
            self, tmp_path: Path) -> None:
        s = load_settings(overrides={"broker": {"kind": "alpaca"},
                                     "feed": {"source": "replay",
                                              "replay": str(tmp_path / "day.csv")}},
                          environ={"APCA_API_BASE_URL": "http://127.0.0.1:8700"})
        assert s.feed.source == "replay"

    def test_load_when_alpaca_replay_without_file_then_no_demo_day(self) -> None:
        with pytest.raises(ConfigError) as err:
            load_settings(overrides={"broker": {"kind": "alpaca"},
                                     "feed": {"source": "replay"}},
                          environ={"APCA_API_BASE_URL": "http://localhost:8700"})
        assert err.value.key == "feed.replay" and "demo day" in str(err.value)

    def test_cli_when_broker_alpaca_without_symbols_then_exit_2_naming_setting(
            self, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
        code = main(["run", "--broker", "alpaca", "--config", str(default_config_path())])
        assert code == EXIT_CONFIG
        assert "feed.symbols" in capsys.readouterr().err
