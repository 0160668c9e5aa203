"""IB settings: paper by default, live ports only in live mode, keys from the environment,
and the factory building the adapter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from brokers.config import BrokerConfig, IbConfig
from brokers.factory import create_broker
from brokers.ib import IbBroker
from config.settings import load_settings
from kernel.clock import WallClock
from kernel.errors import ConfigError
from tests.data import REPO

# IB has no bar feed of its own: a live IB session takes the Alpaca data stream.
LIVE_FEED = {"TRADINGD_FEED__SOURCE": "alpaca", "TRADINGD_FEED__SYMBOLS": '["XOM"]'}


class TestIbSettings:
    def test_defaults_when_nothing_set_then_gateway_paper_on_loopback(self) -> None:
        cfg = load_settings(environ={}).broker.ib
        assert (cfg.host, cfg.port, cfg.client_id, cfg.account) == ("127.0.0.1", 4002, 1, None)

    def test_env_when_keys_set_then_applied(self) -> None:
        s = load_settings(environ={"TRADINGD_BROKER__KIND": "ib", **LIVE_FEED,
                                   "TRADINGD_BROKER__IB__PORT": "7497",
                                   "TRADINGD_BROKER__IB__CLIENT_ID": "17",
                                   "TRADINGD_BROKER__IB__ACCOUNT": "DU7654321"})
        assert s.broker.kind == "ib"
        assert (s.broker.ib.port, s.broker.ib.client_id, s.broker.ib.account) == (
            7497, 17, "DU7654321")

    @pytest.mark.parametrize("port", [4001, 7496])
    def test_live_port_when_paper_mode_then_refused_naming_the_key(self, port: int) -> None:
        with pytest.raises(ConfigError) as info:
            load_settings(environ={"TRADINGD_BROKER__KIND": "ib", **LIVE_FEED,
                                   "TRADINGD_BROKER__IB__PORT": str(port)})
        assert info.value.key == "broker.ib.port" and info.value.value == port
        assert "daemon.mode: live" in info.value.expected

    def test_live_port_when_live_mode_with_consent_then_allowed(self) -> None:
        s = load_settings(environ={"TRADINGD_BROKER__KIND": "ib", **LIVE_FEED,
                                   "TRADINGD_BROKER__IB__PORT": "4001",
                                   "TRADINGD_DAEMON__MODE": "live", "TRADINGD_LIVE": "1"})
        assert s.broker.ib.port == 4001

    def test_live_port_when_another_broker_is_chosen_then_irrelevant(self) -> None:
        s = load_settings(environ={"TRADINGD_BROKER__IB__PORT": "4001"})
        assert s.broker.kind == "paper"

    def test_client_id_when_zero_then_refused(self) -> None:
        with pytest.raises(ValueError, match="client_id"):
            IbConfig(client_id=0)

    def test_factory_when_kind_ib_then_ib_broker(self, tmp_path: Path) -> None:
        broker = create_broker(BrokerConfig(kind="ib"), clock=WallClock(), sink=lambda e: None,
                               state_dir=tmp_path)
        assert isinstance(broker, IbBroker) and broker.name == "ib"


class TestCheckConfigCommand:
    def test_check_config_when_live_port_in_paper_mode_then_exit_2_with_reason(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRADINGD_")}
        env.update(TRADINGD_BROKER__KIND="ib", TRADINGD_BROKER__IB__PORT="4001")
        proc = subprocess.run([sys.executable, "-m", "daemon.cli", "check-config"], cwd=REPO,
                              check=False, env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert "broker.ib.port=4001" in proc.stderr and "daemon.mode: live" in proc.stderr
