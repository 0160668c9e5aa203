"""The Alpaca adapter with the real alpaca-py SDK against the loopback emulator."""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
import structlog
from pydantic import SecretStr

from brokers.alpaca import AlpacaBarFeed, AlpacaBroker
from kernel.broker import Broker
from kernel.clock import WallClock
from kernel.errors import BrokerAuthError, BrokerRejected
from kernel.events import BarBatch, OrderFilled
from kernel.model import OrderSide, OrderType, TimeInForce
from kernel.orders import OrderStatus
from tests.alpaca_emulator import EmulatorThread
from tests.brokers.conftest import KEY, SECRET, Recorder, intent, make_cfg

ORDER_CASES = [
    (OrderType.MARKET, TimeInForce.DAY, None, None),
    (OrderType.MARKET, TimeInForce.GTC, None, None),
    (OrderType.MARKET, TimeInForce.IOC, None, None),
    (OrderType.MARKET, TimeInForce.FOK, None, None),
    (OrderType.LIMIT, TimeInForce.DAY, "171.00", None),
    (OrderType.LIMIT, TimeInForce.GTC, "171.00", None),
    (OrderType.STOP, TimeInForce.DAY, None, "170.00"),
    (OrderType.STOP_LIMIT, TimeInForce.GTC, "172.00", "170.00"),
]


def without_accepted(names: list[str]) -> list[str]:
    return names[1:] if names[:1] == ["OrderAccepted"] else names


def emulator_position(emu: EmulatorThread, symbol: str) -> int:
    return emu.call(lambda e: e.exchange.positions[symbol].qty if symbol in e.exchange.positions
                    else 0)


class TestSubmit:
    @pytest.mark.parametrize(("otype", "tif", "limit", "stop"), ORDER_CASES)
    async def test_submit_when_marketable_then_new_and_fill_events_are_legal(
        self, broker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread,
        otype: OrderType, tif: TimeInForce, limit: str | None, stop: str | None,
    ) -> None:
        # Arrange
        emu.set_fill_parts(2)
        it = intent(qty=10, order_type=otype, tif=tif, limit=limit, stop=stop)
        order = recorder.track(it)
        # Act
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        # Assert
        assert recorder.errors == []
        # The POST response (accepted) and the stream (new) race; either may come first.
        assert without_accepted(recorder.of(it.client_order_id)) == [
            "OrderNew", "OrderFilled", "OrderFilled"]
        assert order.filled_qty == 10 and order.avg_fill_price == Decimal("170.5")
        sent = emu.call(lambda e: e.exchange.by_cid[it.client_order_id])
        assert (sent.type, sent.time_in_force) == (otype.value, tif.value)
        assert emulator_position(emu, "AAPL") == 10

    async def test_submit_when_sink_called_then_on_loop_thread(
        self, broker: AlpacaBroker, recorder: Recorder) -> None:
        import threading

        it = intent()
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert recorder.thread_ids == {threading.get_ident()}

    async def test_submit_when_broker_refuses_then_rejected_and_nothing_booked(
        self, broker: AlpacaBroker, emu: EmulatorThread) -> None:
        it = intent(qty=10_000)  # 1.7M > 100k buying power
        with pytest.raises(BrokerRejected) as info:
            await broker.submit(it)
        assert info.value.status == 403
        assert emu.call(lambda e: len(e.exchange.orders)) == 0

    async def test_submit_when_ioc_partially_fillable_then_fill_then_canceled(
        self, broker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.set_liquidity("AAPL", 4)
        it = intent(qty=10, tif=TimeInForce.IOC)
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.CANCELED)
        assert without_accepted(recorder.of(it.client_order_id)) == [
            "OrderNew", "OrderFilled", "OrderCanceled"]
        assert order.filled_qty == 4

    async def test_submit_when_market_closed_then_accepted_and_expired_at_close(
        self, broker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.set_clock(False)
        it = intent(order_type=OrderType.LIMIT, limit="100.00")
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.ACCEPTED)
        emu.set_clock(True)
        await recorder.wait_for(lambda: order.status == OrderStatus.NEW)
        emu.set_clock(False)
        await recorder.wait_for(lambda: order.status == OrderStatus.EXPIRED)
        assert recorder.of(it.client_order_id) == ["OrderAccepted", "OrderNew", "OrderExpired"]


