"""``tradingd preflight`` against the loopback Alpaca emulator: in-process (every check,
journal agreement) and as real processes (exit codes), never placing an order."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from config.settings import Settings, load_settings
from daemon.cli import main as cli_main
from daemon.preflight import PreflightReport, run_preflight
from engine.journal import JOURNAL_FILE, Journal
from engine.session import CheckStatus, TradingCalendar
from kernel.broker import BrokerOrder
from kernel.model import AccountSnapshot, BrokerPosition, MarketClock
from signals import demodata
from tests.alpaca_emulator import EmulatorThread
from tests.data import REPO
from tests.signals.mqtt_fixtures import mosquitto_auth

__all__ = ["mosquitto_auth"]  # the real-Mosquitto fixture, for the MQTT check

KEY, SECRET = "PKPREFLIGHT00001", "preflight-secret-canary-42"
SYMBOLS = ["AAPL", "MSFT"]
S = CheckStatus


def calendar_open_now() -> bool:
    """What the exchange calendar says now: a ready broker's clock says the same."""
    return TradingCalendar().expected_clock(datetime.now(UTC)).is_open


@pytest.fixture
def emu() -> Iterator[EmulatorThread]:
    with EmulatorThread(key_id=KEY, secret_key=SECRET) as e:
        e.set_price("AAPL", "170.50")
        e.set_price("MSFT", "400.25")
        e.set_clock(calendar_open_now())
        yield e


def settings(emu: EmulatorThread, state: Path, **env: str) -> Settings:
    environ = {"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET,
               "APCA_API_BASE_URL": emu.base_url, "APCA_API_DATA_URL": emu.base_url,
               "TRADINGD_FEED__SOURCE": "alpaca", "TRADINGD_FEED__SYMBOLS": json.dumps(SYMBOLS),
               "TRADINGD_BROKER__KIND": "alpaca", "TRADINGD_DAEMON__STATE_DIR": str(state),
               "TRADINGD_BROKER__ALPACA__REQUEST_TIMEOUT_SECS": "2",
               "TRADINGD_BROKER__ALPACA__RETRY_BACKOFF_SECS": "0.01", **env}
    return load_settings(environ=environ)


def by_name(report: PreflightReport) -> dict[str, Any]:
    return {c.name: c for c in report.checks}


def assert_nothing_placed(emu: EmulatorThread) -> None:
    assert emu.count("POST", "/v2/orders") == 0
    assert emu.emulator.stream_connections == 0  # never took the daemon's trade stream


