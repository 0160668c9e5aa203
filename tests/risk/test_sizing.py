"""Sizing: a signal is a target position; the order trades the gap to what is held and
already working, in whole shares, inside the min/max order notional."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from brokers.config import BrokerConfig
from brokers.fake import FakeBroker
from engine.config import DaemonConfig
from engine.system import SystemSpec, build_system
from kernel.clock import ReplayClock
from kernel.events import BarBatch, Event, OrderApproved, OrderDenied, PlaceOrder, SignalBatch
from kernel.model import OrderSide, OrderType, Signal, TimeInForce
from risk.config import RiskConfig
from risk.market import AlwaysOpen
from risk.sizing import Sizer, target_qty

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)
EQUITY = Decimal(100_000)


def bars(**closes: float) -> BarBatch:
    """One bar per symbol at T0 (open = high = low = close)."""
    px = np.array(list(closes.values()))
    return BarBatch(ts=T0, symbols=tuple(closes), open=px, high=px, low=px, close=px,
                    volume=np.full(len(px), 1e6))


def signal(strength: float, price: float = 150.0, symbol: str = "AAPL", sid: str = "s1",
           source: str = "demo") -> Signal:
    return Signal(id=sid, symbol=symbol, strength=strength, price=price, ts=T0, source=source)


class Holdings:
    """A settable stand-in for 'position + working quantity' per symbol."""

    def __init__(self, **qty: int) -> None:
        self.qty: defaultdict[str, int] = defaultdict(int, qty)

    def __call__(self, symbol: str) -> int:
        return self.qty[symbol]


def sizer(cfg: RiskConfig | None = None, holding: Holdings | None = None,
          sent: list[PlaceOrder] | None = None) -> Sizer:
    return Sizer(cfg or RiskConfig(), equity=lambda: EQUITY, holding=holding or Holdings(),
                 send=(sent if sent is not None else []).append)


class TestSizerTargets:
    def test_size_when_seed_example_then_buys_five_shares(self) -> None:
        # Arrange: equity $100,000, AAPL strength 0.15 at 150.00, 5% max per position
        s = sizer()

        # Act: 0.15 x 0.05 x 100,000 = $750 -> 750 / 150 = 5 shares
        intent = s.size(signal(0.15, 150.00), EQUITY)

        # Assert
        assert intent is not None
        assert (intent.symbol, intent.side, intent.qty) == ("AAPL", OrderSide.BUY, 5)
        assert intent.order_type is OrderType.MARKET
        assert intent.time_in_force is TimeInForce.DAY
        assert intent.reference_price == Decimal("150.0")
        assert intent.notional == Decimal("750.0")

    def test_size_when_below_threshold_then_target_zero_sells_existing_long(self) -> None:
        s = sizer(holding=Holdings(AAPL=8))

        intent = s.size(signal(0.05), EQUITY)

        assert intent is not None
        assert (intent.side, intent.qty) == (OrderSide.SELL, 8)

    def test_size_when_below_threshold_and_flat_then_nothing(self) -> None:
        assert sizer().size(signal(0.0999), EQUITY) is None

    def test_size_when_negative_strength_long_only_then_target_zero(self) -> None:
        # Arrange
        flat, long = sizer(), sizer(holding=Holdings(AAPL=3))

        # Act
        from_flat = flat.size(signal(-0.8), EQUITY)
        from_long = long.size(signal(-0.8, price=100.0), EQUITY)

        # Assert: never short, but an existing long is closed
        assert from_flat is None
        assert from_long is not None
        assert (from_long.side, from_long.qty) == (OrderSide.SELL, 3)

    def test_size_when_allow_shorts_then_short_target(self) -> None:
        s = sizer(RiskConfig(allow_shorts=True))

        intent = s.size(signal(-0.3, price=100.0), EQUITY)

        # 0.3 x 0.05 x 100,000 = 1,500 -> 15 shares short
        assert intent is not None
        assert (intent.side, intent.qty) == (OrderSide.SELL, 15)
        assert target_qty(signal(-0.3, price=100.0), EQUITY,
                          RiskConfig(allow_shorts=True)) == -15

    def test_size_when_fractional_shares_then_floored(self) -> None:
        # 0.5 x 0.05 x 100,000 = 2,500 / 333.33 = 7.5 -> 7
        intent = sizer().size(signal(0.5, price=333.33), EQUITY)

        assert intent is not None
        assert intent.qty == 7

    @pytest.mark.parametrize(("strength", "price", "expected"), [
        (1.0, 100.0, 50), (0.2, 100.0, 10), (0.15, 150.0, 5),
        (0.3, 0.1, 15_000),  # 1,500 / 0.1 is 14999.999... in floats: must not lose a share
        (0.7, 17.5, 200),
    ])
    def test_target_qty_when_examples_then_hand_computed(
        self, strength: float, price: float, expected: int
    ) -> None:
        assert target_qty(signal(strength, price), EQUITY, RiskConfig()) == expected

    def test_size_when_holding_already_at_target_then_nothing(self) -> None:
        assert sizer(holding=Holdings(AAPL=5)).size(signal(0.15), EQUITY) is None


class TestSizerLimits:
    def test_size_when_below_min_notional_then_skipped_and_logged(self) -> None:
        # Arrange: 0.105 x 0.05 x 100,000 = $525 -> 13 shares at $40; 12 held
        s = sizer(holding=Holdings(AAPL=12))

        # Act: the 1-share gap is $40, under the $50 minimum
        with capture_logs() as logs:
            intent = s.size(signal(0.105, price=40.0), EQUITY)

        # Assert
        assert intent is None
        assert s.skipped == 1
        assert logs == [{
            "event": "sizing.skip", "log_level": "info", "symbol": "AAPL", "signal_id": "s1",
            "qty": 1, "notional": "40.0", "reason": "MIN_ORDER_NOTIONAL", "limit": "50",
        }]

    def test_size_when_above_max_notional_then_capped_and_logged(self) -> None:
        # 1.0 x 0.05 x 1,000,000 = 50,000 target -> 500 shares at 100; cap 10,000 -> 100
        s = Sizer(RiskConfig(), equity=lambda: Decimal(1_000_000), holding=Holdings(),
                  send=lambda c: None)

        with capture_logs() as logs:
            intent = s.size(signal(1.0, price=100.0), Decimal(1_000_000))

        assert intent is not None
        assert intent.qty == 100
        assert intent.notional <= RiskConfig().max_order_notional
        assert [(e["event"], e["qty"], e["capped_qty"]) for e in logs] == [
            ("sizing.capped", 500, 100)]

    def test_size_when_cap_below_one_share_then_nothing(self) -> None:
        cfg = RiskConfig(max_order_notional=Decimal(100), min_order_notional=Decimal(0))
        s = Sizer(cfg, equity=lambda: EQUITY, holding=Holdings(), send=lambda c: None)

        with capture_logs():
            assert s.size(signal(1.0, price=150.0), EQUITY) is None


class TestSizerWorkingOrders:
    async def test_on_signals_when_order_still_working_then_no_second_order(
            self, tmp_path: Path) -> None:
        # Arrange: the account as the daemon wires it (sizing sees the portfolio and the
        # order manager), reconciled, with a broker that takes orders and leaves them working
        broker = FakeBroker(EQUITY, clock=ReplayClock(T0))
        system = build_system(
            SystemSpec(name="fake", broker=BrokerConfig(), risk=RiskConfig(),
                       state_dir=tmp_path),
            daemon=DaemonConfig(state_dir=tmp_path), clock=ReplayClock(T0), environ={},
            broker=broker.connect, journaling=False, market=AlwaysOpen())
        decided: list[Event] = []
        system.bus.subscribe(OrderApproved, decided.append)
        system.bus.subscribe(OrderDenied, decided.append)
        async with system:
            with capture_logs():
                await system.start_books()
                system.on_bars(bars(AAPL=150.0))

                # Act: the first order reaches the broker and stays working
                system.on_signals(SignalBatch(ts=T0, source="demo", signals=(signal(0.15),)))
                await system.orders.drained()
                system.on_signals(SignalBatch(ts=T0, source="demo",
                                              signals=(signal(0.15, sid="s2"),)))

            # Assert: sizing sent nothing for the second signal (the gate decided once)
            assert [type(e) for e in decided] == [OrderApproved]
            assert broker.submitted == [decided[0].intent.client_order_id]  # type: ignore[attr-defined]
            assert system.orders.working_qty("AAPL") == 5

    def test_on_signals_when_batch_then_one_place_order_per_symbol_to_trade(self) -> None:
        sent: list[PlaceOrder] = []
        s = sizer(holding=Holdings(MSFT=0), sent=sent)
        batch = SignalBatch(ts=T0, source="demo", signals=(
            signal(0.15, symbol="AAPL"), signal(0.01, symbol="MSFT"),
            signal(0.2, price=50.0, symbol="IBM")))

        s.on_signals(batch)

        assert [(c.intent.symbol, c.intent.qty) for c in sent] == [("AAPL", 5), ("IBM", 20)]
        assert {c.intent.batch_id for c in sent} == {f"demo:{T0.isoformat()}"}


class TestClientOrderId:
    def test_size_when_same_signal_twice_then_same_id(self) -> None:
        a = sizer().size(signal(0.15), EQUITY)
        b = sizer().size(signal(0.15), EQUITY)

        assert a is not None and b is not None
        assert a.client_order_id == b.client_order_id
        assert a.client_order_id.startswith("td-")

    @pytest.mark.parametrize("other", [
        signal(0.15, sid="s2"), signal(0.15, symbol="MSFT"), signal(0.15, source="model"),
    ])
    def test_size_when_different_signal_then_different_id(self, other: Signal) -> None:
        a = sizer().size(signal(0.15), EQUITY)
        b = sizer().size(other, EQUITY)

        assert a is not None and b is not None
        assert a.client_order_id != b.client_order_id