class TestCancelReplace:
    async def test_cancel_when_working_then_canceled_event(
        self, broker: AlpacaBroker, recorder: Recorder) -> None:
        it = intent(order_type=OrderType.LIMIT, limit="150.00", tif=TimeInForce.GTC)
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.NEW)
        await broker.cancel(it.client_order_id)
        await recorder.wait_for(lambda: order.status == OrderStatus.CANCELED)
        assert recorder.errors == []

    async def test_cancel_when_already_filled_then_no_error_and_stays_filled(
        self, broker: AlpacaBroker, recorder: Recorder) -> None:
        it = intent()
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        await broker.cancel(it.client_order_id)
        assert order.status == OrderStatus.FILLED

    async def test_replace_when_working_then_old_replaced_and_new_live(
        self, broker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        it = intent(order_type=OrderType.LIMIT, limit="150.00", tif=TimeInForce.GTC)
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.NEW)
        new_it = intent(order_type=OrderType.LIMIT, limit="171.00", tif=TimeInForce.GTC,
                        cid=it.client_order_id + "-r1")
        new_order = recorder.track(new_it)
        await broker.replace(it.client_order_id, new_it.client_order_id,
                             limit_price=Decimal("171.00"))
        await recorder.wait_for(lambda: new_order.status == OrderStatus.FILLED)
        assert order.status == OrderStatus.REPLACED
        replaced = [e for e in recorder.events if type(e).__name__ == "OrderReplaced"]
        assert replaced[0].new_client_order_id == new_it.client_order_id  # type: ignore[attr-defined]
        assert emu.call(lambda e: e.exchange.by_cid[new_it.client_order_id].limit_price) == \
            Decimal("171.00")

    async def test_cancel_all_when_orders_open_then_all_canceled(
        self, broker: AlpacaBroker, recorder: Recorder) -> None:
        its = [intent(order_type=OrderType.LIMIT, limit="100.00", tif=TimeInForce.GTC)
               for _ in range(3)]
        orders = [recorder.track(i) for i in its]
        for i in its:
            await broker.submit(i)
        await recorder.wait_for(lambda: all(o.status == OrderStatus.NEW for o in orders))
        await broker.cancel_all()
        await recorder.wait_for(lambda: all(o.status == OrderStatus.CANCELED for o in orders))
        assert await broker.open_orders() == []


