"""One typed path decides the trading state and readiness, in the wired daemon.

A broker adapter only reports (``recovering`` after a reconnect); the reconciler alone
says when the books are confirmed again; a kill switch is a typed field, never a
spelling of ``who``; the reconciler escalates through ``TradingStatus``.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any

from config.settings import load_settings
from daemon.app import Daemon
from kernel.events import BrokerStatusChanged, Event, TradingStateChanged
from risk.state import TradingState
from tests.kit import T0, FakeBroker, intent


def _daemon(tmp_path: Path, broker: FakeBroker) -> Daemon:
    settings: Any = load_settings(overrides={"daemon": {"state_dir": str(tmp_path / "s")}})
    d = Daemon(settings, broker=broker.connect)
    return d


async def _settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


class TestReadiness:
    async def test_adapter_recovering_when_reconciler_caught_up_then_ready_again(
            self, tmp_path: Path) -> None:
        # Arrange: a started daemon whose books are confirmed
        broker = FakeBroker()
        d = _daemon(tmp_path, broker)
        await d.system.reconciler.reconcile("start", gate=True, startup=True)
        assert not d.system.risk_state.reconciling
        # Act: an adapter (IB, say) reconnects; it never says "ready" itself
        d.system.bus.publish(BrokerStatusChanged("ib", "recovering", T0, "reconnected"))  # type: ignore[arg-type]
        gated = d.system.risk_state.reconciling
        await _settle()
        # Assert: the reconciler's pass, and only it, ends the gate
        assert gated
        assert d.system.reconciler.ready
        assert not d.system.risk_state.reconciling


class TestKillSwitchIsTyped:
    async def test_operator_halt_when_who_spells_a_kill_switch_then_resume_clears_it(
            self, tmp_path: Path) -> None:
        # An operator (or an MQTT control message) may name itself anything: a `who`
        # that reads like the environment's kill switch must not engage it.
        d = _daemon(tmp_path, FakeBroker())
        halt, resume = d.control.handlers["halt"], d.control.handlers["resume"]

        await halt({"who": "kill_switch:env", "why": "maintenance"})
        reply = await resume({"who": "operator", "why": "done"})

        assert reply["resumed"] is True
        assert d.system.risk_state.state is TradingState.ACTIVE
        assert not d.system.risk_state.kill_switch

    async def test_kill_switch_file_when_engaged_then_typed_source_on_the_event(
            self, tmp_path: Path) -> None:
        d = _daemon(tmp_path, FakeBroker())
        seen: list[Event] = []
        d.system.bus.subscribe(TradingStateChanged, seen.append)
        d.system.killswitch.path.parent.mkdir(parents=True, exist_ok=True)
        d.system.killswitch.path.touch()

        d.system.killswitch.poll_file()

        (ev,) = seen
        assert isinstance(ev, TradingStateChanged)
        assert ev.new is TradingState.HALTED
        assert getattr(ev, "kill_switch", None) == "file"
        assert d.system.risk_state.kill_switch


class TestReconcilerEscalates:
    async def test_drift_when_found_then_state_changes_through_trading_status(
            self, tmp_path: Path) -> None:
        # Arrange: the broker holds a position the books never saw
        broker = FakeBroker()
        d = _daemon(tmp_path, broker)
        await d.system.reconciler.reconcile("start", gate=True, startup=True)
        broker.accept(intent("manual"), report=False)
        broker.fill("manual", 5, Decimal("100"), report=False)
        d.system.reconciler._confirm_delay = 0
        # Act
        await d.system.reconciler.reconcile("tick")
        # Assert: HALTED, applied by TradingStatus (changed_by is recorded by it)
        assert d.system.risk_state.state is TradingState.HALTED
        assert d.system.risk_state.changed_by == "reconcile"


class TestPnlBase:
    async def test_summary_pnl_when_account_differs_from_paper_cash_then_from_marks(
            self, tmp_path: Path) -> None:
        # Arrange: a broker account worth 50,000, not the paper default of 100,000
        d = _daemon(tmp_path, FakeBroker(cash=Decimal(50_000)))
        assert d.system.journal is not None
        # Act: start the books as the daemon does, no trading
        async with d.system.journal:
            await d.system.start_books()
            pnl = d.system.summary()["pnl"]
        # Assert
        assert pnl == "0.00"


class TestModesSurviveRestart:
    async def test_restart_when_semi_auto_with_pending_approvals_then_restored(
            self, tmp_path: Path) -> None:
        # Arrange: MANUAL mode, two orders parked, one rejected by the operator
        broker = FakeBroker()
        d1 = _daemon(tmp_path, broker)
        assert d1.system.journal is not None
        async with d1.system.journal:
            await d1.system.start_books()
            d1.system.modes.set_mode("MANUAL", who="operator")
            first = d1.system.modes.park(intent("a-1"))
            second = d1.system.modes.park(intent("a-2", symbol="MSFT"))
            d1.system.modes.reject(first)
        # Act: a new process on the same state directory
        d2 = _daemon(tmp_path, broker)
        assert d2.system.journal is not None
        async with d2.system.journal:
            await d2.system.start_books()
            # Assert
            assert str(d2.system.modes.mode) == "MANUAL"
            assert [p["id"] for p in d2.system.modes.list_pending()] == [second]
            assert [p["client_order_id"] for p in d2.system.modes.list_pending()] == ["a-2"]
            d2.system.modes.approve(second)
        # a third life with nothing pending still never gives an old id again
        d3 = _daemon(tmp_path, broker)
        assert d3.system.journal is not None
        async with d3.system.journal:
            await d3.system.start_books()
            assert d3.system.modes.list_pending() == []
            third = d3.system.modes.park(intent("a-3"))
            assert third not in (first, second)
