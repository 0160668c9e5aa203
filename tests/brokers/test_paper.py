"""PaperBroker: submission, matching rules, time in force, cancel/replace, account."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest
import structlog.testing

from kernel.broker import Broker
from kernel.errors import BrokerRejected
from kernel.events import (
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderNew,
    OrderReplaced,
)
from kernel.model import Fill
from kernel.orders import OrderStatus
from portfolio.book import Portfolio
from tests.brokers.paper_kit import MINUTE, D, Harness, batch, flat, intent


class TestSubmit:
    async def test_submit_when_valid_then_reports_order_new_with_broker_id(self) -> None:
        # Arrange
        h = Harness()
        # Act
        await h.submit(intent("a"))
        # Assert
        (new,) = h.sink.events
        assert isinstance(new, OrderNew)
        assert new.client_order_id == "a" and new.broker_order_id == "paper-1"
        order = await h.broker.get_order("a")
        assert order is not None and order.status is OrderStatus.NEW
        assert h.orders()["a"].status is OrderStatus.NEW

    async def test_submit_when_client_order_id_reused_then_rejected(self) -> None:
        h = Harness()
        await h.submit(intent("a"))
        with pytest.raises(BrokerRejected, match="client_order_id must be unique"):
            await h.broker.submit(intent("a", "sell"))
        assert len(await h.broker.open_orders()) == 1

    @pytest.mark.parametrize("qty", [0, -5])
    async def test_submit_when_qty_not_positive_then_rejected_and_nothing_recorded(
        self, qty: int
    ) -> None:
        h = Harness()
        with pytest.raises(BrokerRejected, match="qty"):
            await h.broker.submit(intent("a", qty=qty))
        assert await h.broker.get_order("a") is None
        assert h.sink.events == []

    @pytest.mark.parametrize(
        ("order_type", "limit", "stop", "missing"),
        [("limit", None, None, "limit_price"), ("stop", None, None, "stop_price"),
         ("stop_limit", None, "10", "limit_price"), ("stop_limit", "10", None, "stop_price")],
    )
    async def test_submit_when_price_missing_for_type_then_rejected(
        self, order_type: str, limit: str | None, stop: str | None, missing: str
    ) -> None:
        h = Harness()
        with pytest.raises(BrokerRejected, match=missing):
            await h.broker.submit(intent("a", order_type=order_type, limit=limit, stop=stop))
        assert await h.broker.get_order("a") is None

    async def test_submit_when_buying_power_insufficient_then_rejected(self) -> None:
        # 1000 x 100 x 1.0005 = 100,050 > 100,000 cash
        h = Harness(slippage_bps=D(5))
        with pytest.raises(BrokerRejected, match="insufficient buying power") as err:
            await h.broker.submit(intent("a", qty=1000, ref="100"))
        assert err.value.status == 403
        assert await h.broker.get_order("a") is None

    async def test_submit_when_open_buys_reserve_cash_then_next_buy_rejected(self) -> None:
        h = Harness(initial_cash=D(10_000))
        await h.submit(intent("a", qty=60, order_type="limit", limit="100"))  # reserves 6000
        with pytest.raises(BrokerRejected, match="insufficient buying power"):
            await h.broker.submit(intent("b", qty=50, ref="100"))
        await h.broker.cancel("a")
        await h.submit(intent("b", qty=50, ref="100"))  # reservation released

    async def test_submit_when_selling_without_position_then_accepted_as_short(self) -> None:
        h = Harness(initial_cash=D(1_000))
        await h.submit(intent("s", "sell", qty=500, ref="100"))
        h.bar(AAA=flat(100))
        assert [(p.symbol, p.qty) for p in await h.broker.positions()] == [("AAA", -500)]

    async def test_submit_when_ack_latency_then_order_new_arrives_later(self) -> None:
        h = Harness(ack_latency_ms=20)
        await h.submit(intent("a"))
        assert h.sink.events == []
        await asyncio.sleep(0.05)
        assert [type(e) for e in h.sink.events] == [OrderNew]

    async def test_fill_when_ack_still_pending_then_order_new_precedes_fill(self) -> None:
        h = Harness(ack_latency_ms=10_000)
        await h.submit(intent("a"))
        h.bar(AAA=flat(100))
        assert [type(e) for e in h.sink.events] == [OrderNew, OrderFilled]
        assert h.orders()["a"].status is OrderStatus.FILLED
        await asyncio.sleep(0)  # the canceled timer must not report a second OrderNew
        assert len(h.sink.of(OrderNew)) == 1

    async def test_broker_when_checked_then_satisfies_protocol(self) -> None:
        h = Harness()
        assert isinstance(h.broker, Broker)
        assert await h.broker.clock() is None


class TestMarketOrders:
    async def test_market_buy_when_next_bar_then_fills_at_open_plus_slippage_and_commission(
        self,
    ) -> None:
        # Arrange: 5 bps, $0.005/share, $1 minimum
        h = Harness(slippage_bps=D(5), commission_per_share=D("0.005"), min_commission=D(1))
        await h.submit(intent("a", qty=100))
        # Act
        h.bar(AAA=(100.0, 101.0, 99.0, 100.5, 1e6))
        # Assert: 100 x 1.0005 = 100.05; commission max(0.50, 1.00) = 1.00
        (filled,) = h.sink.fills("a")
        assert filled.fill.price == D("100.0500") and filled.fill.qty == 100
        assert filled.fill.commission == D("1.00")
        assert filled.fill.ts == h.now
        acct = await h.broker.account()
        assert acct.cash == D("100000") - D("10005.00") - D("1.00")
        assert acct.equity == acct.cash + 100 * D("100.5")
        assert h.orders()["a"].status is OrderStatus.FILLED

    async def test_market_sell_when_next_bar_then_fills_at_open_minus_slippage(self) -> None:
        h = Harness(slippage_bps=D(5), commission_per_share=D("0.005"), min_commission=D(1))
        await h.submit(intent("s", "sell", qty=300))
        h.bar(AAA=(50.0, 50.0, 50.0, 50.0, 1e6))
        (filled,) = h.sink.fills("s")
        # 50 x 0.9995 = 49.975; commission 300 x 0.005 = 1.50
        assert filled.fill.price == D("49.975") and filled.fill.commission == D("1.500")
        assert (await h.broker.account()).cash == D(100_000) + D("14992.5") - D("1.5")

    async def test_market_when_slipped_price_has_more_decimals_then_quantized_to_tick(
        self,
    ) -> None:
        h = Harness(slippage_bps=D(3))
        await h.submit(intent("a", qty=1))
        h.bar(AAA=flat(172.43))
        # 172.43 x 1.0003 = 172.481729 -> 172.4817
        assert h.sink.fills("a")[0].fill.price == D("172.4817")

    async def test_market_when_symbol_missing_from_batch_then_no_fill(self) -> None:
        h = Harness()
        await h.submit(intent("a"))
        h.bar(BBB=flat(10))
        assert h.sink.fills() == []
        h.bar(AAA=flat(20), BBB=flat(10))
        assert h.sink.fills("a")[0].fill.price == D(20)

    async def test_market_when_submitted_after_batch_then_matches_following_open(self) -> None:
        h = Harness()
        h.bar(AAA=flat(10))
        await h.submit(intent("a", ref="10"))
        assert h.sink.fills() == []
        h.bar(AAA=(11.0, 12.0, 10.5, 11.5, 1e6))
        assert h.sink.fills("a")[0].fill.price == D(11)


class TestLimitOrders:
    @pytest.mark.parametrize(
        ("side", "limit", "bar", "price"),
        [("buy", "99", (100.0, 101.0, 98.5, 100.0), "99"),     # crossed during the bar
         ("buy", "99", (98.0, 99.5, 97.0, 98.0), "98"),        # opened through the limit
         ("sell", "101", (100.0, 102.0, 99.0, 100.0), "101"),
         ("sell", "101", (102.0, 103.0, 101.5, 102.0), "102")],
    )
    async def test_limit_when_crossed_then_fills_at_better_of_open_and_limit(
        self, side: str, limit: str, bar: tuple[float, float, float, float], price: str
    ) -> None:
        h = Harness()
        await h.submit(intent("l", side, order_type="limit", limit=limit))
        h.bar(AAA=(*bar, 1e6))
        (filled,) = h.sink.fills("l")
        assert filled.fill.price == D(price)
        assert h.orders()["l"].status is OrderStatus.FILLED

    @pytest.mark.parametrize(
        ("side", "limit", "bar"),
        [("buy", "99", (100.0, 101.0, 99.01, 100.0)),
         ("sell", "101", (100.0, 100.99, 99.0, 100.0))],
    )
    async def test_limit_when_not_crossed_then_keeps_working(
        self, side: str, limit: str, bar: tuple[float, float, float, float]
    ) -> None:
        h = Harness()
        await h.submit(intent("l", side, order_type="limit", limit=limit))
        h.bar(AAA=(*bar, 1e6))
        assert h.sink.fills() == []
        assert [o.client_order_id for o in await h.broker.open_orders()] == ["l"]


class TestStopOrders:
    @pytest.mark.parametrize(
        ("side", "stop", "bar", "price"),
        [("buy", "102", (100.0, 103.0, 99.0, 102.5), "102"),
         ("buy", "102", (104.0, 105.0, 103.0, 104.0), "104"),   # gapped through the stop
         ("sell", "98", (100.0, 101.0, 97.0, 97.5), "98"),
         ("sell", "98", (96.0, 97.0, 95.0, 96.0), "96")],
    )
    async def test_stop_when_triggered_then_fills_at_worse_of_open_and_stop(
        self, side: str, stop: str, bar: tuple[float, float, float, float], price: str
    ) -> None:
        h = Harness()
        await h.submit(intent("s", side, order_type="stop", stop=stop))
        h.bar(AAA=(*bar, 1e6))
        assert h.sink.fills("s")[0].fill.price == D(price)

    @pytest.mark.parametrize(
        ("side", "stop", "bar"),
        [("buy", "102", (100.0, 101.99, 99.0, 101.0)), ("sell", "98", (100.0, 101.0, 98.01, 99.0))],
    )
    async def test_stop_when_not_triggered_then_keeps_working(
        self, side: str, stop: str, bar: tuple[float, float, float, float]
    ) -> None:
        h = Harness()
        await h.submit(intent("s", side, order_type="stop", stop=stop))
        h.bar(AAA=(*bar, 1e6))
        assert h.sink.fills() == []
        assert len(await h.broker.open_orders()) == 1


class TestStopLimitOrders:
    async def test_stop_limit_buy_when_triggered_below_limit_then_fills_same_bar(self) -> None:
        h = Harness()
        await h.submit(intent("x", order_type="stop_limit", stop="102", limit="102.5"))
        h.bar(AAA=(100.0, 103.0, 99.0, 102.0, 1e6))
        assert h.sink.fills("x")[0].fill.price == D(102)

    async def test_stop_limit_buy_when_gapped_above_limit_then_waits_as_limit(self) -> None:
        h = Harness()
        await h.submit(intent("x", order_type="stop_limit", stop="102", limit="102.5"))
        h.bar(AAA=(104.0, 105.0, 103.0, 104.0, 1e6))   # triggers, never back to 102.5
        assert h.sink.fills() == []
        h.bar(AAA=(102.2, 102.4, 101.8, 102.0, 1e6))   # a limit now: min(open, limit)
        assert h.sink.fills("x")[0].fill.price == D("102.2")

    async def test_stop_limit_sell_when_triggered_then_fills_at_trigger_or_limit(self) -> None:
        h = Harness()
        await h.submit(intent("x", "sell", order_type="stop_limit", stop="98", limit="97.5"))
        h.bar(AAA=(99.0, 99.5, 98.5, 99.0, 1e6))       # not triggered
        assert h.sink.fills() == []
        h.bar(AAA=(99.0, 99.5, 97.0, 97.2, 1e6))       # triggers at 98 >= 97.5
        assert h.sink.fills("x")[0].fill.price == D(98)

    async def test_stop_limit_sell_when_not_triggered_then_limit_ignored(self) -> None:
        h = Harness()
        # The limit (97.5) is below this bar's high, but the stop (98) never triggered.
        await h.submit(intent("x", "sell", order_type="stop_limit", stop="98", limit="97.5"))
        h.bar(AAA=(99.0, 100.0, 98.2, 99.0, 1e6))
        assert h.sink.fills() == []


class TestPartialFills:
    async def test_fill_when_volume_capped_then_partials_sum_to_qty_with_distinct_ids(
        self,
    ) -> None:
        h = Harness(max_fill_volume_pct=0.1)
        await h.submit(intent("a", qty=250))
        for _ in range(3):
            h.bar(AAA=flat(10, volume=1000))   # at most 100 per bar
        fills = [e.fill for e in h.sink.fills("a")]
        assert [f.qty for f in fills] == [100, 100, 50]
        assert len({f.execution_id for f in fills}) == 3
        assert [f.execution_id for f in fills] == ["paper-1-1", "paper-1-2", "paper-1-3"]
        order = h.orders()["a"]
        assert order.status is OrderStatus.FILLED and order.filled_qty == 250

    async def test_fill_when_partial_then_order_reports_partially_filled(self) -> None:
        h = Harness(max_fill_volume_pct=0.1)
        await h.submit(intent("a", qty=250))
        h.bar(AAA=flat(10, volume=1000))
        order = await h.broker.get_order("a")
        assert order is not None
        assert (order.status, order.filled_qty) == (OrderStatus.PARTIALLY_FILLED, 100)
        assert h.orders()["a"].status is OrderStatus.PARTIALLY_FILLED

    async def test_fill_when_two_orders_share_a_bar_then_volume_cap_is_shared(self) -> None:
        h = Harness(max_fill_volume_pct=0.1)
        await h.submit(intent("a", qty=80))
        await h.submit(intent("b", qty=80))
        h.bar(AAA=flat(10, volume=1000))
        assert [(e.client_order_id, e.fill.qty) for e in h.sink.fills()] == [("a", 80), ("b", 20)]

    async def test_fill_when_volume_too_small_then_nothing_fills(self) -> None:
        h = Harness(max_fill_volume_pct=0.01)
        await h.submit(intent("a", qty=10))
        h.bar(AAA=flat(10, volume=99))   # floor(0.99) = 0
        assert h.sink.fills() == []


class TestTimeInForce:
    async def test_ioc_when_partially_fillable_then_remainder_canceled(self) -> None:
        h = Harness(max_fill_volume_pct=0.1)
        await h.submit(intent("i", qty=250, tif="ioc"))
        h.bar(AAA=flat(10, volume=1000))
        assert [type(e) for e in h.sink.events] == [OrderNew, OrderFilled, OrderCanceled]
        order = h.orders()["i"]
        assert order.status is OrderStatus.CANCELED and order.filled_qty == 100

    async def test_ioc_limit_when_not_crossed_then_canceled_without_fill(self) -> None:
        h = Harness()
        await h.submit(intent("i", order_type="limit", limit="9", tif="ioc"))
        h.bar(AAA=flat(10))
        assert h.sink.fills() == []
        assert h.orders()["i"].status is OrderStatus.CANCELED

    async def test_ioc_when_symbol_absent_then_waits_for_first_eligible_bar(self) -> None:
        h = Harness()
        await h.submit(intent("i", tif="ioc"))
        h.bar(BBB=flat(10))
        assert h.orders()["i"].status is OrderStatus.NEW
        h.bar(AAA=flat(10))
        assert h.orders()["i"].status is OrderStatus.FILLED

    async def test_fok_when_volume_insufficient_then_canceled_with_no_fill(self) -> None:
        h = Harness(max_fill_volume_pct=0.1)
        await h.submit(intent("f", qty=250, tif="fok"))
        h.bar(AAA=flat(10, volume=1000))
        assert h.sink.fills() == []
        order = h.orders()["f"]
        assert order.status is OrderStatus.CANCELED and order.filled_qty == 0

    async def test_fok_when_fully_fillable_then_fills_everything(self) -> None:
        h = Harness(max_fill_volume_pct=0.1)
        await h.submit(intent("f", qty=250, tif="fok"))
        h.bar(AAA=flat(10, volume=5000))
        assert [e.fill.qty for e in h.sink.fills("f")] == [250]
        assert h.orders()["f"].status is OrderStatus.FILLED

    async def test_day_when_batch_of_next_trading_date_then_expires_before_matching(
        self,
    ) -> None:
        h = Harness()
        await h.submit(intent("d", order_type="limit", limit="9", tif="day"))
        await h.submit(intent("g", order_type="limit", limit="9", tif="gtc"))
        h.at(datetime(2026, 1, 5, 20, 59, tzinfo=UTC), AAA=flat(10))   # 15:59 New York
        assert h.orders()["d"].status is OrderStatus.NEW
        # Next morning the bar would cross the limit, but the day order is gone by then.
        h.at(datetime(2026, 1, 6, 14, 30, tzinfo=UTC), AAA=flat(8))
        orders = h.orders()
        assert orders["d"].status is OrderStatus.EXPIRED
        assert orders["g"].status is OrderStatus.FILLED
        assert [e.client_order_id for e in h.sink.of(OrderExpired)] == ["d"]

    async def test_day_when_late_utc_same_new_york_date_then_still_working(self) -> None:
        h = Harness()
        await h.submit(intent("d", order_type="limit", limit="9", tif="day"))
        # 00:30 UTC on the 6th is still the 5th (19:30) in New York.
        h.at(datetime(2026, 1, 6, 0, 30, tzinfo=UTC), AAA=flat(10))
        assert h.orders()["d"].status is OrderStatus.NEW

    async def test_end_of_day_when_called_then_expires_day_orders_only(self) -> None:
        h = Harness()
        await h.submit(intent("d", order_type="limit", limit="9", tif="day"))
        await h.submit(intent("g", order_type="limit", limit="9", tif="gtc"))
        h.broker.end_of_day()
        assert [e.client_order_id for e in h.sink.of(OrderExpired)] == ["d"]
        assert [o.client_order_id for o in await h.broker.open_orders()] == ["g"]

    async def test_gtc_when_days_pass_then_still_works_and_fills(self) -> None:
        h = Harness()
        await h.submit(intent("g", order_type="limit", limit="9"))
        h.at(datetime(2026, 1, 6, 14, 30, tzinfo=UTC), AAA=flat(10))
        h.at(datetime(2026, 1, 9, 14, 30, tzinfo=UTC), AAA=flat(10))
        h.broker.end_of_day()
        h.at(datetime(2026, 1, 12, 14, 30, tzinfo=UTC), AAA=flat(8.5))
        assert h.sink.fills("g")[0].fill.price == D("8.5")


class TestCancelReplace:
    async def test_cancel_when_open_then_reports_canceled(self) -> None:
        h = Harness()
        await h.submit(intent("a", order_type="limit", limit="9"))
        await h.broker.cancel("a")
        assert h.orders()["a"].status is OrderStatus.CANCELED
        order = await h.broker.get_order("a")
        assert order is not None and order.status is OrderStatus.CANCELED
        h.bar(AAA=flat(8))
        assert h.sink.fills() == []

    async def test_cancel_when_filled_then_rejected_with_state(self) -> None:
        h = Harness()
        await h.submit(intent("a"))
        h.bar(AAA=flat(10))
        with pytest.raises(BrokerRejected, match='order is already in "filled" state'):
            await h.broker.cancel("a")

    async def test_cancel_when_unknown_then_rejected_not_found(self) -> None:
        h = Harness()
        with pytest.raises(BrokerRejected, match="not found") as err:
            await h.broker.cancel("nope")
        assert err.value.status == 404

    async def test_cancel_all_when_orders_open_then_all_canceled(self) -> None:
        h = Harness()
        await h.submit(intent("a", order_type="limit", limit="9"))
        await h.submit(intent("b", "sell", symbol="BBB", order_type="limit", limit="11"))
        await h.broker.cancel_all()
        assert await h.broker.open_orders() == []
        assert {c: o.status for c, o in h.orders().items()} == {
            "a": OrderStatus.CANCELED, "b": OrderStatus.CANCELED}

    async def test_replace_when_open_then_old_replaced_and_new_works_at_new_price(self) -> None:
        h = Harness()
        await h.submit(intent("a", order_type="limit", limit="9"))
        await h.broker.replace("a", "a2", limit_price=D("9.5"))
        h.note_replacement("a", "a2", limit_price=D("9.5"))
        replaced = h.sink.of(OrderReplaced)
        assert len(replaced) == 1
        assert isinstance(replaced[0], OrderReplaced)
        assert replaced[0].new_client_order_id == "a2"
        new = h.sink.of(OrderNew, "a2")[0]
        assert isinstance(new, OrderNew) and new.broker_order_id == "paper-2"
        h.bar(AAA=(10.0, 10.0, 9.4, 9.8, 1e6))
        assert h.sink.fills("a2")[0].fill.price == D("9.5")
        orders = h.orders()
        assert orders["a"].status is OrderStatus.REPLACED
        assert orders["a2"].status is OrderStatus.FILLED

    async def test_replace_when_partially_filled_then_new_order_works_the_remainder(self) -> None:
        h = Harness(max_fill_volume_pct=0.1)
        await h.submit(intent("a", qty=250, order_type="limit", limit="10"))
        h.bar(AAA=flat(10, volume=1000))   # 100 filled
        await h.broker.replace("a", "a2", qty=300)
        h.note_replacement("a", "a2", total=300, filled=100)
        new = await h.broker.get_order("a2")
        assert new is not None and new.qty == 200
        h.bar(AAA=flat(10, volume=10_000))
        orders = h.orders()
        assert orders["a"].filled_qty == 100 and orders["a"].status is OrderStatus.REPLACED
        assert orders["a2"].filled_qty == 200 and orders["a2"].status is OrderStatus.FILLED
        assert (await h.broker.positions())[0].qty == 300

    async def test_replace_when_qty_not_above_filled_then_rejected(self) -> None:
        h = Harness(max_fill_volume_pct=0.1)
        await h.submit(intent("a", qty=250, order_type="limit", limit="10"))
        h.bar(AAA=flat(10, volume=1000))
        with pytest.raises(BrokerRejected, match="filled qty"):
            await h.broker.replace("a", "a2", qty=100)
        assert await h.broker.get_order("a2") is None
        order = await h.broker.get_order("a")
        assert order is not None and order.status is OrderStatus.PARTIALLY_FILLED

    async def test_replace_when_terminal_then_rejected(self) -> None:
        h = Harness()
        await h.submit(intent("a", order_type="limit", limit="9"))
        await h.broker.cancel("a")
        with pytest.raises(BrokerRejected, match='already in "canceled" state'):
            await h.broker.replace("a", "a2", limit_price=D(10))

    async def test_replace_when_new_id_already_used_then_rejected(self) -> None:
        h = Harness()
        await h.submit(intent("a", order_type="limit", limit="9"))
        await h.submit(intent("b", order_type="limit", limit="9"))
        with pytest.raises(BrokerRejected, match="client_order_id must be unique"):
            await h.broker.replace("a", "b", limit_price=D(10))
        assert len(await h.broker.open_orders()) == 2


class TestAccount:
    async def test_short_then_cover_when_price_fell_then_realizes_profit(self) -> None:
        h = Harness()
        await h.submit(intent("s", "sell", qty=100, ref="50"))
        h.bar(AAA=flat(50))
        acct = await h.broker.account()
        assert acct.cash == D(105_000)
        assert acct.equity == D(100_000)                  # 105,000 - 100 x 50
        assert acct.buying_power == D(100_000)            # short proceeds are not spendable
        await h.submit(intent("c", "buy", qty=100, ref="45"))
        h.bar(AAA=flat(45))
        assert h.broker.realized_pnl("AAA") == D(500)
        assert await h.broker.positions() == []
        acct = await h.broker.account()
        assert acct.cash == acct.equity == D(100_500)

    async def test_account_when_positions_marked_then_equity_is_cash_plus_last_closes(
        self,
    ) -> None:
        h = Harness()
        await h.submit(intent("a", qty=10, ref="100"))
        await h.submit(intent("b", "sell", qty=20, symbol="BBB", ref="50"))
        h.bar(AAA=(100.0, 101.0, 99.0, 100.25, 1e6), BBB=(50.0, 51.0, 49.0, 49.5, 1e6))
        h.bar(AAA=(100.25, 103.0, 100.0, 102.75, 1e6))   # BBB absent: keeps 49.5
        acct = await h.broker.account()
        assert acct.cash == D(100_000) - D(1_000) + D(1_000)
        assert acct.equity == acct.cash + 10 * D("102.75") - 20 * D("49.5")
        assert {p.symbol: (p.qty, p.avg_price) for p in acct.positions} == {
            "AAA": (10, D(100)), "BBB": (-20, D(50))}

    async def test_books_when_same_fills_booked_by_portfolio_then_agree_exactly(self) -> None:
        h = Harness(commission_per_share=D("0.01"), min_commission=D(1), slippage_bps=D(3))
        portfolio = Portfolio(D(100_000))
        await h.submit(intent("a", qty=37, ref="101.37"))
        h.bar(AAA=flat(101.37))
        await h.submit(intent("b", qty=11, ref="99.13"))
        h.bar(AAA=flat(99.13))
        await h.submit(intent("c", "sell", qty=60, ref="103.01"))
        h.bar(AAA=flat(103.01))
        for e in h.sink.fills():
            portfolio.on_fill(e)
        (pos,) = await h.broker.positions()
        assert pos.qty == portfolio.qty("AAA") == -12
        assert pos.avg_price == portfolio.positions["AAA"].avg_price
        assert (await h.broker.account()).cash == portfolio.cash
        assert h.broker.realized_pnl() == portfolio.realized_pnl()

    async def test_fills_since_when_asked_then_lists_fills_from_that_time(self) -> None:
        h = Harness()
        await h.submit(intent("a", qty=1))
        h.bar(AAA=flat(10))
        first = h.now
        await h.submit(intent("b", qty=2))
        h.bar(AAA=flat(11))
        assert [f.qty for f in await h.broker.fills_since(first)] == [1, 2]
        assert [f.qty for f in await h.broker.fills_since(h.now)] == [2]
        assert await h.broker.fills_since(datetime(2030, 1, 1, tzinfo=UTC)) == []

    async def test_fill_when_reported_then_is_a_domain_fill(self) -> None:
        h = Harness()
        await h.submit(intent("a", qty=1))
        h.bar(AAA=flat(10))
        fill = h.sink.fills()[0].fill
        assert isinstance(fill, Fill) and fill.execution_id == "paper-1-1"


class TestLoggingAndSpeed:
    async def test_reject_and_fill_when_they_happen_then_logged_with_stable_names(self) -> None:
        h = Harness()
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(BrokerRejected):
                await h.broker.submit(intent("bad", qty=0))
            await h.submit(intent("a", qty=3))
            h.bar(AAA=flat(10))
        by_name = {e["event"]: e for e in logs}
        assert by_name["paper.reject"]["client_order_id"] == "bad"
        assert by_name["paper.fill"]["log_level"] == "debug"
        assert by_name["paper.fill"]["exec_id"] == "paper-1-1"

    async def test_on_bars_when_nothing_working_then_costs_microseconds(self) -> None:
        # A loose bound (the fast path measures well under 1 µs): it guards against a
        # per-symbol loop creeping into the idle path, not against a slow machine.
        h = Harness()
        symbols = {f"S{i:02d}": flat(100.0) for i in range(53)}
        batches = [batch(h.now + i * MINUTE, **symbols) for i in range(1, 2001)]
        start = time.perf_counter()
        for b in batches:
            h.broker.on_bars(b)
        assert (time.perf_counter() - start) / len(batches) < 20e-6


class TestTriggeredStops:
    async def test_stop_when_triggered_but_volume_capped_then_rest_fills_at_later_opens(
        self,
    ) -> None:
        h = Harness(max_fill_volume_pct=0.1)
        await h.submit(intent("s", qty=150, order_type="stop", stop="102"))
        h.bar(AAA=(100.0, 103.0, 99.0, 102.5, 1000))   # triggers at 102, 100 fill
        h.bar(AAA=(101.0, 101.5, 100.5, 101.0, 1000))  # below the stop: still a market order
        assert [(e.fill.qty, e.fill.price) for e in h.sink.fills("s")] == [
            (100, D(102)), (50, D(101))]
        assert h.orders()["s"].status is OrderStatus.FILLED

    async def test_replace_when_stop_limit_triggered_and_stop_kept_then_stays_triggered(
        self,
    ) -> None:
        h = Harness()
        await h.submit(intent("x", order_type="stop_limit", stop="102", limit="102.5"))
        h.bar(AAA=(104.0, 105.0, 103.0, 104.0, 1e6))   # triggered, above the limit
        await h.broker.replace("x", "x2", limit_price=D("103.5"))
        h.note_replacement("x", "x2", limit_price=D("103.5"))
        h.bar(AAA=(101.0, 101.5, 100.5, 101.0, 1e6))   # below the stop: a limit already
        assert h.sink.fills("x2")[0].fill.price == D(101)
        assert h.orders()["x2"].status is OrderStatus.FILLED
