"""Fault tests: every one asserts at the emulator that no order was duplicated, no fill
was lost, and our positions equal the emulator's.

Fills are compared by identity, (client order id, cumulative quantity after the fill):
the emulator's FILL activity ids share nothing with its stream execution ids, as may be
the case on the real Alpaca. Faults that lose stream events are recovered by the
reconciler (the adapter only reports), so those tests run the adapter inside the real
order manager, reconciler, portfolio and journal."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest

from brokers._alpaca_http import RateBudget
from brokers.alpaca import AlpacaBroker
from kernel.clock import WallClock
from kernel.errors import AmbiguousSubmission, BrokerRejected, BrokerUnavailable
from kernel.events import BrokerStatusChanged, OrderIntent, ReconcileTick
from kernel.model import Fill, OrderType, TimeInForce
from kernel.orders import TERMINAL, Order, OrderStatus
from tests.alpaca_emulator import EmulatorThread
from tests.brokers.conftest import (
    Recorder,
    alpaca_session,
    emulator_identities,
    fill_identities,
    fills_of,
    intent,
    make_cfg,
)
from tests.daemon.session import Session

POST = ("POST", "/v2/orders")


def assert_exactly_once(emu: EmulatorThread, fills: list[Fill],
                        orders: dict[str, Order], intents: list[OrderIntent]) -> None:
    """Zero duplicate orders, zero lost or doubled fills, positions as the emulator's."""
    snap = emu.snapshot()
    cids = [o["client_order_id"] for o in snap["orders"]]
    assert Counter(cids) == Counter(i.client_order_id for i in intents)  # by cid and by intent
    ours = fill_identities(fills)
    assert max(ours.values(), default=1) == 1, "a fill booked twice"
    assert ours == emulator_identities(emu), "fills lost or invented"
    mine: dict[str, int] = {}
    for f in fills:
        mine[f.symbol] = mine.get(f.symbol, 0) + f.signed_qty
    assert {s: q for s, q in mine.items() if q} == {
        s: p["qty"] for s, p in snap["positions"].items()}
    for i in intents:
        theirs_o = next(o for o in snap["orders"] if o["client_order_id"] == i.client_order_id)
        assert orders[i.client_order_id].filled_qty == int(theirs_o["filled_qty"])


def recorded_once(emu: EmulatorThread, recorder: Recorder, intents: list[OrderIntent]) -> None:
    assert_exactly_once(emu, fills_of(recorder.events), recorder.orders, intents)
    assert recorder.errors == []


