"""Operating the running daemon: kill switch, liquidation, the CLI's control commands."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from config.settings import load_settings
from daemon.app import Daemon
from daemon.cli import EXIT_NO_DAEMON, main
from daemon.control import request
from kernel.events import BarBatch, TradingStateChanged
from signals import demodata


def _daemon(tmp_path: Path, *, speed: str = "max", environ: dict[str, str] | None = None,
            days: int = 1, **risk: Any) -> Daemon:
    csv = tmp_path / "day.csv"
    if not csv.exists():
        demodata.write(csv, days=days, n_symbols=20, seed=3)
    settings = load_settings(overrides={
        "daemon": {"state_dir": str(tmp_path / "state")},
        "feed": {"source": "replay", "replay": str(csv), "speed": speed},
        "risk": risk,
    })
    return Daemon(settings, environ=environ or {})


class TestKillSwitch:
    async def test_replay_when_kill_switch_env_then_zero_orders_reach_broker(
        self, tmp_path: Path
    ) -> None:
        daemon = _daemon(tmp_path, environ={"KILL_SWITCH": "1"})
        with capture_logs() as logs:
            assert await daemon.run() == 0
        assert daemon.system.stats.signals > 0
        assert await daemon.system.broker.open_orders() == []
        assert await daemon.system.broker.fills_since(demodata.datetime(2000, 1, 1,
                                               tzinfo=demodata.NEW_YORK)) == []
        assert daemon.system.stats.orders == 0
        assert daemon.system.stats.denied["KILL_SWITCH"] > 0
        assert set(daemon.system.stats.denied) == {"KILL_SWITCH"}
        assert any(e["event"] == "gate.reject" and e["reason"] == "KILL_SWITCH" for e in logs)

    async def test_replay_when_kill_switch_file_appears_then_halted_within_one_second(
        self, tmp_path: Path
    ) -> None:
        daemon = _daemon(tmp_path, speed="600")  # 0.1 s of wall time per bar
        halted_at: list[float] = []
        created_at: list[float] = []

        def on_state(e: TradingStateChanged) -> None:
            if e.new == "HALTED":
                halted_at.append(time.monotonic())

        daemon.system.bus.subscribe(TradingStateChanged, on_state)

        async def drop_file(batch: BarBatch) -> None:
            if daemon.system.stats.bar_batches == 5:
                daemon.settings.daemon.kill_switch_path.write_text("halt\n")
                created_at.append(time.monotonic())
            if daemon.system.stats.bar_batches == 25:
                daemon.request_stop("test done")

        daemon.after_batch.append(drop_file)
        assert await daemon.run() == 0
        assert created_at and halted_at
        assert 0 <= halted_at[0] - created_at[0] < 1.0
        assert daemon.system.risk_state.snapshot()["state"] == "HALTED"


class TestLiquidate:
    async def test_liquidate_when_requested_during_replay_then_paper_broker_is_flat(
        self, tmp_path: Path
    ) -> None:
        # Liquidation works in wall time (it waits for fills), as an operator would use it:
        # replay at 1200x real time, 0.05 s a bar.
        daemon = _daemon(tmp_path, speed="1200")
        replies: list[dict[str, Any]] = []
        held_before: list[int] = []

        async def liquidate_then_stop() -> None:
            replies.append(await request(tmp_path / "state", "liquidate", {"why": "test"}))
            daemon.request_stop("liquidated")

        async def trigger(batch: BarBatch) -> None:
            if daemon.system.stats.bar_batches == 70:
                held_before.append(len(await daemon.system.broker.positions()))
                asyncio.get_running_loop().create_task(liquidate_then_stop())

        daemon.after_batch.append(trigger)
        assert await daemon.run() == 0
        assert held_before and held_before[0] > 0, "the demo session must hold positions"
        assert replies and replies[0]["ok"], replies
        assert await daemon.system.broker.positions() == []
        assert daemon.system.risk_state.snapshot()["state"] == "HALTED"


class TestCli:
    def test_halt_when_no_daemon_then_exit_3(self, tmp_path: Path,
                                             capsys: Any) -> None:
        code = main(["halt", "--state-dir", str(tmp_path / "nothing")])
        assert code == EXIT_NO_DAEMON
        assert "no daemon is running" in capsys.readouterr().err


class TestShutdown:
    async def test_stop_when_market_orders_just_sent_in_replay_then_no_wait_for_grace(
        self, tmp_path: Path
    ) -> None:
        # Arrange: stop right after a batch whose orders reached the paper broker; in a
        # replay no later bar will fill them, so waiting for them would only burn grace.
        daemon = _daemon(tmp_path)
        stopped_with_open: list[int] = []

        async def stop_after_orders(batch: BarBatch) -> None:
            if daemon.system.stats.orders and not stopped_with_open:
                open_now = len(await daemon.system.broker.open_orders())
                if open_now:
                    stopped_with_open.append(open_now)
                    daemon.request_stop("test")

        daemon.after_batch.append(stop_after_orders)
        # Act
        started = time.monotonic()
        with capture_logs() as logs:
            assert await daemon.run() == 0
        # Assert
        assert stopped_with_open, "some orders must still be working at the stop"
        assert time.monotonic() - started < daemon.settings.daemon.shutdown_grace_secs
        assert not [e for e in logs if e["event"] == "daemon.shutdown_timeout"]
