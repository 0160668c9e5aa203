"""The Interactive Brokers adapter, on ib_async 2.1.0 (IB Gateway or TWS).

This is the only module of tradingd that imports ``ib_async``. ib_async is asyncio
native: its callbacks run on the daemon's loop, so events reach the sink on the loop's
thread without hops. The adapter reads TWS's messages at the source (it chains onto the
SDK wrapper's ``openOrder``, ``orderStatus``, ``completedOrder``, ``execDetails`` and
``commissionReport``) rather than ib_async's inferred trade states, and keeps its own
shadow book (``brokers._ib_track``).

What it adds to the SDK (ib-protocol.md):

* **exactly once**: the deterministic client order id travels as ``orderRef``. Before
  an order is placed, its orderRef is looked up among the orders seen at the broker
  (open orders of every client and completed orders, fetched at every (re)connect and
  kept current by the order stream); before a re-send, the broker is asked afresh.
  ``submit`` waits for TWS's first answer: an acknowledgement, a rejection (reported as
  ``OrderRejected`` with the code), 103 "duplicate order id" (looked up, then placed
  again under a new orderId, never twice under the same orderRef), or nothing (looked up;
  ``AmbiguousSubmission`` if still unknown). Nothing durable is keyed on orderId;
* fills de-duplicated by ``execId`` and ``cumQty``, capped by the cumulative quantity,
  each reported with its commission (see ``brokers._ib_track``);
* the connection: ib_async never reconnects, so a task watches it, probes a silent one
  with ``reqCurrentTime``, and reconnects with exponential backoff and jitter. After a
  reconnect (or TWS's 1101/1102 "connectivity restored") it fetches completed orders and
  the executions since the last known fill, reports what it missed, then publishes
  ``recovering`` (the engine's Reconciler runs a pass before new orders) and ``ready``.
  Client id in use (326) fails start-up at once (``BrokerAuthError``); later it is
  retried at the slowest backoff, never fought;
* bounded memory: finished orders are pruned from the shadow book and from ib_async's
  own trade and fill dictionaries.

``replace`` is refused: IB modifies an order in place under the same permId and
orderRef, which the protocol's replace (a new client order id) cannot express.

Events published through the sink: ``OrderAccepted``, ``OrderNew``, ``OrderFilled``,
``OrderCanceled``, ``OrderRejected``, ``OrderPendingCancel``, ``OrderCancelRejected``,
``BrokerStatusChanged`` (connected, disconnected, recovering, ready) and ``AlertRaised``
(``ib.commission_missing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Self, TypeVar

import structlog
from ib_async import IB, ExecutionFilter, Order, StartupFetch, Stock
from ib_async.wrapper import RequestError

from brokers._ib_codes import IbCode, classify
from brokers._ib_feed import IbFeed, Timings, prune_sdk
from brokers._ib_link import LinkHooks, LinkKeeper, LinkState
from brokers._ib_map import (
    IbExecution,
    order_fields,
    shares,
)
from brokers._ib_requests import IbRequests
from brokers._ib_track import Ack, IbTracker
from brokers.config import IbConfig
from kernel.broker import BrokerFill, BrokerOrder, EventSink
from kernel.clock import Clock
from kernel.errors import (
    AmbiguousSubmission,
    BrokerAuthError,
    BrokerError,
    BrokerRejected,
    BrokerUnavailable,
)
from kernel.events import (
    AlertRaised,
    BrokerStatus,
    BrokerStatusChanged,
    OrderEvent,
    OrderIntent,
)
from kernel.model import AccountSnapshot, BrokerPosition, MarketClock

__all__ = ["IbBroker", "Timings"]

log = structlog.get_logger("brokers.ib")
T = TypeVar("T")


class IbBroker:
    """The ``Broker`` for Interactive Brokers (paper or live, chosen by the port).

    Args:
        cfg: Gateway address, client id, account, timeouts and backoff.
        clock: the injected clock (event timestamps, snapshots).
        sink: receives every domain event, on the event loop's thread.
        loop: the loop to run on (default: the running loop at ``__aenter__``).
    """

    name = "ib"

    def __init__(self, cfg: IbConfig, *, clock: Clock, sink: EventSink,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._cfg = cfg
        self._clock = clock
        self._sink = sink
        self._loop = loop
        self.timings = Timings()
        self._tracker = IbTracker(self._report, now=clock.now, mono=time.monotonic,
                                  on_ack=self._on_ack, commission_wait=cfg.commission_wait_secs,
                                  finished_kept=cfg.finished_orders_kept)
        self._feed = IbFeed(self._tracker, self.timings, on_next_valid_id=self._on_next_valid_id)
        self._req = IbRequests(cfg, ib=self._ib_, feed=self._feed, tracker=self._tracker,
                               clock=clock, request_error=RequestError,
                               execution_filter=ExecutionFilter)
        self._link = LinkKeeper(cfg, self._tracker, LinkHooks(
            connect=self._connect, probe=self._probe, cut=self._cut,
            executions=self._req.executions, prune=lambda: prune_sdk(self._ib_().wrapper),
            status=self._set_status, commission_missing=self._commission_missing))
        self._ib: IB | None = None
        self._status = BrokerStatus.DISCONNECTED
        self._closing = False
        self._acks: dict[str, asyncio.Future[Ack | None]] = {}
        self._refusal: asyncio.Future[None] | None = None
        self._next_id: asyncio.Future[None] | None = None
        self._reported = asyncio.Event()  # set on every order event reported

    def __repr__(self) -> str:
        c = self._cfg
        return (f"IbBroker(host={c.host!r}, port={c.port}, client_id={c.client_id}, "
                f"status={self._status!r})")

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = self._loop or asyncio.get_running_loop()
        # ib_async's wrapper logs every TWS message code (a routine cancel as an ERROR)
        # and whole trades; the adapter logs each as a structured ``ib.*`` event instead.
        logging.getLogger("ib_async.wrapper").setLevel(logging.CRITICAL)
        self._ib = self._make_ib()
        self._closing = False  # entered again after a failed start (the daemon retries)
        try:
            await self._connect()
            await self._link.__aenter__()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        # Connected; the reconciler's start-up pass says when the books are confirmed.
        self._set_status(BrokerStatus.CONNECTED, f"{self._cfg.host}:{self._cfg.port}")
        log.info("ib.started", host=self._cfg.host, port=self._cfg.port,
                 client_id=self._cfg.client_id, account=self._feed.account,
                 adopted_open_orders=len(self._tracker.open_cids()))
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._settle_before_close()
        self._closing = True
        await self._link.__aexit__(None, None, None)
        self._resolve_acks(None)
        if self._ib is not None:
            self._ib.disconnect()
        self._link.state = LinkState.DISCONNECTED
        if self._status is not BrokerStatus.DISCONNECTED:
            self._set_status(BrokerStatus.DISCONNECTED, "closed")

    async def _settle_before_close(self) -> None:
        """An acknowledged market order fills within moments at IB: wait a little for
        those fills (and commissions owed) so they are booked in this session, not only
        by the next start's reconciliation (a replay ends right after its last order)."""
        deadline = time.monotonic() + self._cfg.close_grace_secs
        while self._link.ready and self._tracker.imminent():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._reported.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reported.wait(), left)
        if self._link.ready and self._tracker.imminent():
            log.warning("ib.closing_with_reports_due", open_orders=len(self._tracker.open_cids()))

    def _make_ib(self) -> IB:
        ib = IB()
        ib.RaiseRequestErrors = True  # a failed request raises RequestError: mapped below
        self._feed.install(ib.wrapper)
        ib.errorEvent += self._on_error
        ib.disconnectedEvent += self._on_disconnected
        ib.client.apiError += self._on_api_error
        ib.updateEvent += self._link.touch
        return ib

    def _ib_(self) -> IB:
        if self._ib is None:
            raise BrokerUnavailable("IB broker is not started (use async with)")
        return self._ib

    def _client(self) -> Any:
        """ib_async's socket client (its request methods are untyped)."""
        return self._ib_().client

    def _loop_(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "enter the broker first (async with)"
        return self._loop

    # -- connection ----------------------------------------------------------------------

    async def _connect(self) -> None:
        """Connect, handshake and synchronize; raise a ``BrokerError`` if that fails."""
        ib, cfg = self._ib_(), self._cfg
        self._link.state = LinkState.CONNECTING
        self._refusal = self._loop_().create_future()
        self._tracker.new_connection(cfg.client_id)
        try:
            await self._session(ib)
            self._feed.account = self._pick_account(ib.managedAccounts())
            self._link.state = LinkState.SYNCING
            await self._sync()
        except (OSError, TimeoutError, ConnectionError) as exc:
            self._link.state = LinkState.DISCONNECTED
            raise BrokerUnavailable(f"IB at {cfg.host}:{cfg.port} (client id "
                                    f"{cfg.client_id}): {exc!r}") from exc
        except BaseException:
            self._link.state = LinkState.DISCONNECTED
            if ib.isConnected():
                ib.disconnect()
            raise
        finally:
            if self._refusal.done():
                self._refusal.exception()  # retrieved: a refusal that lost the race is moot
            self._refusal = None
        self._link.state, self._link.servers_up = LinkState.READY, True
        self._link.touch()

    async def _session(self, ib: IB) -> None:
        """ib_async's connect (handshake, positions, account updates), raced against a
        refusal: on 326 TWS closes the socket, and ib_async would wait out its timeout."""
        cfg, refusal = self._cfg, self._refusal
        assert refusal is not None
        connect = asyncio.ensure_future(ib.connectAsync(
            cfg.host, cfg.port, cfg.client_id, timeout=cfg.connect_timeout_secs,
            account=cfg.account or "", raiseSyncErrors=True,
            fetchFields=StartupFetch.POSITIONS | StartupFetch.ACCOUNT_UPDATES))
        done, _ = await asyncio.wait({connect, refusal}, timeout=cfg.connect_timeout_secs * 2,
                                     return_when=asyncio.FIRST_COMPLETED)
        if connect in done:
            connect.result()
            return
        connect.cancel()
        with contextlib.suppress(BaseException):
            await connect
        if refusal in done:
            refusal.result()  # raises the refusal
        raise BrokerUnavailable(f"IB at {cfg.host}:{cfg.port}: no session within "
                                f"{cfg.connect_timeout_secs * 2}s")

    def _pick_account(self, managed: list[str]) -> str:
        if self._cfg.account:
            if self._cfg.account not in managed:
                raise BrokerAuthError(f"IB account {self._cfg.account!r} is not managed by "
                                      f"this login (it manages {', '.join(managed)})")
            return self._cfg.account
        if len(managed) != 1:
            raise BrokerAuthError(f"IB login manages several accounts ({', '.join(managed)}): "
                                  "set broker.ib.account")
        return managed[0]

    async def _sync(self) -> None:
        """After connecting: every open order (all clients), the completed orders, then
        the executions since the last known fill. The order and execution callbacks
        report what changed for tracked orders; this client id's open orders not yet
        tracked are adopted (TWS reports another client id's orders to that one only)."""
        for trade in await self._req.keyed(self._ib_().reqAllOpenOrdersAsync, "open orders"):
            view = self._feed.trade_view(trade)
            if view is not None and view.order_ref and view.client_id == self._cfg.client_id:
                self._tracker.adopt(view, shares(trade.orderStatus.filled))
        await self._catch_up()

    async def _catch_up(self) -> None:
        await self._req.completed_views()
        last = self._feed.last_fill_ts
        await self._req.executions(last - timedelta(minutes=1) if last else None)

    async def _probe(self) -> None:
        await self._req.request(self._ib_().reqCurrentTimeAsync, "heartbeat")

    def _cut(self) -> None:
        ib = self._ib_()
        transport = ib.client.conn.transport
        ib.disconnect()  # emits disconnectedEvent: the connection task reconnects
        if transport is not None:
            transport.abort()  # a hung peer would keep a graceful close waiting

    def _commission_missing(self, ex: IbExecution) -> None:
        self._sink(AlertRaised(name="ib.commission_missing", severity="warning",
                               ts=self._clock.now(),
                               detail={"execution_id": ex.exec_id,
                                       "client_order_id": ex.client_order_id}))

    # -- SDK events (on the loop) ----------------------------------------------------------

    def _on_next_valid_id(self, order_id: int) -> None:
        self._client().updateReqId(order_id)
        if self._next_id is not None and not self._next_id.done():
            self._next_id.set_result(None)

    def _on_error(self, req_id: int, code: int, message: str, _contract: Any) -> None:
        kind = classify(code)
        if kind is IbCode.CLIENT_ID_IN_USE:
            self._refuse(BrokerAuthError(
                f"IB client id {self._cfg.client_id} is already in use at {self._cfg.host}:"
                f"{self._cfg.port} (error 326): another session holds it; not fighting it. "
                "Stop that session or set broker.ib.client_id", code=code))
        elif kind is IbCode.LINK_LOST:
            log.warning("ib.link_lost", code=code, message=message)
            self._link.servers_lost(code)
        elif kind is IbCode.LINK_RESTORED:
            log.info("ib.link_restored", code=code, message=message)
            self._link.servers_restored(self._catch_up)
        elif req_id > 0 and self._tracker.on_error(req_id, code, message):
            pass  # about one of our orders: the tracker reported it
        elif kind is IbCode.INFO:
            log.debug("ib.notice", code=code, message=message)
        else:
            log.warning("ib.error", req_id=req_id, code=code, message=message)

    def _on_api_error(self, message: str) -> None:
        self._refuse(BrokerUnavailable(f"IB at {self._cfg.host}:{self._cfg.port}: {message}"))

    def _refuse(self, exc: BrokerError) -> None:
        if self._refusal is not None and not self._refusal.done():
            self._refusal.set_exception(exc)

    def _on_disconnected(self) -> None:
        if self._closing:
            return
        self._resolve_acks(None)
        log.warning("ib.disconnected", host=self._cfg.host, port=self._cfg.port,
                    state=str(self._link.state))
        self._link.lost()

    def _on_ack(self, cid: str, ack: Ack) -> None:
        fut = self._acks.get(cid)
        if fut is not None and not fut.done():
            fut.set_result(ack)

    def _resolve_acks(self, ack: Ack | None) -> None:
        for fut in self._acks.values():
            if not fut.done():
                fut.set_result(ack)

    def _report(self, event: OrderEvent) -> None:
        log.debug("ib.event", domain_event=type(event).__name__,
                  client_order_id=event.client_order_id)
        self._sink(event)
        self._reported.set()

    def _set_status(self, status: BrokerStatus, detail: str) -> None:
        self._status = status
        self._sink(BrokerStatusChanged(self.name, status, self._clock.now(), detail))

    # -- Broker: orders ----------------------------------------------------------------

    def _require_ready(self) -> None:
        if not self._link.ready:
            raise BrokerUnavailable(f"IB not connected ({self._link.state}, IB servers "
                                    f"{'up' if self._link.servers_up else 'down'}); not sent")

    async def submit(self, intent: OrderIntent) -> None:
        """Place an order under ``intent.client_order_id`` (its orderRef), exactly once.

        Raises:
            BrokerRejected: the order is malformed (nothing was sent).
            BrokerUnavailable: certainly not placed (not connected, or ids refused).
            AmbiguousSubmission: it may have been placed; resolve with ``get_order``.
        """
        t0 = time.perf_counter_ns()
        cid = intent.client_order_id
        try:
            fields = order_fields(intent, account=self._feed.account,
                                  outside_rth=self._cfg.outside_rth)
        except ValueError as exc:
            raise BrokerRejected(f"IB order {cid}: {exc}") from exc
        if cid in self._tracker.orders:  # sent before, or adopted open at connect
            log.warning("ib.duplicate_submit", client_order_id=cid)
            self._tracker.restate(cid)
            return
        self._require_ready()
        seen = self._tracker.at_broker(cid)
        log.info("ib.submit", client_order_id=cid, symbol=intent.symbol, side=str(intent.side),
                 qty=intent.qty, order_type=str(intent.order_type),
                 tif=str(intent.time_in_force), already_at_broker=seen is not None)
        self._tracker.track_intent(intent)
        if seen is not None:  # placed before (another life of the daemon): adopt it
            self._tracker.apply_snapshot(seen, seen.filled)
            return
        try:
            await self._submit_attempts(cid, Stock(intent.symbol, self._cfg.exchange,
                                                   self._cfg.currency), fields)
        finally:
            self.timings.submit_ns.append(time.perf_counter_ns() - t0)

    async def _submit_attempts(self, cid: str, contract: Any, fields: dict[str, Any]) -> None:
        for attempt in range(1, self._cfg.submit_attempts + 1):
            ack = await self._place(cid, contract, fields)
            if ack in (Ack.ACKED, Ack.REJECTED):
                return  # a rejection went to the sink as OrderRejected, with its code
            if await self._adopt_if_placed(cid):
                return
            if ack is None:
                raise AmbiguousSubmission(f"IB submit {cid}: no answer from TWS within "
                                          f"{self._cfg.ack_timeout_secs}s and not found at "
                                          "the broker; resolve with get_order")
            log.warning("ib.duplicate_order_id", client_order_id=cid, attempt=attempt)
            await self._refresh_next_id()
        self._tracker.forget(cid)
        raise BrokerUnavailable(f"IB submit {cid}: TWS refused {self._cfg.submit_attempts} "
                                "order ids as duplicates (103); the order was not placed")

    async def _place(self, cid: str, contract: Any, fields: dict[str, Any]) -> Ack | None:
        """Place once under a fresh orderId; the first answer, or None (no answer)."""
        ib = self._ib_()
        fut: asyncio.Future[Ack | None] = self._loop_().create_future()
        self._acks[cid] = fut
        try:
            try:
                order_id = ib.client.getReqId()
                self._tracker.sent(cid, order_id)
                t = time.perf_counter_ns()
                ib.placeOrder(contract, Order(orderId=order_id, **fields))
                self.timings.sdk_ns.append(time.perf_counter_ns() - t)
            except ConnectionError as exc:
                self._tracker.forget(cid)
                raise BrokerUnavailable(f"IB submit {cid}: not connected; not sent") from exc
            t = time.perf_counter_ns()
            try:
                return await asyncio.wait_for(asyncio.shield(fut), self._cfg.ack_timeout_secs)
            except TimeoutError:
                return None
            finally:
                self.timings.wait_ns.append(time.perf_counter_ns() - t)
        finally:
            self._acks.pop(cid, None)

    async def _adopt_if_placed(self, cid: str) -> bool:
        """After 103 or silence: look the orderRef up at the broker; adopt what is there."""
        try:
            found = await self._req.lookup(cid)
        except BrokerError as exc:
            raise AmbiguousSubmission(f"IB submit {cid}: outcome unknown and lookup failed: "
                                      f"{exc}") from exc
        if found is None:
            return False
        view, filled, _avg = found
        log.info("ib.adopted", client_order_id=cid, status=view.status, filled=filled)
        self._tracker.apply_snapshot(view, filled)
        return True

    async def _refresh_next_id(self) -> None:
        """Ask TWS for the next valid orderId (after 103 the local counter is stale)."""
        self._next_id = self._loop_().create_future()
        try:
            self._client().reqIds(1)
            await asyncio.wait_for(self._next_id, self._cfg.request_timeout_secs)
        except (TimeoutError, ConnectionError) as exc:
            log.warning("ib.next_id_unknown", error=repr(exc))
        finally:
            self._next_id = None

    async def cancel(self, client_order_id: str) -> None:
        """Ask TWS to cancel; the outcome arrives as ``OrderCanceled`` (or fills).

        Raises:
            BrokerRejected: the order is not open at IB, or another client id placed it
                (only that session may cancel it).
        """
        self._require_ready()
        order_id = self._tracker.order_id_of(client_order_id)
        if order_id is None:
            order_id = await self._order_id_at_broker(client_order_id)
        log.info("ib.cancel", client_order_id=client_order_id, order_id=order_id)
        try:
            self._client().cancelOrder(order_id, "")
        except ConnectionError as exc:
            raise BrokerUnavailable(f"IB cancel {client_order_id}: not connected") from exc

    async def _order_id_at_broker(self, cid: str) -> int:
        for view, filled, _avg in await self._req.open_views():
            if view.client_order_id != cid:
                continue
            if view.client_id != self._cfg.client_id:
                raise BrokerRejected(f"IB cancel {cid}: placed by client id {view.client_id}; "
                                     "only that session can cancel it")
            if cid not in self._tracker.orders:
                self._tracker.adopt(view, filled)
            self._tracker.apply_snapshot(view, filled)
            return view.order_id
        raise BrokerRejected(f"IB cancel {cid}: not open at IB")

    async def cancel_all(self) -> None:
        """Cancel every open order of this client id (not other sessions' orders: IB's
        global cancel would reach orders this daemon does not own)."""
        cids = {v.client_order_id for v, _f, _a in await self._req.open_views()
                if v.client_id == self._cfg.client_id}
        cids.update(self._tracker.open_cids())
        log.info("ib.cancel_all", orders=len(cids))
        for cid in sorted(cids):
            try:
                await self.cancel(cid)
            except BrokerRejected as exc:
                log.info("ib.cancel_skipped", client_order_id=cid, error=str(exc))

    async def replace(self, client_order_id: str, new_client_order_id: str, *,
                      qty: int | None = None, limit_price: Decimal | None = None,
                      stop_price: Decimal | None = None) -> None:
        """Refused: IB modifies an order in place (same permId and orderRef), which a
        replacement under a new client order id cannot express. Cancel and submit."""
        raise BrokerRejected(f"IB replace {client_order_id}: not supported (IB modifies "
                             "orders in place); cancel it and submit a new order")

    # -- Broker: queries ------------------------------------------------------------------

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        return await self._req.get_order(client_order_id)

    async def open_orders(self) -> list[BrokerOrder]:
        return await self._req.open_orders()

    async def fills_since(self, since: datetime) -> list[BrokerFill]:
        """Executions after ``since`` (reqExecutions), one per fill of an order (an IB
        correction re-sends a fill under a new execId with the same ``cumQty``), each
        with its commission (waited for up to ``commission_wait_secs``)."""
        return await self._req.fills_since(since)

    async def positions(self) -> list[BrokerPosition]:
        return await self._req.positions()

    async def account(self) -> AccountSnapshot:
        return await self._req.account()

    async def clock(self) -> MarketClock | None:
        """IB has no market clock API: the exchange calendar decides."""
        return None

