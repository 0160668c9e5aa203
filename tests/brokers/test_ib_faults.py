"""The IB adapter through connection faults of the fake TWS: drops during partial fills,
a Gateway restart that re-issues order ids, a hung Gateway, a client id in use, TWS
losing IB's servers. After each: no order twice at the fake, every execution it booked
reported exactly once, and the adapter's status says what happened."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest

from brokers.ib import IbBroker
from kernel.clock import WallClock
from kernel.errors import BrokerAuthError, BrokerUnavailable
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


def statuses_since(recorder: Recorder, n: int) -> list[str]:
    return recorder.statuses()[n:]


class TestReconnect:
    async def test_drop_during_partial_fills_when_reconnected_then_missed_fill_caught_up(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        # Arrange: a 10-share order that fills 3, then 4 while we are away, then 3
        tws.set_fill(auto=False)
        it = intent(qty=10)
        order = recorder.track(it)
        await broker.submit(it)
        tws.execute(it.client_order_id, 3)
        await recorder.wait_for(lambda: order.filled_qty == 3)
        before = len(recorder.statuses())
        # Act
        assert tws.drop_connections() == 1
        await eventually(lambda: "disconnected" in statuses_since(recorder, before))
        tws.execute(it.client_order_id, 4)  # nobody is connected to hear it
        await eventually(lambda: statuses_since(recorder, before)[-1:] == ["recovering"])
        await recorder.wait_for(lambda: order.filled_qty == 7)
        tws.execute(it.client_order_id, 3)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        # Assert
        assert statuses_since(recorder, before) == ["disconnected", "recovering"]
        assert [f.fill.qty for f in fills_of(recorder.events)] == [3, 4, 3]
        assert orders_by_ref(tws) == {it.client_order_id: 1}
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)
        assert recorder.errors == []

    async def test_submit_while_disconnected_then_unavailable_and_nothing_sent(
            self, tws: FakeTws, recorder: Recorder) -> None:
        async with IbBroker(ib_cfg(tws, reconnect_backoff_secs=5.0,
                                   reconnect_backoff_max_secs=5.0),
                            clock=WallClock(), sink=recorder) as b:
            tws.drop_connections()
            await eventually(lambda: recorder.statuses()[-1:] == ["disconnected"])
            with pytest.raises(BrokerUnavailable, match="not connected"):
                await b.submit(intent())
        assert orders_by_ref(tws) == {}

    async def test_restart_when_order_ids_rolled_back_then_no_cross_wiring(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        # Arrange: two orders filled before the Gateway restarts
        first = [intent(qty=q) for q in (2, 3)]
        for it in first:
            recorder.track(it)
            await broker.submit(it)
        await eventually(lambda: len(fills_of(recorder.events)) == 2)
        old_ids = {o["order_ref"]: o["order_id"] for o in tws.snapshot()["orders"]}
        before = len(recorder.statuses())
        # Act: the restart forgets the ids it issued; the next order gets one again
        tws.restart(rollback_ids=True)
        await eventually(lambda: statuses_since(recorder, before)[-1:] == ["recovering"])
        tws.set_fill(parts=2)
        again = intent(qty=4)
        order = recorder.track(again)
        await broker.submit(again)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        # Assert: the id was re-issued, yet each order has exactly its own fills
        new_id = order_at(tws, again.client_order_id)["order_id"]
        assert new_id in old_ids.values()
        assert orders_by_ref(tws) == {it.client_order_id: 1 for it in [*first, again]}
        assert_fills_match_fake(recorder.events, tws)
        assert_books_match(recorder.events, tws)
        for it in [*first, again]:
            assert recorder.orders[it.client_order_id].filled_qty == it.qty
        assert recorder.errors == []

    async def test_gateway_hangs_when_probed_then_cut_and_reconnected_after_it_recovers(
            self, tws: FakeTws, recorder: Recorder) -> None:
        cfg = ib_cfg(tws, heartbeat_secs=0.3, request_timeout_secs=0.3,
                     connect_timeout_secs=0.5)
        async with IbBroker(cfg, clock=WallClock(), sink=recorder) as b:
            before = len(recorder.statuses())
            tws.hang()
            await eventually(lambda: "disconnected" in statuses_since(recorder, before))
            with pytest.raises(BrokerUnavailable):
                await b.submit(intent())
            tws.hang(False)
            await eventually(lambda: statuses_since(recorder, before)[-1:] == ["recovering"], 10)
            it = intent()
            order = recorder.track(it)
            await b.submit(it)
            await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert orders_by_ref(tws) == {it.client_order_id: 1}
        assert_books_match(recorder.events, tws)

    async def test_link_lost_then_restored_then_refused_meanwhile_and_reconciled_after(
            self, broker: IbBroker, recorder: Recorder, tws: FakeTws) -> None:
        before = len(recorder.statuses())
        tws.link(1100)
        await eventually(lambda: statuses_since(recorder, before) == ["disconnected"])
        with pytest.raises(BrokerUnavailable, match="IB servers down"):
            await broker.submit(intent())
        tws.link(1102)
        await eventually(lambda: statuses_since(recorder, before)
                         == ["disconnected", "recovering"])
        it = intent()
        order = recorder.track(it)
        await broker.submit(it)
        await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
        assert orders_by_ref(tws) == {it.client_order_id: 1}
        assert_books_match(recorder.events, tws)


class TestStartup:
    async def test_start_when_client_id_in_use_then_auth_error_at_once(
            self, tws: FakeTws, recorder: Recorder) -> None:
        tws.occupy_client_id(11)
        started = time.monotonic()
        with pytest.raises(BrokerAuthError, match="client id 11 is already in use") as info:
            async with IbBroker(ib_cfg(tws, connect_timeout_secs=30.0), clock=WallClock(),
                                sink=recorder):
                pass
        assert info.value.code == 326
        assert time.monotonic() - started < 15.0  # on the refusal, not the 30 s timeout
        assert tws.snapshot()["sessions"] == []

    async def test_reconnect_when_client_id_in_use_then_waits_without_fighting(
            self, tws: FakeTws, recorder: Recorder) -> None:
        cfg = ib_cfg(tws, reconnect_backoff_secs=0.05, reconnect_backoff_max_secs=1.0)
        async with IbBroker(cfg, clock=WallClock(), sink=recorder):
            connects = tws.requests.count(71)
            before = len(recorder.statuses())
            tws.occupy_client_id(11)
            tws.drop_connections()
            await eventually(lambda: tws.requests.count(71) == connects + 1)  # refused
            await _sleep(0.45)
            # the next try waits the slowest backoff (0.5-1 s), not 0.1 s: no storm
            assert tws.requests.count(71) == connects + 1
            tws.occupy_client_id(11, on=False)
            await eventually(lambda: statuses_since(recorder, before)[-1:] == ["recovering"])
            assert statuses_since(recorder, before) == ["disconnected", "recovering"]

    async def test_start_when_nothing_listens_then_unavailable(self, recorder: Recorder) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = ib_cfg(_Port(port))
        with pytest.raises(BrokerUnavailable, match=str(port)):
            async with IbBroker(cfg, clock=WallClock(), sink=recorder):
                pass

    async def test_start_when_several_accounts_then_one_must_be_configured(
            self, recorder: Recorder) -> None:
        async with FakeTws(accounts=("DU111", "DU222"), prices=dict(PRICES)) as tws:
            with pytest.raises(BrokerAuthError, match=r"set broker\.ib\.account"):
                async with IbBroker(ib_cfg(tws), clock=WallClock(), sink=recorder):
                    pass
            async with IbBroker(ib_cfg(tws, account="DU222"), clock=WallClock(),
                                sink=recorder) as b:
                it = intent()
                order = recorder.track(it)
                await b.submit(it)
                await recorder.wait_for(lambda: order.status == OrderStatus.FILLED)
                account = await b.account()
            snap = tws.snapshot()
            assert [o["account"] for o in snap["orders"]] == ["DU222"]
            assert account.cash == Decimal(snap["cash"]["DU222"]) < Decimal(snap["cash"]["DU111"])


class _Port:
    def __init__(self, port: int) -> None:
        self.port = port


def order_at(tws: FakeTws, ref: str) -> dict[str, str]:
    [order] = [o for o in tws.snapshot()["orders"] if o["order_ref"] == ref]
    return order


async def _sleep(secs: float) -> None:
    import asyncio

    await asyncio.sleep(secs)
