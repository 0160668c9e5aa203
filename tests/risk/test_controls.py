"""Trading state, kill switch, execution modes, risk monitor, emergency controls."""

from __future__ import annotations

import asyncio
import os
import signal
from decimal import Decimal
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from kernel.events import CancelAllOrders, KillSwitchSource, RiskTick, TradingStateChanged
from kernel.model import OrderSide
from portfolio.rebalance import rebalance
from risk.config import RiskConfig
from risk.emergency import emergency_stop, liquidate
from risk.killswitch import KillSwitch, env_engaged
from risk.market import AlwaysOpen
from risk.modes import ExecutionMode
from risk.monitor import RiskMonitor
from risk.state import TradingState
from tests.risk.harness import Harness


def _ks(h: Harness, tmp_path: Path, env: dict[str, str] | None = None) -> KillSwitch:
    return KillSwitch(state=h.state, path=tmp_path / "KILL_SWITCH", environ=env or {},
                      poll_secs=0.02)


class TestTradingState:
    def test_request_when_changed_then_event_with_who_and_why(self) -> None:
        h = Harness()
        h.state.request(TradingState.REDUCING, who="risk_monitor", why="daily loss")
        (ev,) = [e for e in h.events if isinstance(e, TradingStateChanged)]
        assert (ev.old, ev.new, ev.who, ev.why) == ("ACTIVE", "REDUCING", "risk_monitor",
                                                    "daily loss")
        assert h.state.state is TradingState.REDUCING

    def test_resume_event_when_env_kill_switch_then_flag_stays(self) -> None:
        h = Harness()
        h.state.request(TradingState.HALTED, who="kill switch", why="env",
                        kill_switch=KillSwitchSource.ENV)
        h.state.request(TradingState.ACTIVE, who="operator", why="try")
        assert h.state.kill_switch and h.state.kill_sources == {"env"}


class TestKillSwitch:
    @pytest.mark.parametrize(("value", "engaged"), [
        ("1", True), ("TRUE", True), ("yes", True), ("0", False), ("False", False), ("", False)])
    def test_env_when_value_then_engaged_or_not(self, value: str, engaged: bool) -> None:
        assert env_engaged({"KILL_SWITCH": value}) is engaged

    def test_check_env_when_set_then_halted_and_resume_refused(self, tmp_path: Path) -> None:
        h = Harness()
        ks = _ks(h, tmp_path, {"KILL_SWITCH": "1"})
        assert ks.check_env()
        assert h.state.state is TradingState.HALTED and h.state.env_kill_switch
        result = ks.resume()
        assert not result.ok and "KILL_SWITCH" in result.detail
        assert h.state.state is TradingState.HALTED

    async def test_watch_when_file_appears_then_halted_within_a_second(
            self, tmp_path: Path) -> None:
        h = Harness()
        ks = KillSwitch(state=h.state, path=tmp_path / "KILL_SWITCH", environ={})
        task = asyncio.create_task(ks.watch())
        await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ks.path.touch()
        halted = asyncio.Event()
        h.bus.subscribe(TradingStateChanged, lambda e: halted.set())
        await asyncio.wait_for(halted.wait(), 2)
        elapsed = loop.time() - t0
        task.cancel()
        assert h.state.state is TradingState.HALTED and h.state.kill_sources == {"file"}
        assert elapsed < 1.0
        assert not ks.resume().ok  # file still there
        ks.path.unlink()
        ks.poll_file()
        assert ks.resume().ok and not h.state.kill_switch

    async def test_sigusr1_when_installed_then_halted(self, tmp_path: Path) -> None:
        h = Harness()
        ks = _ks(h, tmp_path)
        loop = asyncio.get_running_loop()
        ks.install_signal_handler(loop)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            await asyncio.sleep(0.05)
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        assert h.state.kill_sources == {"signal"}