class TestPreflightInProcess:
    async def test_preflight_when_ready_then_no_check_fails_and_nothing_is_placed(
        self, emu: EmulatorThread, tmp_path: Path
    ) -> None:
        # Act
        report = await run_preflight(settings(emu, tmp_path / "state"), environ={})
        # Assert
        checks = by_name(report)
        assert report.ready, report.render_text()
        assert list(checks) == ["config", "feed", "credentials", "account", "symbols",
                                "market_clock", "clock_skew", "journal", "kill_switch",
                                "trading_state", "model", "mqtt", "state_dir"]
        assert checks["account"].observed.startswith("status ACTIVE, buying power 100000")
        assert checks["symbols"].observed == "2 listed and tradable"
        # The emulator's next open/close are not the calendar's (see the report): a warning.
        assert checks["market_clock"].status in (S.OK, S.WARN)
        assert checks["clock_skew"].status is S.OK
        assert_nothing_placed(emu)
        assert KEY not in report.render_text() and SECRET not in report.render_text()

    async def test_preflight_when_keys_refused_then_credentials_fail_naming_the_variables(
        self, emu: EmulatorThread, tmp_path: Path
    ) -> None:
        report = await run_preflight(
            settings(emu, tmp_path, APCA_API_SECRET_KEY="wrong-secret"), environ={})
        checks = by_name(report)
        assert not report.ready
        assert checks["credentials"].status is S.FAIL
        assert "APCA_API_KEY_ID / APCA_API_SECRET_KEY" in checks["credentials"].detail
        assert "401" in checks["credentials"].detail
        assert checks["account"].status is S.FAIL and checks["account"].observed == "not checked"
        assert "wrong-secret" not in report.render_text()
        assert emu.count("GET", "/v2/account") == 1  # refused once, no retry storm
        assert_nothing_placed(emu)

    async def test_preflight_when_kill_switch_then_fails_naming_it(
        self, emu: EmulatorThread, tmp_path: Path
    ) -> None:
        s = settings(emu, tmp_path)
        (tmp_path / "KILL_SWITCH").touch()
        report = await run_preflight(s, environ={"KILL_SWITCH": "1"})
        ks = by_name(report)["kill_switch"]
        assert not report.ready and ks.status is S.FAIL
        assert ks.observed == (f"KILL_SWITCH='1' in the environment; kill-switch file "
                               f"{tmp_path / 'KILL_SWITCH'}")
        assert_nothing_placed(emu)

    async def test_preflight_when_symbol_not_listed_then_symbols_fail(
        self, emu: EmulatorThread, tmp_path: Path
    ) -> None:
        s = settings(emu, tmp_path, TRADINGD_FEED__SYMBOLS='["AAPL", "DEMO07"]')
        check = by_name(await run_preflight(s, environ={}))["symbols"]
        assert (check.status, check.observed) == (S.FAIL, "DEMO07: not listed")

    async def test_preflight_when_broker_clock_disagrees_on_open_then_market_clock_fails(
        self, emu: EmulatorThread, tmp_path: Path
    ) -> None:
        emu.set_clock(not calendar_open_now())
        check = by_name(await run_preflight(settings(emu, tmp_path), environ={}))[
            "market_clock"]
        assert check.status is S.FAIL
        assert re.match(r"broker says (open|closed), XNYS says (open|closed)", check.detail)

    def test_preflight_when_replay_against_a_real_broker_url_then_config_row_fails(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        # A replay against a real account never loads: preflight names the setting.
        code = cli_main(["preflight", "--json", "--broker", "alpaca", "--replay",
                         str(tmp_path / "day.csv"), "--state-dir", str(tmp_path)])
        report = json.loads(capsys.readouterr().out)
        assert code == 2
        (row,) = report["checks"]
        assert row["name"] == "config" and row["status"] == "fail"
        assert row["observed"].startswith("feed.replay=")
        assert "https://paper-api.alpaca.markets" in row["detail"]


def journal_with_books(state: Path, positions: dict[str, int]) -> None:
    j = Journal(state / JOURNAL_FILE).open()
    j.append("BooksSnapshot", {"cash": "100000", "commissions": "0", "fill_count": 0,
                               "positions": {s: {"qty": q, "avg_price": "170.5",
                                                 "realized_pnl": "0"}
                                             for s, q in positions.items()},
                               "prices": {}}, durable=True)
    j.append("TradingStateChanged", {"old": "ACTIVE", "new": "HALTED", "who": "operator",
                                     "why": "lunch", "ts": datetime.now(UTC).isoformat()},
             durable=True)
    j.close()


class TestPreflightJournal:
    async def test_journal_when_books_agree_then_ok_and_a_halt_fails_trading_state(
        self, emu: EmulatorThread, tmp_path: Path
    ) -> None:
        # Arrange: the broker holds 10 AAPL (the test buys them), so does the journal.
        emu.set_clock(True)  # the emulator fills only while its market is open
        _post_order(emu.base_url, "AAPL", 10)
        emu.set_clock(calendar_open_now())
        journal_with_books(tmp_path, {"AAPL": 10})
        posts = emu.count("POST", "/v2/orders")
        # Act
        report = await run_preflight(settings(emu, tmp_path), environ={})
        # Assert
        checks = by_name(report)
        assert checks["journal"].status is S.OK, checks["journal"]
        assert checks["trading_state"].status is S.FAIL
        assert checks["trading_state"].observed.startswith("HALTED since")
        assert emu.count("POST", "/v2/orders") == posts

    async def test_journal_when_positions_differ_unexplained_then_fail(
        self, emu: EmulatorThread, tmp_path: Path
    ) -> None:
        journal_with_books(tmp_path, {"AAPL": 10, "MSFT": 3})
        check = by_name(await run_preflight(settings(emu, tmp_path), environ={}))["journal"]
        assert check.status is S.FAIL
        assert "AAPL journal 10 broker 0" in check.detail
        assert "MSFT journal 3 broker 0" in check.detail


def _post_order(base: str, symbol: str, qty: int) -> None:
    body = json.dumps({"symbol": symbol, "qty": str(qty), "side": "buy", "type": "market",
                       "time_in_force": "day", "client_order_id": f"arrange-{symbol}"})
    req = urllib.request.Request(f"{base}/v2/orders", data=body.encode(), method="POST",
                                 headers={"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET,
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5):
        pass
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        snap = _get(f"{base}/_control/snapshot")
        if Decimal(snap["positions"].get(symbol, {}).get("qty", "0")) == qty:
            return
        time.sleep(0.05)
    raise AssertionError("the arranged order did not fill")


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as r:
        data: dict[str, Any] = json.loads(r.read())
    return data


def _post(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5):
        pass


@pytest.mark.slow
class TestPreflightProcess:
    """``tradingd preflight --json`` as a process, the emulator as a process, only APCA_*
    and the feed settings in the environment."""

    @pytest.fixture
    def emulator(self, tmp_path: Path) -> Iterator[str]:
        csv = demodata.write(tmp_path / "day.csv", days=1, n_symbols=4, seed=5)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADINGD_", "APCA_"))}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.alpaca_emulator", "--port", "0", "--bars", str(csv),
             "--key-id", KEY, "--secret-key", SECRET],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            port = re.search(r"127\.0\.0\.1:(\d+)", line)
            assert port is not None, line
            base = f"http://127.0.0.1:{port.group(1)}"
            _post(f"{base}/_control/set_clock", {"is_open": calendar_open_now()})
            yield base
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    def _preflight(self, base: str, state: Path, **extra: str) -> tuple[int, dict[str, Any]]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TRADINGD_", "APCA_"))}
        env.update({"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET,
                    "APCA_API_BASE_URL": base, "APCA_API_DATA_URL": base,
                    "TRADINGD_FEED__SOURCE": "alpaca",
                    "TRADINGD_FEED__SYMBOLS": '["DEMO00", "DEMO01", "DEMO02"]', **extra})
        shipped = REPO / "config" / "execution.yaml"
        proc = subprocess.run(
            [sys.executable, "-m", "daemon.cli", "preflight", "--config", str(shipped),
             "--broker", "alpaca", "--state-dir", str(state), "--json"],
            check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert KEY not in proc.stdout + proc.stderr and SECRET not in proc.stdout + proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def test_preflight_process_when_ready_bad_keys_or_kill_switch_then_exit_codes(
        self, emulator: str, tmp_path: Path
    ) -> None:
        # Act
        ready_code, ready = self._preflight(emulator, tmp_path / "state")
        bad_code, bad = self._preflight(emulator, tmp_path / "state",
                                        APCA_API_KEY_ID="PKWRONGKEY000000")
        kill_code, kill = self._preflight(emulator, tmp_path / "state", KILL_SWITCH="1")
        # Assert
        assert (ready_code, ready["ready"]) == (0, True), ready
        assert {c["name"] for c in ready["checks"]} >= {"credentials", "kill_switch",
                                                         "journal", "market_clock"}
        assert bad_code == 1 and not bad["ready"]
        cred = next(c for c in bad["checks"] if c["name"] == "credentials")
        assert cred["status"] == "fail" and "APCA_API_KEY_ID" in cred["detail"]
        assert kill_code == 1
        ks = next(c for c in kill["checks"] if c["name"] == "kill_switch")
        assert ks["status"] == "fail" and "KILL_SWITCH='1'" in ks["observed"]
        snap = _get(f"{emulator}/_control/snapshot")
        assert snap["orders"] == [] and snap["stream_connections"] == 0

    def test_preflight_process_when_config_invalid_then_exit_2_naming_the_key(
        self, emulator: str, tmp_path: Path
    ) -> None:
        code, out = self._preflight(emulator, tmp_path, TRADINGD_RISK__MAX_POSITION_PCT="abc")
        assert code == 2 and not out["ready"]
        assert out["checks"][0]["observed"].startswith("risk.max_position_pct")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model written by the real training CLI on synthetic bars."""
    from signals.train import main as train
    from tests.signals.test_train import write_synthetic_csv

    d = tmp_path_factory.mktemp("model")
    write_synthetic_csv(d / "bars.csv", symbols=20)
    assert train(["--bars", str(d / "bars.csv"), "--out", str(d / "m"), "--small"]) == 0
    return d / "m"


class TestPreflightModelAndMqtt:
    async def test_model_when_trained_then_ok_and_when_feature_version_differs_then_fail(
        self, model_dir: Path, tmp_path: Path
    ) -> None:
        env = {"TRADINGD_DAEMON__STATE_DIR": str(tmp_path),
               "TRADINGD_SIGNALS__MODEL__ENABLED": "true",
               "TRADINGD_SIGNALS__MODEL__MODEL_PATH": str(model_dir / "model.ubj")}
        ok = by_name(await run_preflight(load_settings(environ=env), environ={}))["model"]
        assert ok.status is S.OK and "feature_version" in ok.observed
        meta = json.loads((model_dir / "metadata.json").read_text())
        meta["feature_version"] = -1
        old = tmp_path / "old"
        old.mkdir()
        for name in ("model.ubj", "features.json"):
            (old / name).write_bytes((model_dir / name).read_bytes())
        (old / "metadata.json").write_text(json.dumps(meta))
        env["TRADINGD_SIGNALS__MODEL__MODEL_PATH"] = str(old / "model.ubj")
        bad = by_name(await run_preflight(load_settings(environ=env), environ={}))["model"]
        assert bad.status is S.FAIL and "feature_version -1" in bad.observed
        assert "retrain" in bad.detail

    @pytest.mark.mqtt
    async def test_mqtt_when_broker_accepts_then_ok_and_wrong_password_then_fail(
        self, mosquitto_auth: Any, tmp_path: Path
    ) -> None:
        from tests.signals.mqtt_fixtures import DAEMON_PASSWORD, DAEMON_USER

        env = {"TRADINGD_DAEMON__STATE_DIR": str(tmp_path), "TRADINGD_SIGNALS__MQTT__ENABLED":
               "true", "TRADINGD_MQTT_URL": mosquitto_auth.url,
               "TRADINGD_MQTT_USERNAME": DAEMON_USER, "TRADINGD_MQTT_PASSWORD": DAEMON_PASSWORD}
        ok = by_name(await run_preflight(load_settings(environ=env), environ={}))["mqtt"]
        assert ok.status is S.OK, ok
        env["TRADINGD_MQTT_PASSWORD"] = "not-the-password"
        bad = by_name(await run_preflight(load_settings(environ=env), environ={}))["mqtt"]
        assert bad.status is S.FAIL
        assert "not-the-password" not in bad.observed + bad.detail


class BlockedAccount:
    """A ``BrokerView`` whose account the broker has blocked (the emulator cannot say so
    yet: its account is always ACTIVE and unblocked)."""

    def __init__(self, status: str, blocked: bool) -> None:
        self.status, self.blocked = status, blocked

    async def account(self) -> AccountSnapshot:
        return AccountSnapshot(ts=datetime.now(UTC), cash=Decimal(1000), equity=Decimal(1000),
                               buying_power=Decimal(1000), status=self.status,
                               trading_blocked=self.blocked)

    async def clock(self) -> MarketClock | None:
        return TradingCalendar().expected_clock(datetime.now(UTC))

    async def positions(self) -> list[BrokerPosition]:
        return []

    async def open_orders(self) -> list[BrokerOrder]:
        return []

    async def untradable(self, symbols: list[str]) -> dict[str, str]:
        return {}


@pytest.mark.parametrize(("status", "blocked", "observed"), [
    ("ACCOUNT_UPDATED", False, "status ACCOUNT_UPDATED, buying power 1000, equity 1000"),
    ("ACTIVE", True, "status ACTIVE, buying power 1000, equity 1000, TRADING BLOCKED"),
])
async def test_account_when_inactive_or_blocked_then_fail(
    tmp_path: Path, status: str, blocked: bool, observed: str
) -> None:
    s = load_settings(environ={"APCA_API_KEY_ID": KEY, "APCA_API_SECRET_KEY": SECRET,
                               "TRADINGD_BROKER__KIND": "alpaca",
                               "TRADINGD_FEED__SOURCE": "alpaca",
                               "TRADINGD_FEED__SYMBOLS": '["AAPL"]',
                               "TRADINGD_DAEMON__STATE_DIR": str(tmp_path)})
    report = await run_preflight(s, environ={}, broker=BlockedAccount(status, blocked))
    account = by_name(report)["account"]
    assert (account.status, account.observed) == (S.FAIL, observed)
    assert by_name(report)["market_clock"].status is S.OK  # a calendar-true clock agrees
