"""Fault tests: every one asserts at the emulator that no order was duplicated, no fill
was lost, and our positions equal the emulator's."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from brokers._alpaca_http import RateBudget
from brokers.alpaca import AlpacaBroker
from kernel.clock import WallClock
from kernel.errors import AmbiguousSubmission, BrokerUnavailable
from kernel.events import OrderFilled, OrderIntent
from kernel.model import OrderType, TimeInForce
from kernel.orders import TERMINAL, OrderStatus
from tests.alpaca_emulator import EmulatorThread
from tests.brokers.conftest import Recorder, intent, make_cfg

POST = ("POST", "/v2/orders")


def assert_exactly_once(emu: EmulatorThread, recorder: Recorder,
                        intents: list[OrderIntent]) -> None:
    """Zero duplicate orders, zero lost or doubled fills, positions as the emulator's."""
    snap = emu.snapshot()
    cids = [o["client_order_id"] for o in snap["orders"]]
    assert Counter(cids) == Counter(i.client_order_id for i in intents)  # by cid and by intent
    ours = [e.fill.execution_id for e in recorder.events if isinstance(e, OrderFilled)]
    assert len(ours) == len(set(ours))
    theirs = [a["id"].rpartition("::")[2] for a in snap["executions"]]
    assert sorted(ours) == sorted(theirs)
    mine: dict[str, int] = {}
    for e in recorder.events:
        if isinstance(e, OrderFilled):
            mine[e.fill.symbol] = mine.get(e.fill.symbol, 0) + e.fill.signed_qty
    assert {s: q for s, q in mine.items() if q} == {
        s: p["qty"] for s, p in snap["positions"].items()}
    for i in intents:
        order = recorder.orders[i.client_order_id]
        theirs_o = next(o for o in snap["orders"] if o["client_order_id"] == i.client_order_id)
        assert order.filled_qty == int(theirs_o["filled_qty"])
    assert recorder.errors == []


@pytest.fixture
def cfg_over() -> dict[str, Any]:
    return {}


@pytest.fixture
async def fbroker(emu: EmulatorThread, recorder: Recorder,
                  cfg_over: dict[str, Any]) -> AsyncIterator[AlpacaBroker]:
    async with AlpacaBroker(make_cfg(emu, **cfg_over), clock=WallClock(), sink=recorder) as b:
        yield b


async def submit_and_fill(broker: AlpacaBroker, recorder: Recorder, it: OrderIntent,
                          wait_secs: float = 5.0) -> None:
    order = recorder.track(it)
    await broker.submit(it)
    await recorder.wait_for(lambda: order.status in TERMINAL, wait_secs)


