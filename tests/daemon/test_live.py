"""The live driver's hooks on a real trading system (``build_system``, the fake broker, the
real gate and order manager), one phase at a time on a test clock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from brokers.fake import FakeBroker
from config.settings import Settings
from daemon.live import LiveDriver
from engine.session import PhaseAt
from kernel.events import Event, OrderDenied, SessionPhase
from kernel.model import AccountSnapshot, OrderType, TimeInForce
from risk.state import TradingState
from tests.risk.conftest import MakeHarness
from tests.risk.harness import Harness

P = SessionPhase
DAY = date(2024, 7, 1)  # the harness's clock: Monday 2024-07-01, 11:00 New York


def settings(tmp: Path, **session: Any) -> Settings:
    return Settings(daemon={"state_dir": tmp}, session=session)  # type: ignore[arg-type]


def driver(h: Harness, cfg: Settings, published: list[Event] | None = None) -> LiveDriver:
    return LiveDriver(cfg, systems=[h.system], clock=h.clock,
                      publish=(published.append if published is not None else lambda e: None),
                      environ={}, on_failure=_raise, on_finished=lambda why: None)


def _raise(exc: BaseException) -> None:
    raise exc


def at(d: LiveDriver, phase: SessionPhase, day: date = DAY) -> PhaseAt:
    session = d.calendar.session_on(day)
    assert session is not None
    return d.calendar.phase_of(session, phase)


async def call(hook: Any, where: PhaseAt) -> Mapping[str, Any]:
    out: Mapping[str, Any] = await hook(where)
    return out


class LastEquityBroker(FakeBroker):
    """The fake broker reporting Alpaca's ``last_equity`` (equity at the last close)."""

    last_equity = Decimal("101234.56")

    async def account(self) -> AccountSnapshot:
        a = await super().account()
        return AccountSnapshot(a.ts, a.cash, a.equity, a.buying_power, a.positions,
                               last_equity=self.last_equity)


class TestClose:
    async def test_closing_when_flatten_then_day_orders_cancelled_and_positions_closed(
            self, harness: MakeHarness, tmp_path: Path) -> None:
        # Arrange: 10 AAPL held, a buy of MSFT working
        h = await harness(holdings={"AAPL": 10})
        h.place(h.intent("MSFT", 5))
        await h.orders.drained()
        working = [o.client_order_id for o in h.orders.open_orders()]
        assert working
        h.broker.fill_on_submit = True  # the market takes the flatten orders at once
        d = driver(h, settings(tmp_path, at_close="flatten", close_timeout_secs=5))
        # Act
        with capture_logs() as logs:
            out = await call(d.hooks.on_closing, at(d, P.CLOSING))
        # Assert
        assert h.broker.cancels == working
        assert await h.broker.positions() == [] and h.portfolio.qty("AAPL") == 0
        (exit_,) = [i for i in h.submitted if i.symbol == "AAPL"]
        assert (exit_.reduce_only, exit_.origin, exit_.order_type, exit_.time_in_force) == (
            True, "session", OrderType.MARKET, TimeInForce.DAY)
        assert exit_.client_order_id.startswith("close-")
        assert out["flat"] is True and out["cancelled"] == 1 and out["orders"] == 1
        assert [e["event"] for e in logs if e["event"].startswith("session.")] == [
            "session.day_orders_cancelled", "session.flattened"]

    async def test_closing_when_halted_then_flatten_denied_and_positions_held(
            self, harness: MakeHarness, tmp_path: Path) -> None:
        # Arrange: an operator halted the account
        h = await harness(holdings={"AAPL": 10})
        h.state.request(TradingState.HALTED, who="operator", why="news")
        d = driver(h, settings(tmp_path, at_close="flatten", close_timeout_secs=1))
        # Act
        with capture_logs() as logs:
            out = await call(d.hooks.on_closing, at(d, P.CLOSING))
        # Assert: the gate denied the exit (a halt is a halt); the position stays, said so
        denied = [e for e in h.events if isinstance(e, OrderDenied)]
        assert [e.reason for e in denied] == ["TRADING_HALTED"]
        assert out["flat"] is False and out["remaining"] == {"AAPL": 10} and out["denied"] == 1
        assert h.broker.received == []
        assert any(e["event"] == "session.flatten_incomplete" for e in logs)

    async def test_close_when_hold_then_day_orders_cancelled_and_position_kept(
            self, harness: MakeHarness, tmp_path: Path) -> None:
        h = await harness(holdings={"AAPL": 10})
        h.place(h.intent("MSFT", 5))
        await h.orders.drained()
        d = driver(h, settings(tmp_path, at_close="hold", close_timeout_secs=5))
        assert await call(d.hooks.on_closing, at(d, P.CLOSING)) == {"at_close": "hold"}
        out = await call(d.hooks.on_close, at(d, P.CLOSED))
        assert out["cancelled"] == 1 and out["still_open"] == 0
        assert out["positions"] == {"AAPL": 10} and h.orders.open_orders() == []


