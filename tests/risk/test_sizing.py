"""Sizing: a signal is a target position; the order trades the gap to what is held and
already working, in whole shares, inside the min/max order notional."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
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


class Counts:
    """``orders_today`` as the order manager answers it: per symbol, or in total."""

    def __init__(self, **per_symbol: int) -> None:
        self.per_symbol = per_symbol

    def __call__(self, symbol: str | None = None) -> int:
        return self.per_symbol.get(symbol, 0) if symbol else sum(self.per_symbol.values())


def budget_sizer(counts: Counts, holding: Holdings, sent: list[PlaceOrder],
                 cfg: RiskConfig | None = None) -> Sizer:
    return Sizer(cfg or RiskConfig(), equity=lambda: EQUITY, holding=holding,
                 send=sent.append, orders_today=counts)


class TestSizerOrderBudget:
    """The gate allows ``max_orders_per_symbol_day`` orders per symbol: sizing does not
    propose what it can only refuse, and keeps a symbol's last order for its exit."""

    def test_size_when_symbol_budget_spent_then_skipped_and_said_once_a_day(self) -> None:
        # Arrange: AAPL has had its 5 orders today; the model asks to exit every minute.
        sent: list[PlaceOrder] = []
        s = budget_sizer(Counts(AAPL=5), Holdings(AAPL=10), sent)
        batches = [SignalBatch(ts=T0, source="m", signals=(signal(0.0, sid=f"s{i}"),))
                   for i in range(30)]
        # Act
        with capture_logs() as logs:
            for b in batches:
                s.on_signals(b)
        # Assert
        assert sent == []
        skips = [e for e in logs if e["event"] == "sizing.skip"]
        assert len(skips) == 1
        assert (skips[0]["reason"], skips[0]["limit"], skips[0]["observed"]) == (
            "MAX_ORDERS_PER_SYMBOL_DAY", 5, 5)
        assert skips[0]["signal_id"] == "s0" and skips[0]["side"] == "sell"
        assert s.skips_by_reason == {"MAX_ORDERS_PER_SYMBOL_DAY": 30}

    def test_size_when_one_order_left_then_entry_skipped_and_exit_sent(self) -> None:
        sent: list[PlaceOrder] = []
        s = budget_sizer(Counts(AAPL=4, MSFT=4), Holdings(MSFT=5), sent)
        with capture_logs() as logs:
            entry = s.size(signal(0.15), EQUITY)
            exit_ = s.size(signal(0.0, symbol="MSFT", price=300.0), EQUITY)
        assert entry is None
        assert exit_ is not None and (exit_.side, exit_.qty) == (OrderSide.SELL, 5)
        skip = next(e for e in logs if e["event"] == "sizing.skip")
        assert (skip["reason"], skip["observed"]) == ("EXIT_RESERVED", 4)

    def test_size_when_day_budget_spent_then_skipped(self) -> None:
        sent: list[PlaceOrder] = []
        s = budget_sizer(Counts(XOM=3), Holdings(), sent,
                         cfg=RiskConfig(max_orders_per_day=3))
        assert s.size(signal(0.15), EQUITY) is None
        assert s.skips_by_reason == {"MAX_ORDERS_PER_DAY": 1}

    def test_size_when_new_day_then_skips_said_again(self) -> None:
        sent: list[PlaceOrder] = []
        counts = Counts(AAPL=5)
        s = budget_sizer(counts, Holdings(AAPL=10), sent)
        with capture_logs() as logs:
            s.on_signals(SignalBatch(ts=T0, source="m", signals=(signal(0.0, sid="a"),)))
            tomorrow = T0 + timedelta(days=1)
            s.on_signals(SignalBatch(ts=tomorrow, source="m", signals=(
                Signal(id="b", symbol="AAPL", strength=0.0, price=150.0, ts=tomorrow,
                       source="m"),)))
        assert [e["signal_id"] for e in logs if e["event"] == "sizing.skip"] == ["a", "b"]

    def test_size_when_no_counts_wired_then_proposes_as_before(self) -> None:
        s = sizer(holding=Holdings(AAPL=10))
        intent = s.size(signal(0.0), EQUITY)
        assert intent is not None and intent.side is OrderSide.SELL

    def test_batch_when_more_orders_than_one_execution_takes_then_exits_and_strongest_go(
        self
    ) -> None:
        # Arrange: 12 symbols want a buy (strength rising with the index), S11 an exit.
        sent: list[PlaceOrder] = []
        s = budget_sizer(Counts(), Holdings(S11=10), sent)
        buys = [signal(0.2 + i * 0.05, symbol=f"S{i:02d}", sid=f"x{i}", price=10.0)
                for i in range(11)]
        sigs = (*buys, signal(0.0, symbol="S11", sid="x11", price=10.0))
        # Act
        with capture_logs() as logs:
            s.on_signals(SignalBatch(ts=T0, source="m", signals=sigs))
        # Assert
        assert [c.intent.symbol for c in sent] == [*(f"S{i:02d}" for i in range(2, 11)), "S11"]
        skip = next(e for e in logs if e["event"] == "sizing.skip")
        assert (skip["reason"], skip["limit"], skip["observed"], skip["skipped"]) == (
            "MAX_ORDERS_PER_EXECUTION", 10, 12, 2)
        assert skip["symbols"] == ["S01", "S00"]

    def test_batch_when_day_budget_nearly_spent_then_only_what_is_left(self) -> None:
        sent: list[PlaceOrder] = []
        s = budget_sizer(Counts(XOM=197), Holdings(), sent)
        sigs = tuple(signal(0.5, symbol=f"S{i}", sid=f"d{i}", price=10.0) for i in range(5))
        s.on_signals(SignalBatch(ts=T0, source="m", signals=sigs))
        assert len(sent) == 3
        assert s.skips_by_reason == {"MAX_ORDERS_PER_DAY": 2}