class TestModes:
    def test_reject_when_pending_then_nothing_sent(self) -> None:
        h = Harness(mode=ExecutionMode.MANUAL)
        h.place(h.intent())
        assert [p["id"] for p in h.modes.list_pending()] == ["A1"]
        assert h.modes.reject("A1") and not h.modes.approve("A1")
        assert h.sink.submitted == []

    def test_approve_when_halted_meanwhile_then_denied_again(self) -> None:
        h = Harness(mode=ExecutionMode.MANUAL)
        h.place(h.intent())
        h.state.request(TradingState.HALTED, who="operator", why="test")
        with capture_logs() as logs:
            h.modes.approve("A1")
        assert [e["reason"] for e in logs if e["event"] == "gate.reject"] == ["TRADING_HALTED"]
        assert h.sink.submitted == []

    def test_set_mode_when_emergency_then_hook_called(self) -> None:
        h = Harness()
        called: list[str] = []
        h.modes._on_emergency = called.append
        h.modes.set_mode(ExecutionMode.EMERGENCY, who="operator")
        assert called and h.modes.mode is ExecutionMode.EMERGENCY
        h.place(h.intent())
        assert h.sink.submitted == []


class TestRiskMonitor:
    def _monitor(self, h: Harness) -> RiskMonitor:
        return RiskMonitor(h.cfg, clock=h.clock, portfolio=h.portfolio, orders=h.orders,
                           state=h.state, marks=h.gate.marks, publish=h.bus.publish,
                           send=h.bus.send)

    def test_tick_when_position_down_6pct_then_reduce_only_exit_sent(self) -> None:
        h = Harness()
        h.hold("AAPL", 30)
        m = self._monitor(h)
        m.on_tick(RiskTick(h.clock.now()))
        h.bars({"AAPL": 141.0})  # 6% below cost
        with capture_logs() as logs:
            m.on_tick(RiskTick(h.clock.now()))
        (i,) = h.sink.submitted
        assert (i.side, i.qty, i.reduce_only, i.origin) == (OrderSide.SELL, 30, True, "risk")
        assert any(e["event"] == "risk.stop_loss" for e in logs)
        m.on_tick(RiskTick(h.clock.now()))  # exit still working: not sent twice
        assert len(h.sink.submitted) == 1

    def test_tick_when_daily_loss_breached_then_reducing_with_numbers(self) -> None:
        h = Harness()
        h.hold("AAPL", 300, 150.0)  # $45,000 (as if limits were wider)
        m = self._monitor(h)
        m.on_tick(RiskTick(h.clock.now()))
        h.bars({"AAPL": 142.5})  # -$2,250 = -2.25%
        with capture_logs() as logs:
            m.on_tick(RiskTick(h.clock.now()))
        (b,) = [e for e in logs if e["event"] == "risk.breach"]
        assert (b["rule"], b["limit"], b["observed"], b["action"]) == (
            "DAILY_LOSS_LIMIT", "0.02", "0.022500", "REDUCING")
        assert h.state.state is TradingState.REDUCING

    def test_tick_when_drawdown_breached_then_halted(self) -> None:
        h = Harness()
        h.gate.marks.restore("2024-07-01", Decimal(100_000), Decimal(115_000))
        self._monitor(h).on_tick(RiskTick(h.clock.now()))
        assert h.state.state is TradingState.HALTED


class TestEmergency:
    async def test_emergency_stop_when_called_then_halted_and_cancel_all(self) -> None:
        h = Harness()
        sent: list[object] = []
        await emergency_stop(state=h.state, send=sent.append)
        assert h.state.state is TradingState.HALTED
        assert isinstance(sent[0], CancelAllOrders)

    async def test_liquidate_when_positions_then_reduce_only_exits_and_flat(self) -> None:
        h = Harness(RiskConfig(liquidation_round_secs=0.2))
        h.hold("AAPL", 30)
        h.hold("MSFT", 10)

        def send(cmd: object) -> None:
            if isinstance(cmd, CancelAllOrders):
                return
            h.bus.send(cmd)  # type: ignore[arg-type]
            for i in list(h.sink.submitted):  # the broker fills at once
                if h.orders.orders[i.client_order_id].is_open:
                    h.fill(i.client_order_id)

        result = await liquidate(cfg=h.cfg, state=h.state, send=send, orders=h.orders,
                                 portfolio=h.portfolio, market=AlwaysOpen(), clock=h.clock,
                                 poll_secs=0.01)
        assert result.flat and result.rounds == 1 and result.orders == 2
        assert all(i.reduce_only and i.origin == "emergency" for i in h.sink.submitted)
        assert h.broker.books == {"AAPL": 0, "MSFT": 0}
        assert h.state.state is TradingState.HALTED


