"""The IB adapter with the real ib_async client against the fake TWS: orders, fills,
commissions, rejections, cancels and queries. Every case is also checked at the fake:
one order per orderRef, and every execution it booked reported once with its fee."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from ib_async import IB, LimitOrder, Stock

from brokers.ib import IbBroker
from kernel.broker import Broker
from kernel.clock import WallClock
from kernel.errors import BrokerRejected, BrokerUnavailable
from kernel.events import AlertRaised, OrderFilled, OrderRejected
from kernel.model import OrderSide, OrderType, TimeInForce
from kernel.orders import OrderStatus
from tests.brokers.conftest import Recorder, intent
from tests.fake_tws import FakeTws
from tests.fake_tws.kit import (
    PRICES,
    assert_books_match,
    assert_fills_match_fake,
    eventually,
    fills_of,
    ib_cfg,
    orders_by_ref,
)


@pytest.fixture
async def tws() -> AsyncIterator[FakeTws]:
    async with FakeTws(prices=dict(PRICES)) as fake:
        yield fake


@pytest.fixture
async def broker(tws: FakeTws, recorder: Recorder) -> AsyncIterator[IbBroker]:
    async with IbBroker(ib_cfg(tws), clock=WallClock(), sink=recorder) as b:
        yield b


def order_at_fake(tws: FakeTws, ref: str) -> dict[str, str]:
    [order] = [o for o in tws.snapshot()["orders"] if o["order_ref"] == ref]
    return order


class TestSubmit:
    @pytest.mark.parametrize(("otype", "tif", "limit", "stop", "ib_type"), [
        (OrderType.MARKET, TimeInForce.DAY, None, None, "MKT"),
        (OrderType.LIMIT, TimeInForce.GTC, "171.00", None, "LMT"),
        (OrderType.STOP, TimeInForce.DAY, None, "170.00", "STP"),
        (OrderType.STOP_LIMIT, TimeInForce.GTC, "172.00", "170.00", "STP LMT"),
    ])
    async def test_submit_when_marketable_then_new_then_fills_with_commissions(
        self, broker: IbBroker, recorder: Recorder, tws: FakeTws, otype: OrderType,
        tif: TimeInForce, limit: str | None, stop: str | None, ib_type: str,
    ) -> None:
        # Arrange
        tws.set_fill(parts=2)
        it = intent(qty=10, order_type=otype, tif=tif, limit=limit, stop=stop)
        order = recorder.track(it)
        # Act
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        # Assert
        assert recorder.errors == []
        assert recorder.of(it.client_order_id) == ["OrderNew", "OrderFilled", "OrderFilled"]
        assert order.filled_qty == 10 and order.avg_fill_price == Decimal("170.5")
        at_fake = order_at_fake(tws, it.client_order_id)
        assert (at_fake["order_type"], at_fake["status"]) == (ib_type, "Filled")
        assert orders_by_ref(tws) == {it.client_order_id: 1}
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)
        assert [f.fill.cum_qty for f in fills_of(recorder.events)] == [5, 10]

    async def test_submit_when_sink_called_then_on_loop_thread(
            self, broker: IbBroker, recorder: Recorder) -> None:
        it = intent()
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert recorder.thread_ids == {threading.get_ident()}

    async def test_submit_when_market_closed_then_accepted_then_new_and_fills_at_open(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.set_market_open(False)
        it = intent()
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.ACCEPTED)
        assert order_at_fake(tws, it.client_order_id)["status"] == "PreSubmitted"
        tws.set_market_open(True)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert recorder.of(it.client_order_id) == ["OrderAccepted", "OrderNew", "OrderFilled"]

    async def test_submit_when_limit_rests_then_new_and_fills_when_price_crosses(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        it = intent(qty=4, order_type=OrderType.LIMIT, limit="170.00")
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.NEW)
        tws.set_price("AAPL", "169.95")
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert order.avg_fill_price == Decimal("169.95")
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)

    async def test_submit_when_201_then_rejected_with_code_and_nothing_booked(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.reject_next(code=201, reason="no trading permissions")
        it = intent()
        order = recorder.track(it)
        await broker.submit(it)  # a definite refusal is reported, not raised as unknown
        await recorder.wait_for(lambda: order.status == OrderStatus.REJECTED)
        [rejected] = [e for e in recorder.events if isinstance(e, OrderRejected)]
        assert "IB 201" in rejected.reason and "no trading permissions" in rejected.reason
        assert order_at_fake(tws, it.client_order_id)["status"] == "Inactive"
        assert tws.snapshot()["executions"] == [] and tws.snapshot()["positions"] == {}
        found = await broker.get_order(it.client_order_id)
        assert found is not None and found.status is OrderStatus.REJECTED

    async def test_submit_when_cash_does_not_cover_then_rejected(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        it = intent(qty=10_000)
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.REJECTED)
        assert Decimal(tws.snapshot()["account"]["cash"]) == 100_000

    async def test_submit_when_warning_then_order_stays_live_and_fills(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.warn_next(399, "Order will not be placed at the exchange until 09:30")
        it = intent(order_type=OrderType.LIMIT, limit="160.00")
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.NEW)
        tws.set_price("AAPL", "159.00")
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert "OrderRejected" not in recorder.of(it.client_order_id)

    async def test_submit_when_103_once_then_placed_again_under_new_id_exactly_once(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.duplicate_id_next(1)
        it = intent()
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert orders_by_ref(tws) == {it.client_order_id: 1}
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)

    async def test_submit_when_103_every_time_then_unavailable_and_not_at_fake(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.duplicate_id_next(3)  # as many as submit_attempts
        it = intent()
        with pytest.raises(BrokerUnavailable, match="103"):
            await broker.submit(it)
        assert orders_by_ref(tws) == {}

    async def test_submit_when_ack_never_comes_then_found_by_order_ref_not_resent(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.hold_acks()  # the order is booked at IB, its acknowledgement is not sent
        it = intent()
        order = recorder.track(it)
        await broker.submit(it)  # waits out ack_timeout, looks it up, adopts it
        assert orders_by_ref(tws) == {it.client_order_id: 1}
        tws.hold_acks(False)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert orders_by_ref(tws) == {it.client_order_id: 1}
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)

    async def test_submit_when_same_client_order_id_twice_then_one_order(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        it = intent()
        order = recorder.track(it)
        await broker.submit(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert orders_by_ref(tws) == {it.client_order_id: 1}

    async def test_submit_when_order_ref_already_at_broker_then_adopted_not_placed(
            self, tws: FakeTws, recorder: Recorder) -> None:
        # Arrange: another session (a previous life of the daemon) placed it
        other = IB()
        await other.connectAsync("127.0.0.1", tws.port, clientId=99, timeout=5)
        placed = LimitOrder("BUY", 10, 160.0)
        placed.orderRef = "t-earlier-life"
        other.placeOrder(Stock("AAPL", "SMART", "USD"), placed)
        await eventually(lambda: orders_by_ref(tws) == {"t-earlier-life": 1})
        other.disconnect()
        it = intent(cid="t-earlier-life", order_type=OrderType.LIMIT, limit="160.00")
        order = recorder.track(it)
        # Act
        async with IbBroker(ib_cfg(tws), clock=WallClock(), sink=recorder) as b:
            await b.submit(it)
            await recorder.wait_for(lambda: order.status == OrderStatus.NEW)
        # Assert
        assert orders_by_ref(tws) == {"t-earlier-life": 1}

    async def test_submit_when_bad_prices_then_rejected_before_sending(
            self, broker: IbBroker, tws: FakeTws) -> None:
        with pytest.raises(BrokerRejected, match="limit_price"):
            await broker.submit(intent(order_type=OrderType.LIMIT))
        assert orders_by_ref(tws) == {}


class TestFills:
    async def test_partial_fills_when_executed_in_steps_then_each_once_with_cum_qty(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.set_fill(auto=False)
        it = intent(qty=10)
        order = recorder.track(it)
        await broker.submit(it)
        for qty in (3, 4, 3):
            tws.execute(it.client_order_id, qty)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        fills = fills_of(recorder.events)
        assert [(f.fill.qty, f.fill.cum_qty) for f in fills] == [(3, 3), (4, 7), (3, 10)]
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)

    async def test_fills_when_messages_duplicated_then_each_reported_once(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.set_fill(parts=3)
        for kind in ("execDetails", "commissionReport", "orderStatus", "openOrder"):
            tws.duplicate_next(kind, 3)
        it = intent(qty=9)
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert recorder.errors == []
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)

    async def test_fill_when_commission_report_lost_then_asked_again_and_reported_with_it(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.drop_next("commissionReport")
        it = intent(qty=10)
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        [fill] = fills_of(recorder.events)
        assert fill.fill.commission == Decimal("0.35")  # the fake's, not a zero
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)

    async def test_fill_when_commission_never_comes_then_reported_without_and_alert(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.drop_next("commissionReport", 10)
        it = intent(qty=10)
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        [fill] = fills_of(recorder.events)
        assert fill.fill.commission == 0
        [alert] = [e for e in recorder.events if isinstance(e, AlertRaised)]
        assert alert.name == "ib.commission_missing"
        assert alert.detail["execution_id"] == fill.fill.execution_id

    async def test_fill_when_exec_details_lost_then_status_shows_gap_and_it_is_fetched(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.set_fill(parts=2)
        tws.drop_next("execDetails")
        it = intent(qty=10)
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)

    async def test_cancel_from_ib_when_fills_missing_then_fills_first_then_canceled(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        tws.set_fill(auto=False)
        it = intent(qty=10)
        order = recorder.track(it)
        await broker.submit(it)
        tws.drop_next("execDetails")
        tws.execute(it.client_order_id, 4)
        tws.cancel(it.client_order_id, "margin")
        await recorder.wait_for(lambda: order.status == OrderStatus.CANCELED)
        assert recorder.of(it.client_order_id)[-2:] == ["OrderFilled", "OrderCanceled"]
        assert order.filled_qty == 4
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)


class TestCancel:
    async def test_cancel_when_working_then_canceled_at_fake_and_reported(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        it = intent(order_type=OrderType.LIMIT, limit="150.00", tif=TimeInForce.GTC)
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.NEW)
        await broker.cancel(it.client_order_id)
        await recorder.wait_for(lambda: order.status == OrderStatus.CANCELED)
        assert order_at_fake(tws, it.client_order_id)["status"] == "Cancelled"
        assert recorder.errors == []

    async def test_cancel_when_already_filled_then_order_stays_filled(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        it = intent()
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        await broker.cancel(it.client_order_id)  # TWS answers 10148: too late
        await eventually(lambda: 4 in tws.requests)
        assert order.status == OrderStatus.FILLED and recorder.errors == []

    async def test_cancel_when_placed_by_another_client_id_then_refused(
            self, broker: IbBroker, tws: FakeTws) -> None:
        other = IB()
        await other.connectAsync("127.0.0.1", tws.port, clientId=98, timeout=5)
        try:
            placed = LimitOrder("BUY", 1, 100.0)
            placed.orderRef = "theirs"
            other.placeOrder(Stock("AAPL", "SMART", "USD"), placed)
            await eventually(lambda: orders_by_ref(tws) == {"theirs": 1})
            with pytest.raises(BrokerRejected, match="client id 98"):
                await broker.cancel("theirs")
            assert order_at_fake(tws, "theirs")["status"] == "Submitted"
        finally:
            other.disconnect()

    async def test_cancel_all_when_two_working_then_both_canceled(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        its = [intent(order_type=OrderType.LIMIT, limit="150.00") for _ in range(2)]
        orders = [recorder.track(it) for it in its]
        for it in its:
            await broker.submit(it)
        await broker.cancel_all()
        await recorder.wait_for(lambda: all(o.status == OrderStatus.CANCELED for o in orders))
        assert {o["status"] for o in tws.snapshot()["orders"]} == {"Cancelled"}

    async def test_replace_when_called_then_refused_with_reason(self, broker: IbBroker) -> None:
        with pytest.raises(BrokerRejected, match="not supported"):
            await broker.replace("x", "y", qty=1)


class TestQueries:
    async def test_queries_when_trades_done_then_equal_the_fakes_books(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        # Arrange: a buy filled in two parts, a sell, a resting limit
        tws.set_fill(parts=2)
        buy, sell = intent(qty=10), intent(side=OrderSide.SELL, qty=4)
        rest = intent(qty=1, order_type=OrderType.LIMIT, limit="100.00")
        for it in (buy, sell, rest):
            recorder.track(it)
            await broker.submit(it)
        await eventually(lambda: len(tws.snapshot()["executions"]) == 4)
        snap = tws.snapshot()
        # Act
        positions = await broker.positions()
        account = await broker.account()
        fills = await broker.fills_since(datetime.now(UTC) - timedelta(hours=1))
        opened = await broker.open_orders()
        done = await broker.get_order(buy.client_order_id)
        # Assert
        assert [(p.symbol, p.qty) for p in positions] == [("AAPL", 6)]
        assert account.cash == Decimal(snap["account"]["cash"])
        assert account.equity == Decimal(snap["account"]["net_liquidation"])
        assert account.positions == tuple(positions)
        assert sorted(f.execution_id for f in fills) == sorted(
            e["exec_id"] for e in snap["executions"])
        assert {f.commission for f in fills} == {Decimal("0.35")}
        assert [o.client_order_id for o in opened] == [rest.client_order_id]
        assert opened[0].status is OrderStatus.NEW
        assert done is not None and (done.status, done.filled_qty) == (OrderStatus.FILLED, 10)
        assert done.broker_order_id == str(order_at_fake(tws, buy.client_order_id)["perm_id"])
        assert await broker.get_order("never-placed") is None
        assert await broker.clock() is None

    async def test_broker_when_built_then_satisfies_the_protocol(self, broker: IbBroker) -> None:
        assert isinstance(broker, Broker)
        assert broker.name == "ib" and "secret" not in repr(broker).lower()


class TestClose:
    async def test_close_when_market_order_acked_then_its_fills_reported_before_closing(
            self, tws: FakeTws, recorder: Recorder) -> None:
        # Arrange: IB fills it a moment after the acknowledgement (a replay ends here)
        tws.set_fill(parts=2, delay=0.2)
        it = intent(qty=10)
        order = recorder.track(it)
        # Act
        async with IbBroker(ib_cfg(tws), clock=WallClock(), sink=recorder) as b:
            await b.submit(it)
        # Assert
        assert order.status == OrderStatus.FILLED
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)


class TestMemory:
    async def test_many_orders_when_finished_then_shadow_book_stays_bounded(
            self, tws: FakeTws, recorder: Recorder) -> None:
        async with IbBroker(ib_cfg(tws, finished_orders_kept=10), clock=WallClock(),
                            sink=recorder) as b:
            for i in range(40):
                await b.submit(intent(qty=1, side=OrderSide.BUY if i % 2 else OrderSide.SELL))
            await eventually(lambda: len(fills_of(recorder.events)) == 40)
            assert len(b._tracker.orders) <= 10
            assert len([e for e in recorder.events if isinstance(e, OrderFilled)]) == 40
