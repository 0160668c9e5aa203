"""``build_system(market=...)``: the XNYS hours by default (which adopt the broker's market
clock), or a market that never closes (``AlwaysOpen``, a 24/7 venue)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np
from structlog.testing import capture_logs

from brokers.config import BrokerConfig
from brokers.fake import FakeBroker
from engine.config import DaemonConfig
from engine.system import SystemSpec, TradingSystem, build_system
from kernel.clock import ReplayClock
from kernel.events import BarBatch, Event, OrderApproved, OrderDenied, PlaceOrder
from kernel.model import MarketClock
from risk.config import RiskConfig
from risk.market import AlwaysOpen, Market
from tests.kit import T0, intent


class ClosedClockBroker(FakeBroker):
    """A fake broker whose market clock says the market is closed (a holiday the
    calendar does not know)."""

    async def clock(self) -> MarketClock | None:
        return MarketClock(ts=T0, is_open=False, next_open=T0 + timedelta(days=1))


async def _decide(tmp_path: Path, market: Market | None) -> tuple[TradingSystem, list[Event]]:
    """One buy of AAPL through the gate of a reconciled system, after the broker's market
    clock has been read (as the daemon does at start and on every tick)."""
    system = build_system(
        SystemSpec(name="fake", broker=BrokerConfig(), risk=RiskConfig(), state_dir=tmp_path),
        daemon=DaemonConfig(state_dir=tmp_path), clock=ReplayClock(T0), environ={},
        broker=ClosedClockBroker().connect, journaling=False, market=market)
    decided: list[Event] = []
    system.bus.subscribe(OrderApproved, decided.append)
    system.bus.subscribe(OrderDenied, decided.append)
    await system.start_books()
    await system.refresh_market_clock()
    px = np.array([100.0])
    system.on_bars(BarBatch(ts=T0, symbols=("AAPL",), open=px, high=px, low=px, close=px,
                            volume=np.array([1e6])))
    system.bus.send(PlaceOrder(intent("c1", qty=5, price="100")))
    return system, decided


class TestSystemMarket:
    async def test_market_when_default_then_the_brokers_clock_closes_it(
            self, tmp_path: Path) -> None:
        # T0 is a regular session by the calendar; the broker's clock says closed.
        with capture_logs():
            _, decided = await _decide(tmp_path, None)
        (denied,) = decided
        assert isinstance(denied, OrderDenied) and denied.reason == "MARKET_CLOSED"

    async def test_market_when_always_open_then_no_broker_clock_and_the_order_passes(
            self, tmp_path: Path) -> None:
        with capture_logs() as logs:
            system, decided = await _decide(tmp_path, AlwaysOpen())
        assert [type(e) for e in decided] == [OrderApproved]
        assert system.orders.orders["c1"].qty == 5
        assert "market.clock_failed" not in [e["event"] for e in logs]
        assert system.portfolio.cash == Decimal(100_000)
