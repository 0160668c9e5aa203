"""The emulator itself: wire details the SDK depends on, and running it as a process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.requests import LimitOrderRequest, ReplaceOrderRequest

from tests.alpaca_emulator import EmulatorThread


@pytest.fixture
def emu() -> EmulatorThread:
    with EmulatorThread() as e:
        e.set_price("AAPL", "170.5")
        yield e  # type: ignore[misc]


def client(emu: EmulatorThread, key: str = "EMUKEY") -> TradingClient:
    c = TradingClient(key, "EMUSECRET", url_override=emu.base_url)
    c._retry_wait = 0
    return c


class TestEmulatorRest:
    def test_request_when_keys_wrong_then_401_without_code(self, emu: EmulatorThread) -> None:
        with pytest.raises(APIError) as info:
            client(emu, "BAD").get_account()
        assert info.value.status_code == 401
        assert json.loads(str(info.value)) == {"message": "unauthorized"}

    def test_order_when_cid_reused_then_422_and_nothing_created(
        self, emu: EmulatorThread) -> None:
        c = client(emu)
        req = LimitOrderRequest(symbol="AAPL", qty=1, side="buy", time_in_force="gtc",
                                limit_price=100, client_order_id="dup-1")
        c.submit_order(req)
        with pytest.raises(APIError) as info:
            c.submit_order(req)
        assert info.value.status_code == 422 and info.value.code == 40010001
        assert len(emu.snapshot()["orders"]) == 1

    def test_replace_when_unchanged_then_422_and_when_changed_then_new_order(
        self, emu: EmulatorThread) -> None:
        c = client(emu)
        o = c.submit_order(LimitOrderRequest(symbol="AAPL", qty=2, side="buy",
                                             time_in_force="gtc", limit_price=100))
        time.sleep(0.05)
        with pytest.raises(APIError):
            c.replace_order_by_id(o.id, ReplaceOrderRequest(limit_price=100))
        new = c.replace_order_by_id(o.id, ReplaceOrderRequest(limit_price=101))
        assert str(new.replaces) == str(o.id)
        assert c.get_order_by_id(o.id).status == "replaced"

    def test_cancel_when_filled_then_422_with_state(self, emu: EmulatorThread) -> None:
        c = client(emu)
        o = c.submit_order(LimitOrderRequest(symbol="AAPL", qty=2, side="buy",
                                             time_in_force="day", limit_price=180))
        time.sleep(0.05)
        with pytest.raises(APIError) as info:
            c.cancel_order_by_id(o.id)
        assert info.value.status_code == 422 and '"filled"' in info.value.message


class TestEmulatorProcess:
    def test_process_when_started_then_serves_sdk_and_control_api(self, tmp_path: Path) -> None:
        bars = tmp_path / "bars.csv"
        bars.write_text("symbol,timestamp,open,high,low,close,volume\n"
                        "AAPL,2024-03-05T14:30:00Z,170,171,169,170.5,100\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.alpaca_emulator", "--port", str(port),
             "--bars", str(bars)], cwd=Path(__file__).parents[2],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            assert proc.stdout is not None
            while "alpaca emulator on" not in (line := proc.stdout.readline()):
                assert line, "emulator exited before it was ready"
            base = f"http://127.0.0.1:{port}"
            req = urllib.request.Request(f"{base}/_control/advance", data=b"{}", method="POST")
            urllib.request.urlopen(req, timeout=5).read()
            c = TradingClient("EMUKEY", "EMUSECRET", url_override=base)
            assert c.get_account().status == "ACTIVE"
            assert [a.symbol for a in c.get_all_assets()] == ["AAPL"]
        finally:
            proc.terminate()
            proc.wait(5)
        assert proc.returncode == 0
