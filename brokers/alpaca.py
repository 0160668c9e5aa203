"""The Alpaca broker adapter (alpaca-py 0.44); the minute-bar feed is ``_alpaca_feed``.

Only this module and its ``_alpaca_*`` siblings import ``alpaca``. The SDK is synchronous
(``requests``) and runs its websockets on private event loops, so: REST calls go through
``asyncio.to_thread``, stream callbacks hop onto our loop with ``call_soon_threadsafe``,
and every domain event is reported through the sink on the loop's thread.

What the adapter adds to the SDK (see alpaca-protocol.md §2, §7, §8, §12):

* exactly-once submission: the SDK's blind retry is off (``_retry = 0``), every request
  has a timeout, and an ambiguous outcome is resolved by ``client_order_id`` lookup;
  a re-POST only ever reuses the same id. Only a 422 whose *message* says the
  ``client_order_id`` is taken means "an earlier try landed, look it up": Alpaca sends
  the same code (40010001) for plain validation errors, and those, like every other
  4xx, are a definite refusal (``BrokerRejected`` with the broker's code and message);
* bounded retries with exponential backoff and jitter for idempotent calls, and a
  client-side budget of ``rate_limit_per_min`` requests;
* a watchdog on the trade stream (drops, silence, swallowed auth failures).

It reports what it sees and decides nothing about the books: the stream becomes domain
events (``_alpaca_track``), each fill identified by the order's cumulative quantity;
after a reconnect it publishes ``BrokerStatusChanged(RECOVERING)`` and when the stream
shows fills it never delivered a ``ReconcileRequested``. The reconciler
(``engine.reconcile``) then catches up over ``get_order`` / ``open_orders`` /
``fills_since`` (the contract of ``kernel.broker``).

Events published through the sink: ``OrderAccepted``, ``OrderNew``, ``OrderFilled``,
``OrderCanceled``, ``OrderExpired``, ``OrderReplaced``, ``OrderRejected``,
``OrderPendingCancel``, ``OrderPendingReplace``, ``OrderCancelRejected``,
``OrderDoneForDay``, ``ReconcileRequested`` and ``BrokerStatusChanged`` (connected,
disconnected, recovering).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar

import requests
import structlog
from alpaca.common.exceptions import APIError
from alpaca.trading.client import TradingClient
from alpaca.trading.enums import QueryOrderStatus
from alpaca.trading.requests import (
    GetCalendarRequest,
    GetOrdersRequest,
    ReplaceOrderRequest,
)
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from brokers._alpaca_feed import AlpacaBarFeed
from brokers._alpaca_http import (
    RateBudget,
    Scrubber,
    ScrubFilter,
    Timings,
    is_duplicate_cid,
    map_http_error,
    map_transport_error,
    ws_url,
)
from brokers._alpaca_map import (
    TradingSession,
    account_snapshot,
    broker_fill,
    broker_order,
    broker_position,
    market_clock,
    trading_session,
)
from brokers._alpaca_sdk import (
    HookedTradingStream,
    StreamHooks,
    harden,
    order_request,
    sdk_keys,
    thread_stop,
)
from brokers._alpaca_track import OrderTracker
from brokers.config import AlpacaConfig
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
    BrokerStatus,
    BrokerStatusChanged,
    Event,
    OrderIntent,
    ReconcileRequested,
)
from kernel.model import AccountSnapshot, BrokerPosition, MarketClock

__all__ = ["AlpacaBarFeed", "AlpacaBroker", "TradingSession"]

log = structlog.get_logger("brokers.alpaca")
T = TypeVar("T")


class AlpacaBroker:
    """The ``Broker`` for Alpaca (paper or live, chosen by ``cfg.base_url``).

    Args:
        cfg: endpoints, keys (``SecretStr``), timeouts and retry budget.
        clock: the injected clock (event timestamps, account snapshots).
        sink: receives every domain event, always on the event loop's thread.
        loop: the loop to report on (default: the running loop at ``__aenter__``).
    """

    name = "alpaca"

    def __init__(
        self, cfg: AlpacaConfig, *, clock: Clock, sink: EventSink,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._sink = sink
        self._loop = loop
        self._budget = RateBudget(cfg.rate_limit_per_min)
        self._tracker = OrderTracker(self._report, clock.now)
        self._client: TradingClient | None = None
        self._stream: HookedTradingStream | None = None
        self._stream_thread: threading.Thread | None = None
        self._scrub = Scrubber()
        self._log_filter: ScrubFilter | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connected: asyncio.Future[None] | None = None
        self._epoch = 0
        self._status = BrokerStatus.DISCONNECTED
        self.timings = Timings()

    def __repr__(self) -> str:
        return f"AlpacaBroker(base_url={self._cfg.base_url!r}, status={self._status!r})"

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._loop = self._loop or asyncio.get_running_loop()
        key, secret = sdk_keys(self._cfg)
        self._scrub = Scrubber(key, secret)
        self._log_filter = ScrubFilter(self._scrub)
        self._log_filter.install()
        try:
            await self._start(key, secret)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self, key: str, secret: str) -> None:
        self._client = TradingClient(
            key, secret, paper=True, raw_data=True, url_override=self._cfg.base_url.rstrip("/"))
        harden(self._client, self._cfg.request_timeout_secs)
        await self.account()  # 401/403 here -> BrokerAuthError, once, no retry storm
        for o in await self._io("open_orders", self._raw_open_orders):
            self._tracker.adopt(o)
        self._connected = self._loop_().create_future()
        self._start_stream(key, secret)
        try:
            await asyncio.wait_for(asyncio.shield(self._connected),
                                   self._cfg.request_timeout_secs)
        except TimeoutError:
            raise BrokerUnavailable(
                f"trade stream at {self._stream_url()} did not connect within "
                f"{self._cfg.request_timeout_secs}s") from None
        self._set_status(BrokerStatus.CONNECTED, "trade stream authorized")
        self._spawn(self._watchdog(), "alpaca.stream_watchdog")
        log.info("alpaca.started", base_url=self._cfg.base_url,
                 adopted_open_orders=len(self._tracker.open_cids()))

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        stream, thread = self._stream, self._stream_thread
        if stream is not None:
            stream.stopping = True

            def fallback() -> None:
                stream._should_run = False
                stream._stop_stream_queue.put_nowait({"should_stop": True})

            await asyncio.to_thread(thread_stop, lambda: stream._loop, stream.shutdown,
                                    fallback, thread)
        if self._client is not None:
            self._client._session.close()
        if self._log_filter is not None:
            self._log_filter.uninstall()
        if self._status is not BrokerStatus.DISCONNECTED:
            self._set_status(BrokerStatus.DISCONNECTED, "closed")
        self._stream = self._stream_thread = self._client = None

    def _loop_(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "enter the broker first (async with)"
        return self._loop

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = self._loop_().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("alpaca.task_failed", task=task.get_name(),
                      error=self._scrub(repr(task.exception())))

    # -- trade stream --------------------------------------------------------------------

    def _stream_url(self) -> str:
        return ws_url(self._cfg.base_url, "/stream")

    def _start_stream(self, key: str, secret: str) -> None:
        loop = self._loop_()

        def hop(fn: Callable[..., None]) -> Callable[..., None]:
            def call(*a: Any) -> None:
                loop.call_soon_threadsafe(fn, *a)

            return call

        hooks = StreamHooks(connected=hop(self._on_stream_connected),
                             auth_failed=hop(self._on_stream_auth_failed),
                             dropped=hop(self._on_stream_dropped))
        silence = self._cfg.stream_silence_secs
        stream = HookedTradingStream(
            key, secret, paper=True, raw_data=True, url_override=self._stream_url(),
            websocket_params={"ping_interval": silence, "ping_timeout": silence,
                              "max_queue": 1024, "close_timeout": 1},
            hooks=hooks,
        )
        stream._reconnect_min_backoff = self._cfg.reconnect_backoff_secs
        stream._reconnect_max_backoff = max(self._cfg.reconnect_backoff_secs, 30.0)

        async def on_update(msg: dict[str, Any]) -> None:
            t = time.perf_counter_ns()
            loop.call_soon_threadsafe(self._on_trade_update, msg.get("data") or {}, t)

        stream.subscribe_trade_updates(on_update)
        self._stream = stream
        self._stream_thread = threading.Thread(
            target=stream.run, name="alpaca.trade_stream", daemon=True)
        self._stream_thread.start()

    def _on_trade_update(self, data: dict[str, Any], sent_ns: int) -> None:
        t0 = time.perf_counter_ns()
        self.timings.hop_ns.append(t0 - sent_ns)
        try:
            self._tracker.on_trade_update(data)
        except Exception as exc:  # a malformed update must not kill the stream hop
            log.error("alpaca.update_failed", error=self._scrub(repr(exc)),
                      trade_event=str(data.get("event")))
        self.timings.event_ns.append(time.perf_counter_ns() - t0)

    def _on_stream_connected(self) -> None:
        self._epoch += 1
        if self._connected is not None and not self._connected.done():
            self._connected.set_result(None)
            return
        log.info("alpaca.stream_reconnected", epoch=self._epoch)
        # Alpaca does not replay what the stream missed: the reconciler catches up.
        self._set_status(BrokerStatus.RECOVERING, "trade stream reconnected")

    def _on_stream_auth_failed(self) -> None:
        log.error("alpaca.stream_auth_failed", url=self._stream_url())
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(BrokerAuthError(
                "Alpaca trade stream refused the API keys; check APCA_API_KEY_ID / "
                "APCA_API_SECRET_KEY"))
        elif self._status is not BrokerStatus.DISCONNECTED:
            self._set_status(BrokerStatus.DISCONNECTED, "trade stream authentication failed")

    def _on_stream_dropped(self, reason: str) -> None:
        log.warning("alpaca.stream_dropped", reason=reason)
        if self._status is not BrokerStatus.DISCONNECTED:
            self._set_status(BrokerStatus.DISCONNECTED, f"trade stream dropped: {reason}")

    def _set_status(self, status: BrokerStatus, detail: str) -> None:
        self._status = status
        self._sink(BrokerStatusChanged(self.name, status, self._clock.now(), detail))

    async def _watchdog(self) -> None:
        """Probe a silent stream with a ping; cut it when the pong does not come back
        (the SDK then reconnects and we catch up)."""
        silence = self._cfg.stream_silence_secs
        while True:
            await asyncio.sleep(min(1.0, silence / 4))
            stream = self._stream
            if (stream is None or stream._loop is None
                    or self._status is BrokerStatus.DISCONNECTED):
                continue
            if time.monotonic() - stream.last_frame < silence:
                continue
            fut = asyncio.run_coroutine_threadsafe(stream.probe(silence / 2), stream._loop)
            alive = await asyncio.wrap_future(fut)
            if not alive:
                log.warning("alpaca.stream_silent", silent_secs=silence)
                self._on_stream_dropped("silent")
                await asyncio.wrap_future(
                    asyncio.run_coroutine_threadsafe(stream.cut(), stream._loop))

    def _report(self, event: Event) -> None:
        log.debug("alpaca.event", domain_event=type(event).__name__,
                  client_order_id=getattr(event, "client_order_id", None))
        self._sink(event)

    def _request_reconcile(self, cid: str, why: str) -> None:
        self._report(ReconcileRequested(who=self.name, why=why, ts=self._clock.now(),
                                        client_order_id=cid))

    # -- REST plumbing -------------------------------------------------------------------

    def _c(self) -> TradingClient:
        if self._client is None:
            raise BrokerUnavailable("Alpaca broker is not started (use async with)")
        return self._client

    async def _io(self, what: str, fn: Callable[[], T], *, effectful: bool = False) -> T:
        """One SDK call in a worker thread, within the rate budget; errors mapped."""
        await self._budget.acquire()
        io_ns = 0

        def timed() -> T:
            nonlocal io_ns
            t = time.perf_counter_ns()
            try:
                return fn()
            finally:
                io_ns = time.perf_counter_ns() - t

        t0 = time.perf_counter_ns()
        try:
            return await asyncio.to_thread(timed)
        except APIError as exc:
            raise map_http_error(exc.status_code or 0, str(exc), what=what,
                                 effectful=effectful, scrub=self._scrub) from exc
        except requests.RequestException as exc:
            raise map_transport_error(exc, what=what, effectful=effectful,
                                      scrub=self._scrub) from exc
        except ValueError as exc:  # SDK-side validation (pydantic): nothing was sent
            raise BrokerRejected(f"{what}: {self._scrub(str(exc))[:300]}") from exc
        finally:
            self.timings.call_ns.append(time.perf_counter_ns() - t0)
            self.timings.io_ns.append(io_ns)

    async def _retry(self, what: str, fn: Callable[[], T]) -> T:
        """Idempotent calls: retried on transient errors with exponential backoff and
        jitter; auth and rejections are raised at once."""
        cfg = self._cfg
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(cfg.retry_attempts),
            wait=wait_exponential_jitter(multiplier=cfg.retry_backoff_secs,
                                         jitter=cfg.retry_backoff_secs,
                                         max=cfg.retry_backoff_max_secs),
            retry=retry_if_exception_type(BrokerUnavailable),
            reraise=True,
        ):
            with attempt:
                return await self._io(what, fn)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raw_open_orders(self) -> list[dict[str, Any]]:
        req = GetOrdersRequest(status=QueryOrderStatus.OPEN, limit=500, nested=False)
        return self._c().get_orders(req)  # type: ignore[return-value]

    async def _lookup(self, cid: str) -> dict[str, Any] | None:
        """The order by client id in any status; None only on a definitive 404."""
        try:
            o = await self._retry("get_order", lambda: self._c().get_order_by_client_id(cid))
        except BrokerRejected as exc:
            if exc.status == 404:
                return None
            raise
        return o  # type: ignore[return-value]

    async def _cid_of(self, broker_id: str) -> str | None:
        cid = self._tracker.cid_by_broker_id.get(broker_id)
        if cid is None:
            try:
                o: Any = await self._retry(
                    "get_order_by_id", lambda: self._c().get_order_by_id(broker_id))
            except BrokerRejected:
                return None
            cid = str(o["client_order_id"])
            self._tracker.cid_by_broker_id.put(broker_id, cid)
        return cid

    async def _activities(self, after: datetime | None) -> list[dict[str, Any]]:
        """All FILL activities after ``after`` (oldest first), following pages."""
        out: list[dict[str, Any]] = []
        params: dict[str, Any] = {"direction": "asc", "page_size": 100}
        if after is not None:
            params["after"] = after.astimezone(UTC).isoformat()
        while True:
            query = dict(params)
            page: Any = await self._retry(
                "fill_activities",
                functools.partial(self._c().get, "/account/activities/FILL", query))
            out.extend(page or [])
            if not page or len(page) < params["page_size"]:
                return out
            params["page_token"] = page[-1]["id"]

    # -- Broker: orders ----------------------------------------------------------------

    async def submit(self, intent: OrderIntent) -> None:
        """Send an order under ``intent.client_order_id``, exactly once.

        A refusal is definite only while no earlier attempt may still take effect: once
        one was ambiguous (a timeout, a 5xx after sending), a later refusal or failure
        says nothing about that earlier request, which can land later, so the outcome
        is ambiguous.

        Raises:
            BrokerRejected: refused (validation, buying power); the order never existed.
            AmbiguousSubmission: still unresolved after bounded lookups; it stays in flight.
            BrokerUnavailable: certainly not placed (rate limited, connection refused).
        """
        cid = intent.client_order_id
        req = order_request(intent)
        self._tracker.track_intent(intent)
        log.info("alpaca.submit", client_order_id=cid, symbol=intent.symbol,
                 side=str(intent.side), qty=intent.qty, order_type=str(intent.order_type),
                 tif=str(intent.time_in_force))
        last: BrokerError | None = None
        in_flight = False  # an earlier attempt may still take effect
        for attempt in range(1, self._cfg.submit_attempts + 1):
            try:
                o: Any = await self._io("submit_order", lambda: self._c().submit_order(req),
                                        effectful=True)
                self._adopt(o)
                return
            except BrokerRejected as exc:
                if not is_duplicate_cid(exc):
                    self._refused(cid, exc, in_flight)
                log.info("alpaca.duplicate_cid", client_order_id=cid)  # an earlier try landed
                last = exc
            except AmbiguousSubmission as exc:
                log.warning("alpaca.ambiguous", client_order_id=cid, attempt=attempt,
                            error=str(exc))
                last, in_flight = exc, True
            except BrokerAuthError as exc:
                self._refused(cid, exc, in_flight)
            except BrokerUnavailable as exc:  # nothing was placed: same id again is safe
                log.warning("alpaca.submit_unavailable", client_order_id=cid, error=str(exc))
                last = exc
                await asyncio.sleep(self._backoff(attempt))
                continue
            if await self._resolve(cid):
                return
            await asyncio.sleep(self._backoff(attempt))
        if isinstance(last, BrokerUnavailable) and not in_flight:
            self._tracker.forget(cid)
            raise last
        raise AmbiguousSubmission(
            f"submit {cid}: outcome unknown after {self._cfg.submit_attempts} attempts "
            f"({last}); resolve with get_order") from last

    def _refused(self, cid: str, exc: BrokerError, in_flight: bool) -> NoReturn:
        """This POST was refused: the order's refusal, unless an earlier attempt of the
        same id may still land."""
        if in_flight:
            log.warning("alpaca.refused_after_ambiguity", client_order_id=cid,
                        status=exc.status, code=exc.code, reason=str(exc))
            raise AmbiguousSubmission(
                f"submit {cid}: refused ({exc}) after an earlier attempt whose outcome is "
                "unknown; resolve with get_order", status=exc.status, code=exc.code) from exc
        self._tracker.forget(cid)
        log.info("alpaca.rejected", client_order_id=cid, status=exc.status, code=exc.code,
                 reason=str(exc))
        raise exc

    def _backoff(self, attempt: int) -> float:
        base = min(self._cfg.retry_backoff_max_secs,
                   self._cfg.retry_backoff_secs * 2 ** (attempt - 1))
        return float(base / 2 + random.uniform(0, base / 2))

    async def _resolve(self, cid: str) -> bool:
        """After an ambiguous submit: True if the order exists (adopted); False on a
        definitive 404 (so re-POSTing the same id is safe)."""
        try:
            o = await self._lookup(cid)
        except BrokerError as exc:
            raise AmbiguousSubmission(
                f"submit {cid}: outcome unknown and lookup failed: {exc}") from exc
        if o is None:
            log.info("alpaca.not_found_after_ambiguity", client_order_id=cid)
            return False
        log.info("alpaca.adopted", client_order_id=cid, status=o.get("status"))
        self._adopt(o)
        return True

    def _adopt(self, o: dict[str, Any]) -> None:
        self._tracker.apply_snapshot(o)

    async def _broker_id(self, cid: str) -> str:
        order = self._tracker.orders.get(cid)
        if order is not None and order.broker_order_id:
            return order.broker_order_id
        o = await self._lookup(cid)
        if o is None:
            raise BrokerRejected(f"order {cid} not found", status=404)
        return str(o["id"])

    async def cancel(self, client_order_id: str) -> None:
        """Request a cancel; the outcome arrives as ``OrderCanceled`` (or fills).

        A cancel that loses the race with the order's end (422: already filled or
        canceled) is not an error: the order is reconciled and reported as it ended.
        """
        bid = await self._broker_id(client_order_id)
        log.info("alpaca.cancel", client_order_id=client_order_id)
        try:
            await self._retry("cancel_order", lambda: self._c().cancel_order_by_id(bid))
        except BrokerRejected as exc:
            if exc.status != 422:
                raise
            log.info("alpaca.cancel_too_late", client_order_id=client_order_id, error=str(exc))
            self._request_reconcile(client_order_id, "cancel refused: order already ended")

    async def cancel_all(self) -> None:
        log.info("alpaca.cancel_all")
        res: Any = await self._retry("cancel_orders", lambda: self._c().cancel_orders())
        failed = [r for r in res or [] if int(r.get("status", 200)) >= 400]
        if failed:
            log.warning("alpaca.cancel_all_partial", failed=len(failed))

    async def replace(
        self, client_order_id: str, new_client_order_id: str, *,
        qty: int | None = None, limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> None:
        """Replace an open order; the new order carries ``new_client_order_id`` and the
        old one ends with ``OrderReplaced``."""
        if client_order_id not in self._tracker.orders:
            o = await self._lookup(client_order_id)
            if o is None:
                raise BrokerRejected(f"order {client_order_id} not found", status=404)
            self._tracker.adopt(o)
        bid = await self._broker_id(client_order_id)
        self._tracker.track_replacement(client_order_id, new_client_order_id, qty,
                                        limit_price, stop_price)
        req = ReplaceOrderRequest(
            qty=qty, client_order_id=new_client_order_id,
            limit_price=float(limit_price) if limit_price is not None else None,
            stop_price=float(stop_price) if stop_price is not None else None)
        log.info("alpaca.replace", client_order_id=client_order_id,
                 new_client_order_id=new_client_order_id)
        try:
            new: Any = await self._io("replace_order",
                                    lambda: self._c().replace_order_by_id(bid, req),
                                    effectful=True)
        except AmbiguousSubmission:
            if await self._lookup(new_client_order_id) is None:
                raise
            return
        except BrokerError:
            self._tracker.forget(new_client_order_id)
            raise
        self._tracker.cid_by_broker_id.put(str(new["id"]), new_client_order_id)

    # -- Broker: queries ------------------------------------------------------------------

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        o = await self._lookup(client_order_id)
        return broker_order(o) if o is not None else None

    async def open_orders(self) -> list[BrokerOrder]:
        return [broker_order(o) for o in await self._retry("open_orders", self._raw_open_orders)]

    async def fills_since(self, since: datetime) -> list[BrokerFill]:
        out = []
        for a in await self._activities(since):
            cid = await self._cid_of(str(a["order_id"]))
            if cid is not None:
                out.append(broker_fill(a, cid))
        return out

    async def positions(self) -> list[BrokerPosition]:
        ps: Any = await self._retry("positions", lambda: self._c().get_all_positions())
        return [broker_position(p) for p in ps]

    async def account(self) -> AccountSnapshot:
        """Cash, equity, buying power, positions, and ``last_equity`` (equity at the
        previous close: the base of today's P&L), the account status and whether
        trading is blocked."""
        a: Any = await self._retry("account", lambda: self._c().get_account())
        positions = await self.positions()
        return account_snapshot(a, positions, self._clock.now())

    async def clock(self) -> MarketClock | None:
        c: Any = await self._retry("clock", lambda: self._c().get_clock())
        return market_clock(c)

    async def calendar(self, start: date, end: date) -> list[TradingSession]:
        """Trading sessions between ``start`` and ``end`` (inclusive), times in UTC."""
        req = GetCalendarRequest(start=start, end=end)
        rows: Any = await self._retry("calendar", lambda: self._c().get_calendar(req))
        return [trading_session(r) for r in rows]

    # -- read-only use (tradingd preflight) -------------------------------------------------

    @contextlib.asynccontextmanager
    async def rest_only(self) -> AsyncIterator[Self]:
        """The REST queries (account, clock, calendar, positions, open orders, assets)
        without the trade stream: Alpaca allows one trade-stream connection per account,
        and a read-only tool must not take it from a running daemon. Nothing is adopted,
        nothing submitted.

        Raises:
            BrokerAuthError: keys missing (the first query raises it for refused keys).
        """
        key, secret = sdk_keys(self._cfg)
        self._scrub = Scrubber(key, secret)
        self._client = TradingClient(
            key, secret, paper=True, raw_data=True, url_override=self._cfg.base_url.rstrip("/"))
        harden(self._client, self._cfg.request_timeout_secs)
        try:
            yield self
        finally:
            self._client._session.close()
            self._client = None

    async def untradable(self, symbols: list[str]) -> dict[str, str]:
        """Of ``symbols``, those the broker would refuse, with why (``not listed``,
        ``status inactive``, ``not tradable``)."""
        out: dict[str, str] = {}
        for sym in symbols:
            try:
                a: Any = await self._retry("asset", functools.partial(self._c().get_asset, sym))
            except BrokerRejected as exc:
                if exc.status != 404:
                    raise
                out[sym] = "not listed"
                continue
            if str(a.get("status", "")).lower() != "active":
                out[sym] = f"status {a.get('status')}"
            elif not a.get("tradable", False):
                out[sym] = "not tradable"
        return out