class TestQueries:
    async def test_queries_when_filled_then_equal_to_emulator_exactly(
        self, broker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        # Arrange
        t0 = datetime.now(UTC) - timedelta(seconds=1)
        emu.set_fill_parts(3)
        buys = [intent("AAPL", qty=7), intent("MSFT", qty=3)]
        sell = intent("AAPL", side=OrderSide.SELL, qty=2)
        orders = [recorder.track(i) for i in [*buys, sell]]
        # Act
        for i in buys:
            await broker.submit(i)
        emu.set_price("AAPL", "171.13")
        await broker.submit(sell)
        await recorder.wait_for(lambda: all(o.status == OrderStatus.FILLED for o in orders))
        # Assert
        snap = emu.snapshot()
        acct = await broker.account()
        assert acct.cash == Decimal(snap["account"]["cash"])
        assert acct.equity == Decimal(snap["account"]["equity"])
        assert acct.cash == Decimal(100_000) - 7 * Decimal("170.5") - 3 * Decimal("400.25") \
            + 2 * Decimal("171.13")
        assert {p.symbol: p.qty for p in await broker.positions()} == {"AAPL": 5, "MSFT": 3}
        fills = await broker.fills_since(t0)
        # The same executions: by identity, not by id (the channels name them differently)
        assert sorted((f.client_order_id, f.cum_qty, f.qty, f.price) for f in fills) == sorted(
            (e.fill.client_order_id, e.fill.cum_qty, e.fill.qty, e.fill.price)
            for e in recorder.events if isinstance(e, OrderFilled))
        assert {f.broker_order_id for f in fills} == {o["id"] for o in snap["orders"]}
        assert acct.last_equity == Decimal(100_000)  # the previous close: the day's base
        got = await broker.get_order(sell.client_order_id)
        assert got is not None and got.status == OrderStatus.FILLED and got.filled_qty == 2
        assert await broker.get_order("never-sent") is None

    async def test_clock_and_calendar_when_asked_then_parsed(
        self, broker: AlpacaBroker, emu: EmulatorThread) -> None:
        clk = await broker.clock()
        assert clk is not None and clk.is_open
        emu.set_clock(False)
        clk2 = await broker.clock()
        assert clk2 is not None and not clk2.is_open
        days = await broker.calendar(date(2024, 3, 4), date(2024, 3, 10))
        assert [d.date.day for d in days] == [4, 5, 6, 7, 8]
        assert days[0].open == datetime(2024, 3, 4, 14, 30, tzinfo=UTC)

    async def test_broker_when_checked_then_satisfies_protocol(self, broker: AlpacaBroker) -> None:
        assert isinstance(broker, Broker)
        assert broker.name == "alpaca"


class TestAuth:
    async def test_enter_when_keys_rejected_then_auth_error_quickly_without_retries(
        self, emu: EmulatorThread, recorder: Recorder) -> None:
        cfg = make_cfg(emu, key_id=SecretStr("WRONGKEY"))
        t0 = time.monotonic()
        with pytest.raises(BrokerAuthError) as info:
            async with AlpacaBroker(cfg, clock=WallClock(), sink=recorder):
                pass
        assert time.monotonic() - t0 < 1.0
        assert emu.count("GET", "/v2/account") == 1
        assert emu.call(lambda e: e.stream_connections) == 0
        assert "WRONGKEY" not in str(info.value)

    async def test_enter_when_keys_missing_then_auth_error_without_requests(
        self, emu: EmulatorThread, recorder: Recorder) -> None:
        cfg = make_cfg(emu, key_id=None)
        with pytest.raises(BrokerAuthError, match="APCA_API_KEY_ID"):
            async with AlpacaBroker(cfg, clock=WallClock(), sink=recorder):
                pass
        assert emu.call(lambda e: len(e.requests)) == 0


class TestSecrets:
    async def test_logs_and_errors_when_running_then_keys_appear_nowhere(
        self, emu: EmulatorThread, recorder: Recorder, caplog: pytest.LogCaptureFixture,
    ) -> None:
        # Arrange: capture everything, at DEBUG, from structlog and stdlib logging.
        caplog.set_level(logging.DEBUG)
        texts: list[str] = []
        with structlog.testing.capture_logs() as captured:
            async with AlpacaBroker(make_cfg(emu), clock=WallClock(), sink=recorder) as b:
                texts.append(repr(b))
                it = intent()
                order = recorder.track(it)
                await b.submit(it)
                await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
                emu.fail_next(1, status=500, method="GET", path="/v2/positions")
                emu.set_fill_parts(1)
                for bad in (intent(qty=10_000), intent(cid=it.client_order_id)):
                    try:
                        await b.submit(bad)
                    except Exception as exc:
                        texts.append(repr(exc) + str(exc.__cause__))
                emu.drop_stream()
                await recorder.wait_for(lambda: recorder.statuses()[-1:] == ["recovering"])
        bad_cfg = make_cfg(emu, secret_key=SecretStr("WRONG-" + SECRET))
        try:
            async with AlpacaBroker(bad_cfg, clock=WallClock(), sink=recorder):
                pass
        except BrokerAuthError as exc:
            texts.append(repr(exc) + repr(exc.__cause__))
        # Assert
        texts += [repr(c) for c in captured] + [r.getMessage() for r in caplog.records]
        texts += [repr(e) for e in recorder.events] + [repr(make_cfg(emu))]
        assert any("authenticate" in t for t in texts)  # the auth frames were logged...
        blob = "\n".join(texts)
        assert KEY not in blob and SECRET not in blob  # ...but scrubbed


class TestBarFeed:
    async def test_live_bars_when_published_then_one_batch_per_minute(
        self, emu: EmulatorThread) -> None:
        batches: list[BarBatch] = []
        cfg = make_cfg(emu)
        ts = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
        async with AlpacaBarFeed(cfg, symbols=["AAPL", "MSFT"], on_batch=batches.append,
                                 flush_after_secs=0.2):
            await _wait(lambda: emu.call(lambda e: len(e._data_clients)) == 1
                        and emu.call(lambda e: bool(next(iter(e._data_clients)).subs)))
            for m in range(3):
                emu.publish_bars(ts + timedelta(minutes=m), [
                    {"S": "AAPL", "o": 170.0 + m, "h": 171.0, "l": 169.0, "c": 170.5, "v": 100},
                    {"S": "MSFT", "o": 400.0, "h": 401.0, "l": 399.0, "c": 400.5, "v": 50}])
            emu.publish_bars(ts + timedelta(minutes=3), [
                {"S": "AAPL", "o": 1.0, "h": 1.0, "l": 1.0, "c": 1.0, "v": 1}])
            await _wait(lambda: len(batches) == 4)
        assert [b.ts for b in batches] == [ts + timedelta(minutes=m) for m in range(4)]
        assert batches[0].symbols == ("AAPL", "MSFT")
        assert list(batches[2].open) == [172.0, 400.0]
        assert batches[3].symbols == ("AAPL",)  # flushed by the timer, MSFT never came

    async def test_warmup_when_history_spans_pages_then_complete_batches(
        self, emu: EmulatorThread, tmp_path: object) -> None:
        ts = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
        rows = {ts + timedelta(minutes=m): [
            {"S": s, "o": 1.0 + m, "h": 2.0, "l": 0.5, "c": 1.5, "v": 10, "n": 1, "vw": 1.2}
            for s in ("AAPL", "MSFT")] for m in range(25)}
        emu.call(lambda e: e.bars.update(rows))
        feed = AlpacaBarFeed(make_cfg(emu), symbols=["AAPL", "MSFT"], on_batch=lambda b: None)
        # Force small pages: the SDK asks for 10_000; the emulator caps it.
        real_limit = 7
        emu.call(lambda e: setattr(e, "_page_cap", real_limit))
        batches = await feed.warmup_bars(["AAPL", "MSFT"], ts, ts + timedelta(minutes=19))
        assert len(batches) == 20
        assert all(b.symbols == ("AAPL", "MSFT") for b in batches)
        assert list(batches[5].open) == [6.0, 6.0]
        pages = [r for r in emu.requests if r["path"] == "/v2/stocks/bars"]
        assert len(pages) == 6  # 40 bars / 7 per page
        assert "page_token" not in pages[0]["query"] and "page_token" in pages[1]["query"]


async def _wait(pred: object, wait_secs: float = 5.0) -> None:
    import asyncio

    deadline = time.monotonic() + wait_secs
    while not pred():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.02)


class TestLifecycle:
    async def test_exit_when_streams_ran_then_no_threads_left(
        self, emu: EmulatorThread, recorder: Recorder) -> None:
        import threading

        cfg = make_cfg(emu)
        async with AlpacaBroker(cfg, clock=WallClock(), sink=recorder), AlpacaBarFeed(
                cfg, symbols=["AAPL"], on_batch=lambda b: None):
            names = {t.name for t in threading.enumerate()}
            assert {"alpaca.trade_stream", "alpaca.data_stream"} <= names
        t0 = time.monotonic()
        left = [t.name for t in threading.enumerate() if t.name.startswith("alpaca.")]
        assert left == [] and time.monotonic() - t0 < 1
        assert recorder.statuses()[-1] == "disconnected"
