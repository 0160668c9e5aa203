"""The fake TWS with the real ib_async client: handshake, orders, fills, requests, faults.

Each test drives ib_async's ``IB`` (no adapter) against the fake on the test's loop and
checks both sides: what the client received and what the fake booked.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from ib_async import IB, ExecutionFilter, LimitOrder, MarketOrder, Stock

from tests.data import REPO
from tests.fake_tws import FakeTws
from tests.fake_tws.kit import eventually
from tests.fake_tws.wire import SERVER_VERSION

AAPL = Stock("AAPL", "SMART", "USD")


@pytest.fixture
async def tws() -> AsyncIterator[FakeTws]:
    async with FakeTws(prices={"AAPL": Decimal("170.50")}) as fake:
        yield fake


async def connect(tws: FakeTws, client_id: int = 7) -> IB:
    ib = IB()
    await ib.connectAsync("127.0.0.1", tws.port, clientId=client_id, timeout=5)
    return ib


def market(qty: int, ref: str, action: str = "BUY") -> MarketOrder:
    order = MarketOrder(action, qty)
    order.orderRef = ref
    return order


until = eventually


class TestHandshake:
    async def test_connect_when_ib_async_then_version_178_accounts_and_next_id(
            self, tws: FakeTws) -> None:
        ib = await connect(tws)
        try:
            assert ib.client.serverVersion() == SERVER_VERSION
            assert ib.managedAccounts() == ["DU1234567"]
            assert ib.client.getReqId() >= 1
            assert tws.snapshot()["sessions"] == [7]
            tags = {v.tag: v.value for v in ib.accountValues()}
            assert tags["TotalCashValue"] == "100000" and tags["NetLiquidation"] == "100000"
        finally:
            ib.disconnect()

    async def test_connect_when_client_range_below_157_then_closed_without_answer(
            self, tws: FakeTws) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", tws.port)
        hello = b"v100..150"
        writer.write(b"API\0" + struct.pack(">I", len(hello)) + hello)
        assert await asyncio.wait_for(reader.read(), 3) == b""  # closed, nothing said
        writer.close()

    async def test_connect_when_client_id_in_use_then_326_and_first_session_kept(
            self, tws: FakeTws) -> None:
        first = await connect(tws, 7)
        second = IB()
        errors: list[int] = []
        second.errorEvent += lambda req, code, msg, c: errors.append(code)
        try:
            with pytest.raises((TimeoutError, ConnectionError)):
                await second.connectAsync("127.0.0.1", tws.port, clientId=7, timeout=1)
            assert errors == [326]
            assert first.isConnected() and tws.snapshot()["sessions"] == [7]
        finally:
            first.disconnect()


class TestOrders:
    async def test_market_order_when_two_parts_then_fills_commissions_and_books(
            self, tws: FakeTws) -> None:
        tws.set_fill(parts=2)
        ib = await connect(tws)
        try:
            trade = ib.placeOrder(AAPL, market(10, "ref-1"))
            await until(lambda: trade.orderStatus.status == "Filled"
                        and all(f.commissionReport.execId for f in trade.fills))
            assert [f.execution.shares for f in trade.fills] == [5.0, 5.0]
            assert [f.execution.cumQty for f in trade.fills] == [5.0, 10.0]
            assert {f.execution.orderRef for f in trade.fills} == {"ref-1"}
            assert [f.commissionReport.commission for f in trade.fills] == [0.35, 0.35]
            snap = tws.snapshot()
            assert Decimal(snap["account"]["cash"]) == Decimal(100_000) - 1705 - Decimal("0.70")
            assert snap["positions"] == {"AAPL": {"qty": "10", "avg_cost": "170.57"}}
            assert [(p.contract.symbol, p.position) for p in ib.positions()] == [("AAPL", 10.0)]
        finally:
            ib.disconnect()

    async def test_limit_order_when_price_crosses_then_fills_at_the_new_price(
            self, tws: FakeTws) -> None:
        ib = await connect(tws)
        try:
            order = LimitOrder("BUY", 4, 170.00)
            order.orderRef = "ref-lmt"
            trade = ib.placeOrder(AAPL, order)
            await until(lambda: trade.orderStatus.status == "Submitted")
            assert trade.fills == []
            tws.set_price("AAPL", "169.90")
            await until(lambda: trade.orderStatus.status == "Filled")
            assert trade.fills[0].execution.price == 169.90
        finally:
            ib.disconnect()

    async def test_cancel_when_working_then_cancelled_and_202_and_late_cancel_10148(
            self, tws: FakeTws) -> None:
        ib = await connect(tws)
        codes: list[int] = []
        ib.errorEvent += lambda req, code, msg, c: codes.append(code)
        try:
            order = LimitOrder("BUY", 4, 100.00)
            order.orderRef = "ref-cxl"
            trade = ib.placeOrder(AAPL, order)
            await until(lambda: trade.orderStatus.status == "Submitted")
            ib.cancelOrder(trade.order)
            await until(lambda: 202 in codes)
            ib.client.cancelOrder(trade.order.orderId, "")
            await until(lambda: 10148 in codes)
            assert tws.snapshot()["orders"][0]["status"] == "Cancelled"
        finally:
            ib.disconnect()

    async def test_reject_next_when_placed_then_201_and_inactive_completed_order(
            self, tws: FakeTws) -> None:
        tws.reject_next(reason="no permissions")
        ib = await connect(tws)
        codes: list[int] = []
        ib.errorEvent += lambda req, code, msg, c: codes.append(code)
        try:
            ib.placeOrder(AAPL, market(10, "ref-rej"))
            await until(lambda: 201 in codes)
            done = await ib.reqCompletedOrdersAsync(False)
            assert [(t.order.orderRef, t.orderStatus.status) for t in done] == [
                ("ref-rej", "Inactive")]
            assert tws.snapshot()["executions"] == []
        finally:
            ib.disconnect()

    async def test_place_when_cash_does_not_cover_then_201(self, tws: FakeTws) -> None:
        ib = await connect(tws)
        codes: list[int] = []
        ib.errorEvent += lambda req, code, msg, c: codes.append(code)
        try:
            ib.placeOrder(AAPL, market(1000, "too-big"))
            await until(lambda: 201 in codes)
            assert Decimal(tws.snapshot()["account"]["cash"]) == 100_000
        finally:
            ib.disconnect()

    async def test_place_when_id_reused_then_103_and_nothing_booked(self, tws: FakeTws) -> None:
        ib = await connect(tws)
        codes: list[int] = []
        ib.errorEvent += lambda req, code, msg, c: codes.append(code)
        try:
            first = market(1, "first")
            ib.placeOrder(AAPL, first)
            await until(lambda: len(tws.snapshot()["executions"]) == 1)
            again = market(1, "again")
            again.orderId = first.orderId  # a finished order's id
            ib.client.placeOrder(again.orderId, AAPL, again)
            await until(lambda: 103 in codes)
            assert [o["order_ref"] for o in tws.snapshot()["orders"]] == ["first"]
        finally:
            ib.disconnect()


class TestRequests:
    async def test_executions_and_completed_when_asked_then_filtered_with_commissions(
            self, tws: FakeTws) -> None:
        ib = await connect(tws)
        try:
            ib.placeOrder(AAPL, market(3, "a"))
            ib.placeOrder(AAPL, market(2, "b", "SELL"))
            await until(lambda: len(tws.snapshot()["executions"]) == 2)
            fills = await ib.reqExecutionsAsync(ExecutionFilter(side="SELL"))
            assert [f.execution.orderRef for f in fills] == ["b"]
            assert ib.wrapper.fills[fills[0].execution.execId].commissionReport.commission == 0.35
            late = await ib.reqExecutionsAsync(ExecutionFilter(time="20990101-00:00:00"))
            assert late == []
            done = await ib.reqCompletedOrdersAsync(False)
            assert sorted(t.order.orderRef for t in done) == ["a", "b"]
            assert {t.order.filledQuantity for t in done} == {3.0, 2.0}
        finally:
            ib.disconnect()

    async def test_all_open_orders_when_two_clients_then_both_open_own_only_for_own(
            self, tws: FakeTws) -> None:
        one, two = await connect(tws, 1), await connect(tws, 2)
        try:
            for ib, ref in ((one, "one"), (two, "two")):
                order = LimitOrder("BUY", 1, 100.0)
                order.orderRef = ref
                ib.placeOrder(AAPL, order)
            await until(lambda: len(tws.snapshot()["orders"]) == 2)
            own = await one.reqOpenOrdersAsync()
            every = await one.reqAllOpenOrdersAsync()
            assert [t.order.orderRef for t in own] == ["one"]
            assert sorted(t.order.orderRef for t in every) == ["one", "two"]
        finally:
            one.disconnect()
            two.disconnect()


class TestFaults:
    async def test_drop_next_exec_details_when_filled_then_client_misses_it_until_asked(
            self, tws: FakeTws) -> None:
        tws.drop_next("execDetails")
        ib = await connect(tws)
        try:
            trade = ib.placeOrder(AAPL, market(5, "lost"))
            await until(lambda: trade.orderStatus.status == "Filled")
            assert trade.fills == []
            fills = await ib.reqExecutionsAsync()
            assert [f.execution.orderRef for f in fills] == ["lost"]
        finally:
            ib.disconnect()

    async def test_duplicate_next_when_filled_then_the_same_exec_id_arrives_twice(
            self, tws: FakeTws) -> None:
        tws.duplicate_next("execDetails")
        ib = await connect(tws)
        seen: list[str] = []
        raw = ib.wrapper.execDetails

        def spy(req_id: int, contract: Any, execution: Any) -> None:
            seen.append(execution.execId)
            raw(req_id, contract, execution)

        ib.wrapper.execDetails = spy  # type: ignore[method-assign]
        try:
            trade = ib.placeOrder(AAPL, market(5, "twice"))
            await until(lambda: trade.orderStatus.status == "Filled" and len(seen) == 2)
            assert seen[0] == seen[1] and len(tws.snapshot()["executions"]) == 1
        finally:
            ib.disconnect()

    async def test_hang_when_asked_then_no_answer_until_released(self, tws: FakeTws) -> None:
        ib = await connect(tws)
        try:
            tws.hang()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ib.reqCurrentTimeAsync(), 0.3)
            tws.hang(False)
            assert (await asyncio.wait_for(ib.reqCurrentTimeAsync(), 2)).year >= 2024
        finally:
            ib.disconnect()

    async def test_hold_acks_when_released_then_acked_and_filled(self, tws: FakeTws) -> None:
        tws.hold_acks()
        ib = await connect(tws)
        try:
            trade = ib.placeOrder(AAPL, market(2, "held"))
            await asyncio.sleep(0.1)
            assert trade.orderStatus.status == "PendingSubmit"
            assert [o["status"] for o in tws.snapshot()["orders"]] == ["Submitted"]
            assert tws.hold_acks(False) == ["held"]
            await until(lambda: trade.orderStatus.status == "Filled")
        finally:
            ib.disconnect()

    async def test_restart_when_rollback_then_next_valid_id_goes_back(self, tws: FakeTws) -> None:
        ib = await connect(tws)
        for i in range(3):
            ib.placeOrder(AAPL, market(1, f"r{i}"))
        await until(lambda: len(tws.snapshot()["executions"]) == 3)
        used = max(o["order_id"] for o in tws.snapshot()["orders"])
        tws.restart(rollback_ids=True)
        await until(lambda: not ib.isConnected())
        again = await connect(tws)
        try:
            assert again.client.getReqId() < used  # ids are issued again
            assert len(tws.snapshot()["orders"]) == 3  # the books survive
        finally:
            again.disconnect()

    async def test_link_when_lost_and_restored_then_1100_and_1102(self, tws: FakeTws) -> None:
        ib = await connect(tws)
        codes: list[int] = []
        ib.errorEvent += lambda req, code, msg, c: codes.append(code)
        try:
            tws.link(1100)
            tws.link(1102)
            await until(lambda: codes == [1100, 1102])
        finally:
            ib.disconnect()


@pytest.mark.slow
class TestProcess:
    def test_run_as_process_when_controlled_over_http_then_client_trades(self) -> None:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fake_tws", "--port", "0", "--price", "AAPL=170.5"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            port, control = (int(x) for x in
                             (line.split("127.0.0.1:")[1].split()[0], line.rsplit(":", 1)[1]))
            base = f"http://127.0.0.1:{control}/_control"
            _post(f"{base}/set_price", {"symbol": "MSFT", "price": "400.25"})
            result = asyncio.run(_trade_msft(port))
            snap = json.loads(urllib.request.urlopen(f"{base}/snapshot", timeout=5).read())
            assert result == "Filled"
            assert snap["positions"]["MSFT"]["qty"] == "3"
            assert snap["executions"][0]["price"] == "400.25"
        finally:
            proc.terminate()
            proc.wait(10)


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    return json.loads(urllib.request.urlopen(req, timeout=5).read())["result"]


async def _trade_msft(port: int) -> str:
    ib = IB()
    await ib.connectAsync("127.0.0.1", port, clientId=3, timeout=5)
    try:
        trade = ib.placeOrder(Stock("MSFT", "SMART", "USD"), market(3, "proc"))
        await until(lambda: trade.orderStatus.status == "Filled")
        return trade.orderStatus.status
    finally:
        ib.disconnect()

