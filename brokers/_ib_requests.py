"""The adapter's requests to TWS and the protocol's queries built on them.

ib_async files the replies of several requests under one fixed key per kind
(``openOrders``, ``completedOrders``, ``positions``, ``accountValues``): two at once would
overwrite each other's future, so those go one at a time under a lock. Every request
has a timeout, and ib_async's ``RequestError`` (a TWS error code for the request) and
connection errors are mapped to the project's exception tree.

No ``ib_async`` import: the ``IB`` object is passed in; the SDK's ``ExecutionFilter`` and
``RequestError`` classes are handed over by ``brokers.ib``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import structlog

from brokers._ib_codes import error_for
from brokers._ib_feed import IbFeed, account_values, one_per_fill
from brokers._ib_map import (
    IbExecution,
    IbOrderView,
    broker_fill,
    broker_order,
    dec,
    exec_filter_time,
    execution_of,
    shares,
)
from brokers._ib_track import IbTracker
from brokers.config import IbConfig
from kernel.broker import BrokerFill, BrokerOrder
from kernel.clock import Clock
from kernel.errors import BrokerUnavailable
from kernel.model import AccountSnapshot, BrokerPosition

log = structlog.get_logger("brokers.ib")
T = TypeVar("T")

OpenOrder = tuple[IbOrderView, int, Decimal | None]  # view, filled, average fill price


class IbRequests:
    """Requests and queries over one ``IB`` object (whatever its connection).

    Args:
        ib: returns the ib_async ``IB`` (raises ``BrokerUnavailable`` before start).
        request_error: ib_async's ``RequestError`` class.
        execution_filter: ib_async's ``ExecutionFilter`` class.
    """

    def __init__(self, cfg: IbConfig, *, ib: Callable[[], Any], feed: IbFeed,
                 tracker: IbTracker, clock: Clock, request_error: type[Exception],
                 execution_filter: Callable[..., Any]) -> None:
        self._cfg = cfg
        self._ib = ib
        self._feed = feed
        self._tracker = tracker
        self._clock = clock
        self._request_error = request_error
        self._filter = execution_filter
        self._lock = asyncio.Lock()

    async def request(self, make: Callable[[], Awaitable[T]], what: str) -> T:
        """One SDK request with a timeout; SDK and TWS errors mapped to ``BrokerError``."""
        try:
            return await asyncio.wait_for(make(), self._cfg.request_timeout_secs)
        except self._request_error as exc:
            code, message = getattr(exc, "code", 0), getattr(exc, "message", str(exc))
            raise error_for(int(code), str(message), what=what) from exc
        except TimeoutError:
            raise BrokerUnavailable(f"IB {what}: no answer within "
                                    f"{self._cfg.request_timeout_secs}s") from None
        except ConnectionError as exc:
            raise BrokerUnavailable(f"IB {what}: not connected ({exc})") from exc

    async def keyed(self, make: Callable[[], Awaitable[T]], what: str) -> T:
        async with self._lock:
            return await self.request(make, what)

    async def completed_views(self) -> list[IbOrderView]:
        """Today's completed orders (the feed collects their status text)."""
        async with self._lock:
            views: list[IbOrderView] = []
            self._feed.collecting = views
            try:
                await self.request(lambda: self._ib().reqCompletedOrdersAsync(False),
                                   "completed orders")
                return views
            finally:
                self._feed.collecting = None

    async def executions(self, since: datetime | None) -> list[IbExecution]:
        flt = self._filter(acctCode=self._feed.account,
                           time=exec_filter_time(since) if since else "")
        fills = await self.request(lambda: self._ib().reqExecutionsAsync(flt), "executions")
        return [execution_of(f.contract, f.execution) for f in fills]

    async def open_views(self) -> list[OpenOrder]:
        """Every open order of the account (all client ids), with its filled quantity."""
        trades = await self.keyed(self._ib().reqAllOpenOrdersAsync, "open orders")
        out = []
        for t in trades:
            view = self._feed.trade_view(t)
            if view is not None:
                filled = shares(t.orderStatus.filled)
                out.append((view, filled, dec(t.orderStatus.avgFillPrice) if filled else None))
        return out

    async def lookup(self, cid: str) -> OpenOrder | None:
        """The order with orderRef ``cid`` at the broker now (open, then completed)."""
        for view, filled, avg in await self.open_views():
            if view.client_order_id == cid:
                return view, filled, avg
        done = [v for v in await self.completed_views() if v.client_order_id == cid]
        if not done:
            return None
        return done[-1], done[-1].filled or 0, self._tracker.avg_fill_price(cid)

    # -- Broker queries ------------------------------------------------------------------

    def _as_broker_order(self, found: OpenOrder) -> BrokerOrder:
        view, filled, avg = found
        order = self._tracker.orders.get(view.client_order_id)
        return broker_order(view, filled=filled, avg_price=avg,
                            submitted_at=order.created_ts if order else self._clock.now())

    async def get_order(self, cid: str) -> BrokerOrder | None:
        found = await self.lookup(cid)
        return self._as_broker_order(found) if found is not None else None

    async def open_orders(self) -> list[BrokerOrder]:
        return [self._as_broker_order(found) for found in await self.open_views()]

    async def fills_since(self, since: datetime) -> list[BrokerFill]:
        execs = one_per_fill(await self.executions(since))
        await self._await_commissions(e.exec_id for e in execs)
        out = []
        for e in execs:
            commission = self._tracker.commission_of(e.exec_id)
            if commission is None:
                log.error("ib.commission_missing", execution_id=e.exec_id,
                          client_order_id=e.client_order_id, where="fills_since")
            out.append(broker_fill(e, commission or Decimal(0)))
        return out

    async def _await_commissions(self, exec_ids: Iterable[str]) -> None:
        waiting = set(exec_ids)
        deadline = time.monotonic() + self._cfg.commission_wait_secs
        while True:
            waiting = {x for x in waiting if self._tracker.commission_of(x) is None}
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                return
            self._feed.commission_seen.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._feed.commission_seen.wait(), left)

    async def positions(self) -> list[BrokerPosition]:
        rows = await self.keyed(self._ib().reqPositionsAsync, "positions")
        return [BrokerPosition(str(p.contract.symbol), shares(p.position),
                               dec(p.avgCost) or Decimal(0))
                for p in rows if self._feed.mine(str(p.account)) and shares(p.position)]

    async def account(self) -> AccountSnapshot:
        """Cash (TotalCashValue), equity (NetLiquidation) and buying power from a fresh
        account-updates download (unsubscribe, subscribe, wait for its end)."""
        ib, account = self._ib(), self._feed.account

        def download() -> Awaitable[None]:
            ib.client.reqAccountUpdates(False, account)
            result: Awaitable[None] = ib.reqAccountUpdatesAsync(account)
            return result

        await self.keyed(download, "account updates")
        values = account_values(ib.accountValues(account), self._cfg.currency)
        cash, equity = values.get("TotalCashValue"), values.get("NetLiquidation")
        if cash is None or equity is None:
            raise BrokerUnavailable(f"IB account {account}: TotalCashValue or "
                                    f"NetLiquidation missing in {self._cfg.currency}")
        positions = await self.positions()
        return AccountSnapshot(ts=self._clock.now(), cash=cash, equity=equity,
                               buying_power=values.get("BuyingPower", cash),
                               positions=tuple(positions))


__all__ = ["IbRequests", "OpenOrder"]