class TestAmbiguousSubmit:
    @pytest.mark.parametrize("status", [500, 502, 503, 504])
    async def test_submit_when_5xx_after_order_took_effect_then_adopted_not_resent(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread, status: int,
    ) -> None:
        # Arrange
        emu.fail_next(1, status=status, method="POST", path="/v2/orders", after_effect=True)
        it = intent()
        # Act
        await submit_and_fill(fbroker, recorder, it)
        # Assert
        assert emu.count(*POST) == 1
        assert emu.count("GET", "/v2/orders:by_client_order_id") == 1
        assert recorder.orders[it.client_order_id].status == OrderStatus.FILLED
        assert_exactly_once(emu, recorder, [it])

    async def test_submit_when_504_before_effect_then_reposted_with_same_id(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.fail_next(1, status=504, method="POST", path="/v2/orders")
        it = intent()
        await submit_and_fill(fbroker, recorder, it)
        posts = [r for r in emu.requests if (r["method"], r["path"]) == POST]
        assert [r["status"] for r in posts] == [504, 200]
        assert {r["cid"] for r in posts} == {it.client_order_id}  # never a new id
        assert_exactly_once(emu, recorder, [it])

    async def test_submit_when_connection_dropped_after_effect_then_adopted(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.fail_next(1, mode="drop", method="POST", path="/v2/orders", after_effect=True)
        it = intent()
        await submit_and_fill(fbroker, recorder, it)
        assert emu.count(*POST) == 1
        assert_exactly_once(emu, recorder, [it])

    async def test_submit_when_server_hangs_then_timeout_and_single_order(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        # The POST is answered after the client's 1 s timeout; it still takes effect.
        emu.delay_next(1, seconds=1.5, method="POST", path="/v2/orders")
        it = intent()
        t0 = time.monotonic()
        await submit_and_fill(fbroker, recorder, it, wait_secs=6)
        assert time.monotonic() - t0 < 5
        await asyncio.sleep(0.8)  # let the hung request finish at the emulator
        assert_exactly_once(emu, recorder, [it])
        statuses = [r["status"] for r in emu.requests if (r["method"], r["path"]) == POST]
        assert statuses.count(200) == 1  # the other attempt was refused as a duplicate id

    async def test_submit_when_lookups_keep_failing_then_ambiguous_and_order_kept(
        self, emu: EmulatorThread, recorder: Recorder) -> None:
        cfg = make_cfg(emu, retry_attempts=2)
        async with AlpacaBroker(cfg, clock=WallClock(), sink=recorder) as b:
            emu.fail_next(1, status=500, method="POST", path="/v2/orders", after_effect=True)
            emu.fail_next(10, status=503, method="GET", path="/v2/orders:by_client_order_id")
            it = intent()
            order = recorder.track(it)
            with pytest.raises(AmbiguousSubmission):
                await b.submit(it)
            emu.clear_faults()
            # Still tracked: the stream events of the order that did land are reported.
            await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
            assert_exactly_once(emu, recorder, [it])


class TestRateLimit:
    async def test_submit_when_429_storm_then_backs_off_and_places_once(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.fail_next(2, status=429, method="POST", path="/v2/orders")
        emu.fail_next(3, status=429, method="GET", path="/v2/positions")
        before = emu.count("GET", "/v2/positions")  # start-up reads positions once
        it = intent()
        await submit_and_fill(fbroker, recorder, it)
        positions = await fbroker.positions()
        assert [p.qty for p in positions] == [10]
        assert emu.count(*POST) == 3
        assert emu.count("GET", "/v2/positions") - before == 4  # 3 refused + 1
        assert_exactly_once(emu, recorder, [it])

    async def test_submit_when_429_never_ends_then_unavailable_bounded(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.fail_next(100, status=429, method="POST", path="/v2/orders")
        it = intent()
        recorder.track(it)
        with pytest.raises(BrokerUnavailable):
            await fbroker.submit(it)
        assert emu.count(*POST) == 3  # submit_attempts, not a storm
        assert emu.call(lambda e: len(e.exchange.orders)) == 0

    async def test_budget_when_over_limit_then_waits_for_the_window(self) -> None:
        budget = RateBudget(5, window=0.3)
        t0 = time.monotonic()
        for _ in range(10):
            await budget.acquire()
        assert 0.3 <= time.monotonic() - t0 < 1.0


class TestStreamFaults:
    @pytest.mark.parametrize("cfg_over", [{"reconnect_backoff_secs": 0.05}])
    async def test_stream_when_dropped_during_partial_fills_then_recovered_over_rest(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        # Arrange: 4 executions 50 ms apart; the line is cut after 2 events (new +
        # first partial) and stays down for 0.4 s, so the rest happen while we are away.
        emu.set_fill_parts(4)
        emu.set_delays(fill=0.05)
        emu.drop_stream_after(2)
        emu.refuse_stream_for(0.4)
        it = intent(qty=10)
        # Act
        await submit_and_fill(fbroker, recorder, it)
        await recorder.wait_for(lambda: recorder.statuses()[-1] == "ready")
        # Assert
        delivered = emu.call(lambda e: len(e.delivered))
        assert delivered < 5  # some events really were lost on the wire
        assert recorder.statuses()[-3:] == ["disconnected", "recovering", "ready"]
        assert recorder.orders[it.client_order_id].status == OrderStatus.FILLED
        assert_exactly_once(emu, recorder, [it])
        assert emu.call(lambda e: e.stream_connections) == 2

    async def test_stream_when_events_duplicated_then_each_fill_once(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.set_fill_parts(3)
        emu.duplicate_events(20)
        its = [intent(qty=9), intent("MSFT", qty=6)]
        for it in its:
            await submit_and_fill(fbroker, recorder, it)
        assert_exactly_once(emu, recorder, its)

    async def test_stream_when_events_reordered_then_fills_counted_and_legal(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.set_fill_parts(3)
        emu.reorder_events(4)  # new, pf, pf, fill -> fill, pf, pf, new
        it = intent(qty=10)
        await submit_and_fill(fbroker, recorder, it)
        await asyncio.sleep(0.1)
        assert recorder.orders[it.client_order_id].status == OrderStatus.FILLED
        assert_exactly_once(emu, recorder, [it])

    @pytest.mark.parametrize("cfg_over", [{"reconcile_interval_secs": 0.3}])
    @pytest.mark.parametrize("lost", ["partial_fill", "fill", "canceled"])
    async def test_stream_when_event_lost_then_recovered_over_rest(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread, lost: str,
    ) -> None:
        emu.set_fill_parts(2)
        emu.drop_events(1, event=lost)
        if lost == "canceled":
            emu.set_liquidity("AAPL", 3)
        it = intent(qty=10, tif=TimeInForce.IOC if lost == "canceled" else TimeInForce.DAY)
        await submit_and_fill(fbroker, recorder, it)
        assert_exactly_once(emu, recorder, [it])

    async def test_stream_when_order_rejected_asynchronously_then_rejected_event(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.reject_next_orders(1, reason="symbol halted")
        it = intent()
        await submit_and_fill(fbroker, recorder, it)
        order = recorder.orders[it.client_order_id]
        assert order.status == OrderStatus.REJECTED
        assert recorder.of(it.client_order_id)[-1] == "OrderRejected"
        assert_exactly_once(emu, recorder, [it])

    @pytest.mark.parametrize("cfg_over", [{"stream_silence_secs": 0.4,
                                           "reconnect_backoff_secs": 0.05}])
    async def test_stream_when_silent_then_watchdog_reconnects_and_catches_up(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        # Arrange: a mute socket swallows events and ignores pings.
        emu.mute_stream(True)
        it = intent(order_type=OrderType.LIMIT, limit="171.00")
        order = recorder.track(it)
        await fbroker.submit(it)
        await recorder.wait_for(lambda: "disconnected" in recorder.statuses(), 3)
        # Act: the line comes back; the adapter reconnects and reads what it missed.
        emu.mute_stream(False)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED, 5)
        await recorder.wait_for(lambda: recorder.statuses()[-1] == "ready")
        # Assert
        assert "recovering" in recorder.statuses()
        assert_exactly_once(emu, recorder, [it])


class TestMixedFaults:
    @pytest.mark.parametrize("cfg_over", [{"reconcile_interval_secs": 0.3,
                                           "reconnect_backoff_secs": 0.05}])
    async def test_many_orders_when_faults_everywhere_then_exactly_once(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.set_fill_parts(2)
        emu.fail_next(2, status=504, method="POST", path="/v2/orders", after_effect=True)
        emu.fail_next(1, status=500, method="POST", path="/v2/orders")
        emu.fail_next(2, status=429, method="POST", path="/v2/orders")
        emu.duplicate_events(5, event="partial_fill")
        emu.drop_events(1, event="fill")
        its = [intent("AAPL" if n % 2 else "MSFT", qty=5 + n) for n in range(8)]
        orders = [recorder.track(i) for i in its]
        await asyncio.gather(*(fbroker.submit(i) for i in its))
        emu.drop_stream()
        await recorder.wait_for(lambda: all(o.status == OrderStatus.FILLED for o in orders), 8)
        assert_exactly_once(emu, recorder, its)