def booked_once(emu: EmulatorThread, s: Session, intents: list[OrderIntent]) -> None:
    assert_exactly_once(emu, fills_of(s.events), s.orders.orders, intents)
    assert s.orders.stats["overfill"] == 0
    assert {k: v.qty for k, v in s.portfolio.positions.items() if v.qty} == {
        k: p["qty"] for k, p in emu.snapshot()["positions"].items()}
    assert s.state == "ACTIVE"


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
        recorded_once(emu, recorder, [it])

    async def test_submit_when_504_before_effect_then_reposted_with_same_id(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.fail_next(1, status=504, method="POST", path="/v2/orders")
        it = intent()
        await submit_and_fill(fbroker, recorder, it)
        posts = [r for r in emu.requests if (r["method"], r["path"]) == POST]
        assert [r["status"] for r in posts] == [504, 200]
        assert {r["cid"] for r in posts} == {it.client_order_id}  # never a new id
        recorded_once(emu, recorder, [it])

    async def test_submit_when_connection_dropped_after_effect_then_adopted(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.fail_next(1, mode="drop", method="POST", path="/v2/orders", after_effect=True)
        it = intent()
        await submit_and_fill(fbroker, recorder, it)
        assert emu.count(*POST) == 1
        recorded_once(emu, recorder, [it])

    async def test_submit_when_server_hangs_then_timeout_and_single_order(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        # The POST is answered after the client's 1 s timeout; it still takes effect.
        emu.delay_next(1, seconds=1.5, method="POST", path="/v2/orders")
        it = intent()
        t0 = time.monotonic()
        await submit_and_fill(fbroker, recorder, it, wait_secs=6)
        assert time.monotonic() - t0 < 5
        await asyncio.sleep(0.8)  # let the hung request finish at the emulator
        recorded_once(emu, recorder, [it])
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
            recorded_once(emu, recorder, [it])


class TestRefusals:
    @pytest.mark.parametrize(("status", "code", "message"), [
        (422, 40010001, "qty must be a whole number of shares"),  # the duplicate's code
        (422, 40010001, "limit_price must be > 0"),
        (422, 42210000, "bracket orders require take_profit.limit_price"),
        (403, 40310000, "insufficient buying power"),
    ])
    async def test_submit_when_definite_refusal_then_rejected_once_not_looked_up(
        self, fbroker: AlpacaBroker, emu: EmulatorThread, status: int, code: int,
        message: str,
    ) -> None:
        # Arrange
        emu.refuse_next_orders(1, status=status, code=code, message=message)
        it = intent()
        # Act
        with pytest.raises(BrokerRejected) as info:
            await fbroker.submit(it)
        # Assert: refused once, never re-sent, never looked up, nothing left behind
        assert (info.value.status, info.value.code) == (status, code)
        assert message in str(info.value)
        assert emu.count(*POST) == 1
        assert emu.count("GET", "/v2/orders:by_client_order_id") == 0
        assert emu.call(lambda e: len(e.exchange.orders)) == 0

    async def test_submit_when_duplicate_id_then_looked_up_and_adopted_not_rejected(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        # The same 422/40010001, but the message says the id exists: an earlier try landed.
        it = intent()
        emu.fail_next(1, status=504, method="POST", path="/v2/orders", after_effect=True)
        await submit_and_fill(fbroker, recorder, it)
        statuses = [r["status"] for r in emu.requests if (r["method"], r["path"]) == POST]
        assert statuses == [504]
        await fbroker.submit(it)  # a resubmission of the same id answers "must be unique"
        assert [r["status"] for r in emu.requests if (r["method"], r["path"]) == POST] == [
            504, 422]
        assert emu.count("GET", "/v2/orders:by_client_order_id") == 2

    async def test_submit_when_refused_after_a_hung_attempt_then_ambiguous_not_rejected(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        # Arrange (found by the soak): the first POST hangs past the client's 1 s timeout
        # and is only processed later; the re-POST of the same id is refused.
        emu.delay_next(1, seconds=1.5, method="POST", path="/v2/orders")
        emu.refuse_next_orders(1, status=403, code=40310000,
                               message="insufficient buying power")
        it = intent()
        order = recorder.track(it)
        # Act / Assert: the refusal was about the second request only
        with pytest.raises(AmbiguousSubmission):
            await fbroker.submit(it)
        # ...and the first one lands, is reported and fills: never "rejected"
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED, 5)
        # (logged as they arrived: the hung one first, answered last)
        assert [r["status"] for r in emu.requests if (r["method"], r["path"]) == POST] == [
            200, 403]
        recorded_once(emu, recorder, [it])

    async def test_submit_when_order_cannot_be_built_then_rejected_without_request(
        self, fbroker: AlpacaBroker, emu: EmulatorThread) -> None:
        it = intent(order_type=OrderType.LIMIT)  # a limit order without a limit price
        with pytest.raises(BrokerRejected):
            await fbroker.submit(it)
        assert emu.count(*POST) == 0


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
        recorded_once(emu, recorder, [it])

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


async def place(s: Session, it: OrderIntent) -> Order:
    """Submit through the order manager, as the gate would."""
    from kernel.events import SubmitOrder

    s.bus.send(SubmitOrder(it))
    await s.orders.drained()
    return s.orders.orders[it.client_order_id]


async def until(pred: Any, wait_secs: float = 5.0) -> None:
    deadline = time.monotonic() + wait_secs
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def tick(s: Session) -> None:
    s.bus.publish(ReconcileTick(s.clock.now()))


class TestStreamFaults:
    async def test_stream_when_dropped_during_partial_fills_then_recovered_over_rest(
        self, emu: EmulatorThread, tmp_path: Any) -> None:
        # Arrange: 4 executions 50 ms apart; the line is cut after 2 events (new +
        # first partial) and stays down for 0.4 s, so the rest happen while we are away.
        it = intent(qty=10)
        async with alpaca_session(emu, tmp_path, reconnect_backoff_secs=0.05) as s:
            emu.set_fill_parts(4)
            emu.set_delays(fill=0.05)
            emu.drop_stream_after(2)
            emu.refuse_stream_for(0.4)
            # Act
            order = await place(s, it)
            await until(lambda: order.status is OrderStatus.FILLED and s.reconciler.ready)
            # Assert
            delivered = emu.call(lambda e: len(e.delivered))
            assert delivered < 5  # some events really were lost on the wire
            statuses = [e.status for e in s.of(BrokerStatusChanged)]
            assert statuses[-2:] == ["disconnected", "recovering"]
            missed = [d.what for d in s.reconciler.last_report.of("explained")]  # type: ignore[union-attr]
            assert "missed_fill" in missed
            booked_once(emu, s, [it])
            assert emu.call(lambda e: e.stream_connections) == 2

    async def test_stream_when_events_duplicated_then_each_fill_once(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.set_fill_parts(3)
        emu.duplicate_events(20)
        its = [intent(qty=9), intent("MSFT", qty=6)]
        for it in its:
            await submit_and_fill(fbroker, recorder, it)
        recorded_once(emu, recorder, its)

    async def test_stream_when_events_reordered_then_fills_counted_and_legal(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.set_fill_parts(3)
        emu.reorder_events(4)  # new, pf, pf, fill -> fill, pf, pf, new
        it = intent(qty=10)
        await submit_and_fill(fbroker, recorder, it)
        await asyncio.sleep(0.1)
        assert recorder.orders[it.client_order_id].status == OrderStatus.FILLED
        recorded_once(emu, recorder, [it])

    async def test_stream_when_partial_lost_then_requested_and_booked_from_rest(
        self, emu: EmulatorThread, tmp_path: Any) -> None:
        # The later fill event shows more filled than the stream delivered: the adapter
        # asks, the reconciler books the missing execution from the FILL activities.
        emu.set_fill_parts(2)
        emu.drop_events(1, event="partial_fill")
        it = intent(qty=10)
        async with alpaca_session(emu, tmp_path) as s:
            order = await place(s, it)
            await until(lambda: order.status is OrderStatus.FILLED)
            booked_once(emu, s, [it])
            assert [d.what for d in s.reconciler.last_report.of("explained")] == [  # type: ignore[union-attr]
                "missed_fill"]

    @pytest.mark.parametrize("lost", ["fill", "canceled"])
    async def test_stream_when_last_event_lost_then_next_reconciliation_settles_it(
        self, emu: EmulatorThread, tmp_path: Any, lost: str) -> None:
        # Nothing on the stream tells that the last event is missing: the periodic
        # reconciliation finds it.
        emu.set_fill_parts(2)
        emu.drop_events(1, event=lost)
        if lost == "canceled":
            emu.set_liquidity("AAPL", 3)
        it = intent(qty=10, tif=TimeInForce.IOC if lost == "canceled" else TimeInForce.DAY)
        async with alpaca_session(emu, tmp_path) as s:
            order = await place(s, it)
            await until(lambda: emu.call(lambda e: not e.exchange.by_cid[it.client_order_id].open))
            await asyncio.sleep(0.1)
            assert order.is_open  # the stream never said it ended
            tick(s)
            await until(lambda: not order.is_open)
            booked_once(emu, s, [it])

    async def test_stream_when_order_rejected_asynchronously_then_rejected_event(
        self, fbroker: AlpacaBroker, recorder: Recorder, emu: EmulatorThread) -> None:
        emu.reject_next_orders(1, reason="symbol halted")
        it = intent()
        await submit_and_fill(fbroker, recorder, it)
        order = recorder.orders[it.client_order_id]
        assert order.status == OrderStatus.REJECTED
        assert recorder.of(it.client_order_id)[-1] == "OrderRejected"
        recorded_once(emu, recorder, [it])

    async def test_stream_when_silent_then_watchdog_reconnects_and_catches_up(
        self, emu: EmulatorThread, tmp_path: Any) -> None:
        # Arrange: a mute socket swallows events and ignores pings.
        async with alpaca_session(emu, tmp_path, stream_silence_secs=0.4,
                                  reconnect_backoff_secs=0.05) as s:
            emu.mute_stream(True)
            it = intent(order_type=OrderType.LIMIT, limit="171.00")
            order = await place(s, it)
            statuses = lambda: [e.status for e in s.of(BrokerStatusChanged)]  # noqa: E731
            await until(lambda: "disconnected" in statuses(), 3)
            # Act: the line comes back; the adapter reconnects, the reconciler catches up.
            emu.mute_stream(False)
            await until(lambda: order.status is OrderStatus.FILLED and s.reconciler.ready)
            # Assert
            assert "recovering" in statuses()
            booked_once(emu, s, [it])


class TestFillIdentityAcrossChannels:
    async def test_reconcile_when_fills_came_over_the_stream_then_nothing_rebooked(
        self, emu: EmulatorThread, tmp_path: Any) -> None:
        # Activity ids share nothing with stream execution ids; a reconciliation that
        # keyed on ids would re-book (or halt on) every fill it already has.
        emu.set_fill_parts(3)
        its = [intent(qty=9), intent("MSFT", qty=4)]
        async with alpaca_session(emu, tmp_path) as s:
            for it in its:
                order = await place(s, it)
                await until(lambda o=order: o.status is OrderStatus.FILLED)  # type: ignore[misc]
            # Act
            report = await s.reconciler.reconcile("tick")
            # Assert
            assert report.ok and report.differences == []
            booked_once(emu, s, its)

    async def test_restart_when_fills_happened_while_down_then_booked_once(
        self, emu: EmulatorThread, tmp_path: Any) -> None:
        it = intent(order_type=OrderType.LIMIT, limit="160.00", tif=TimeInForce.GTC, qty=10)
        async with alpaca_session(emu, tmp_path) as s1:
            order = await place(s1, it)
            await until(lambda: order.status is OrderStatus.NEW)
        # while the daemon is down the order fills in two executions
        emu.set_fill_parts(2)
        emu.set_price("AAPL", "159.00")
        await until(lambda: emu.call(lambda e: not e.exchange.by_cid[it.client_order_id].open))
        async with alpaca_session(emu, tmp_path) as s2:
            report = s2.reconciler.last_report
            assert report is not None and report.ok
            assert [d.what for d in report.of("explained")] == ["missed_fill", "missed_fill"]
            assert s2.orders.orders[it.client_order_id].status is OrderStatus.FILLED
            assert s2.portfolio.qty("AAPL") == 10
            again = await s2.reconciler.reconcile("tick")
            assert again.differences == []


class TestStartOfDay:
    async def test_start_when_account_lost_since_the_close_then_day_measured_from_close(
        self, emu: EmulatorThread, tmp_path: Any) -> None:
        # Arrange: yesterday closed at 100,000 (last_equity); since then AAPL fell.
        async with alpaca_session(emu, tmp_path) as s1:
            order = await place(s1, intent(qty=100))
            await until(lambda: order.status is OrderStatus.FILLED)
        emu.roll_day()
        emu.set_price("AAPL", "150.50")  # 100 x -20 = -2,000 (2% of the day's base)
        # Act: a fresh start of the daemon
        async with alpaca_session(emu, tmp_path) as s2:
            # Assert: the day's base is the broker's close, not the equity at start-up
            assert s2.marker.start_of_day_equity == Decimal(100_000)
            daily_loss, _, _ = s2.marker.marks.losses(Decimal(98_000))
            assert daily_loss == Decimal("0.02")


class TestMixedFaults:
    async def test_many_orders_when_faults_everywhere_then_exactly_once(
        self, emu: EmulatorThread, tmp_path: Any) -> None:
        emu.set_fill_parts(2)
        emu.fail_next(2, status=504, method="POST", path="/v2/orders", after_effect=True)
        emu.fail_next(1, status=500, method="POST", path="/v2/orders")
        emu.fail_next(2, status=429, method="POST", path="/v2/orders")
        emu.duplicate_events(5, event="partial_fill")
        emu.drop_events(1, event="fill")
        its = [intent("AAPL" if n % 2 else "MSFT", qty=5 + n) for n in range(8)]
        async with alpaca_session(emu, tmp_path, reconnect_backoff_secs=0.05) as s:
            orders = [await place(s, i) for i in its]  # one worker: one POST at a time
            emu.drop_stream()
            await asyncio.sleep(0.5)
            tick(s)
            await until(lambda: sum(o.is_open for o in orders) == 1, 8)
            # The 500 may have taken effect, so the same id goes again, into the two 429s:
            # the outcome stays unknown (the 500's request could still land) and the order
            # stays in flight until the broker shows it or reconciliation abandons it.
            (unknown,) = [o for o in orders if o.is_open]
            assert unknown.status is OrderStatus.PENDING_NEW
            placed = [i for i, o in zip(its, orders, strict=True) if o is not unknown]
            assert all(o.status is OrderStatus.FILLED for o in orders if o is not unknown)
            booked_once(emu, s, placed)