class TestRebalance:
    def test_rebalance_when_targets_then_sells_first_and_whole_shares(self) -> None:
        cmds = rebalance({"AAPL": 0.04, "MSFT": 0.0}, equity=Decimal(100_000),
                         prices={"AAPL": Decimal(150), "MSFT": Decimal(300),
                                 "XOM": Decimal(100)},
                         holdings={"MSFT": 10, "XOM": 5, "AAPL": 0}, ts=Harness().clock.now(),
                         batch_id="rb1")
        got = [(c.intent.symbol, str(c.intent.side), c.intent.qty) for c in cmds]
        assert got == [("MSFT", "sell", 10), ("XOM", "sell", 5), ("AAPL", "buy", 26)]

    def test_rebalance_when_sent_through_gate_then_limits_apply(self) -> None:
        h = Harness()
        cmds = rebalance({"AAPL": 0.20}, equity=Decimal(100_000), prices={"AAPL": Decimal(150)},
                         holdings={}, ts=h.clock.now(), batch_id="rb2")
        for c in cmds:
            h.bus.send(c)
        (i,) = h.sink.submitted
        assert i.qty == 33  # 5% of equity at $150, not 20%


class TestKillSwitchDay:
    def test_replay_when_env_kill_switch_then_zero_orders_all_day(self, tmp_path: Path) -> None:
        # Component-level stand-in for the app replay: a day of signals through sizing
        # and the gate with KILL_SWITCH=1 sends nothing.
        from kernel.events import SignalBatch
        from kernel.model import Signal
        from risk.sizing import Sizer

        h = Harness()
        assert _ks(h, tmp_path, {"KILL_SWITCH": "1"}).check_env()
        sizer = Sizer(h.cfg, equity=h.portfolio.equity,
                      holding=lambda s: h.portfolio.qty(s) + h.orders.working_qty(s),
                      send=h.bus.send)
        for minute in range(390):
            h.clock.advance(60)
            sigs = tuple(Signal(f"d{minute}.{s}", s, 0.5, p, h.clock.now(), "day")
                         for s, p in (("AAPL", 150.0), ("MSFT", 300.0)))
            sizer.on_signals(SignalBatch(ts=h.clock.now(), source="day", signals=sigs))
        assert h.sink.submitted == []
        assert h.gate.denied == {"KILL_SWITCH": 780}


class TestControls:
    async def test_commands_when_called_then_state_follows(self, tmp_path: Path) -> None:
        from risk.controls import register_controls
        from risk.emergency import LiquidationResult

        h = Harness()
        handlers: dict[str, object] = {}

        async def liq(why: str) -> LiquidationResult:
            return LiquidationResult(flat=True, rounds=0, orders=0)

        register_controls(handlers.__setitem__, state=h.state, killswitch=_ks(h, tmp_path),
                          modes=h.modes, gate=h.gate, send=h.bus.send, liquidate=liq)
        assert (await handlers["halt"]({}))["state"] == "HALTED"  # type: ignore[operator]
        assert (await handlers["resume"]({}))["resumed"] is True  # type: ignore[operator]
        assert (await handlers["mode"]({"mode": "manual"}))["mode"] == "MANUAL"  # type: ignore[operator]
        assert (await handlers["liquidate"]({}))["liquidation"]["flat"]  # type: ignore[operator]