class TestPreflight:
    async def test_preflight_when_books_unreconciled_then_halted_and_a_pass_lifts_it(
            self, harness: MakeHarness, tmp_path: Path) -> None:
        # Arrange: the books are not confirmed with the broker yet
        h = await harness(reconciled=False)
        d = driver(h, settings(tmp_path))
        # Act: preflight fails
        out = await call(d.hooks.on_preflight, at(d, P.PREFLIGHT))
        for task in list(d._tasks.values()):  # the re-check loop: not under test here
            task.cancel()
        # Assert
        assert out["ready"] is False and out["failed"] == {"this": ["books"]}
        assert (h.state.state, h.state.changed_by) == (TradingState.HALTED, "preflight")
        assert "books" in h.state.reason
        # Act: the books are reconciled; the next check passes
        await h.system.start_books()
        out = await call(d.hooks.on_preflight, at(d, P.PREFLIGHT))
        # Assert: the preflight's own halt is lifted
        assert out["ready"] is True
        assert (h.state.state, h.state.changed_by) == (TradingState.ACTIVE, "preflight")
        assert d.status() is None  # no phase yet: the runner did not run
        assert d.preflight["this"].ready

    async def test_preflight_when_operator_halted_then_fails_and_never_lifts_it(
            self, harness: MakeHarness, tmp_path: Path) -> None:
        h = await harness()
        h.state.request(TradingState.HALTED, who="operator", why="news")
        d = driver(h, settings(tmp_path))
        out = await call(d.hooks.on_preflight, at(d, P.PREFLIGHT))
        for task in list(d._tasks.values()):
            task.cancel()
        assert out["failed"] == {"this": ["trading_state"]}
        assert (h.state.state, h.state.changed_by) == (TradingState.HALTED, "operator")

    async def test_preflight_retry_when_fixed_then_lifted_by_the_recheck(
            self, harness: MakeHarness, tmp_path: Path) -> None:
        h = await harness(reconciled=False)
        d = driver(h, settings(tmp_path, preflight_retry_secs=0.05))
        d.runner._current = at(d, P.PREFLIGHT)  # the runner is in today's preflight
        await call(d.hooks.on_preflight, at(d, P.PREFLIGHT))
        assert h.state.state is TradingState.HALTED
        await h.system.start_books()
        for _ in range(100):
            if h.state.state is TradingState.ACTIVE:
                break
            await asyncio.sleep(0.02)
        assert (h.state.state, h.state.changed_by) == (TradingState.ACTIVE, "preflight")
        assert "session.preflight_retry" not in d._tasks  # it ended once all passed


class TestRoll:
    async def test_roll_when_next_day_then_counters_restart_and_done_orders_forgotten(
            self, harness: MakeHarness, tmp_path: Path) -> None:
        # Arrange: one order done on Monday
        h = await harness()
        h.broker.fill_on_submit = True
        h.place(h.intent("AAPL", 5))
        await h.orders.drained()
        assert h.orders.orders_today() == 1 and len(h.orders.orders) == 1
        d = driver(h, settings(tmp_path))
        # Act: Tuesday's session begins (08:30 New York)
        h.clock.set(h.clock.now() + timedelta(days=1, hours=-2, minutes=-30))
        out = await call(d.hooks.on_roll, at(d, P.PREFLIGHT, date(2024, 7, 2)))
        # Assert
        assert out["orders_today"] == 0 and h.orders.orders_today() == 0
        assert out["orders_forgotten"] == 1 and h.orders.orders == {}
        assert h.system.marks.day == "2024-07-02"
        assert out["start_source"] == "books"
        assert h.system.marks.start_of_day == h.portfolio.equity()
        assert h.gate.stats()["passed"] == 1

    async def test_roll_when_broker_reports_last_equity_then_start_of_day_is_it(
            self, harness: MakeHarness, tmp_path: Path) -> None:
        h = await harness()
        fake = LastEquityBroker(Decimal(100_000), clock=h.clock)
        h.system.broker = fake
        d = driver(h, settings(tmp_path))
        out = await call(d.hooks.on_roll, at(d, P.PREFLIGHT))
        assert out["start_source"] == "broker last_equity"
        assert h.system.marks.start_of_day == Decimal("101234.56")
        assert h.system.marks.day == "2024-07-01"
