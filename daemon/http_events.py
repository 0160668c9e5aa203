"""``GET /api/events``: a server-sent-events stream of orders, fills, state changes and rejects.

The bus never waits for a browser. Each client has a bounded queue (``sse_queue``): the
bus handler only appends the event *object* to every open client's queue (encoding
happens in the client's own writer task), and when a client's queue is full the event is
dropped for that client and counted. The next thing that client receives is a
``dropped`` event saying how many it missed, so the page knows to re-read the full state
(``/api/status``, ``/api/orders``) instead of trusting its incremental view. With no
client connected the handler returns at once.

Stream format (``event:`` name, ``data:`` one JSON object):

==========  ===============================================================================
event       data
==========  ===============================================================================
order       an order event (``type`` OrderSubmitted, OrderNew, OrderCanceled, ...) and
            ``order``: the order as it stands when sent
fill        ``OrderFilled``: the fill and the order
reject      ``OrderDenied``: symbol, side, qty, ``reason``, ``limit``, ``observed``
state       ``TradingStateChanged``: old, new, who, why
position    ``PositionChanged``
broker      ``BrokerStatusChanged``
alert       ``AlertRaised``
status      every ``status_push_secs``: the overview document (``GET /api/overview``)
dropped     ``{"dropped": n}``: events this client missed because it read too slowly
==========  ===============================================================================

A ``: ping`` comment every 15 s keeps idle connections open through proxies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from daemon.surface import TradingSurface
from engine.codec import encode
from kernel.events import (
    AlertRaised,
    BrokerStatusChanged,
    Event,
    OrderDenied,
    OrderEvent,
    OrderFilled,
    PositionChanged,
    TradingStateChanged,
)

log = structlog.get_logger("daemon.http")

STREAMED: tuple[type[Event], ...] = (OrderEvent, OrderDenied, TradingStateChanged,
                                     PositionChanged, BrokerStatusChanged, AlertRaised)
PING_SECS = 15.0
# A queued item: an event from the bus, or an already encoded (kind, document) push.
_Item = Event | tuple[str, dict[str, Any]]


class TooManyClients(Exception):
    """Every stream slot is taken (``sse_clients``)."""


def kind_of(event: Event) -> str:
    if isinstance(event, OrderFilled):
        return "fill"
    if isinstance(event, OrderEvent):
        return "order"
    if isinstance(event, OrderDenied):
        return "reject"
    if isinstance(event, TradingStateChanged):
        return "state"
    if isinstance(event, PositionChanged):
        return "position"
    if isinstance(event, BrokerStatusChanged):
        return "broker"
    return "alert"


def encode_event(event: Event, surface: TradingSurface) -> dict[str, Any]:
    """The JSON document of one streamed event (decimals as strings)."""
    if isinstance(event, OrderDenied):
        i = event.intent
        return {"type": "OrderDenied", "client_order_id": i.client_order_id,
                "symbol": i.symbol, "side": str(i.side), "qty": i.qty, "reason": event.reason,
                "limit": _text(event.limit), "observed": _text(event.observed),
                "signal_id": i.signal.id if i.signal else None, "ts": surface.now().isoformat()}
    doc: dict[str, Any] = {"type": type(event).__name__, **encode(event)}
    if isinstance(event, OrderEvent):
        doc["order"] = surface.order(event.client_order_id)
    return doc


def _text(v: Any) -> Any:
    return v if v is None or isinstance(v, bool | int | str) else str(v)


class _Client:
    __slots__ = ("dropped", "queue", "wake")

    def __init__(self) -> None:
        self.queue: deque[_Item] = deque()
        self.dropped = 0
        self.wake = asyncio.Event()


class EventHub:
    """Fans bus events out to the open ``/api/events`` streams (see the module doc)."""

    def __init__(self, surface: TradingSurface, *, queue_size: int, max_clients: int,
                 overview: Callable[[], dict[str, Any]], push_secs: float = 1.0) -> None:
        self._surface = surface
        self._size = queue_size
        self._max = max_clients
        self._overview = overview
        self._push_secs = push_secs
        self._clients: set[_Client] = set()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.dropped_total = 0
        self.served_total = 0
        for event_type in STREAMED:
            surface.subscribe(event_type, self.on_event)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._push_status(), name="http.events_status")

    async def close(self) -> None:
        """End every stream (their handlers return) and stop the status pushes."""
        self._closed = True
        for c in self._clients:
            c.wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- the bus side: O(clients) appends, never awaits ----------------------------------

    def on_event(self, event: Event) -> None:
        for c in self._clients:
            self._offer(c, event)

    def _offer(self, c: _Client, item: _Item) -> None:
        if len(c.queue) >= self._size:
            c.dropped += 1
            self.dropped_total += 1
            return
        c.queue.append(item)
        c.wake.set()

    async def _push_status(self) -> None:
        while True:
            await asyncio.sleep(self._push_secs)
            if self._clients:
                doc = self._overview()  # built once for every client
                for c in self._clients:
                    self._offer(c, ("status", doc))

    # -- the client side -----------------------------------------------------------------

    async def stream(self, request: web.Request) -> web.StreamResponse:
        """The ``/api/events`` handler: one stream until the client or the server goes."""
        if self._closed or len(self._clients) >= self._max:
            raise TooManyClients(f"{len(self._clients)} event streams open (max {self._max})")
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        client = _Client()
        self._clients.add(client)
        self.served_total += 1
        log.info("http.events_open", clients=len(self._clients), remote=request.remote)
        try:
            await resp.write(b"retry: 2000\n\n" + _frame("status", self._overview()))
            await self._pump(client, resp)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away, or the server is stopping
        finally:
            self._clients.discard(client)
            log.info("http.events_closed", clients=len(self._clients),
                     dropped=client.dropped)
        return resp

    async def _pump(self, client: _Client, resp: web.StreamResponse) -> None:
        while not self._closed:
            if not client.queue and not client.dropped:
                client.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(client.wake.wait(), PING_SECS)
                if not client.queue and not client.dropped:
                    if not self._closed:
                        await resp.write(b": ping\n\n")
                    continue
            await resp.write(self._take(client))

    def _take(self, client: _Client) -> bytes:
        """Everything queued for ``client`` as one write (a missed-events marker first)."""
        parts = []
        if client.dropped:
            parts.append(_frame("dropped", {"dropped": client.dropped}))
            client.dropped = 0
        while client.queue:
            item = client.queue.popleft()
            if isinstance(item, tuple):
                parts.append(_frame(*item))
            else:
                parts.append(_frame(kind_of(item), encode_event(item, self._surface)))
        return b"".join(parts)

    # -- metrics -------------------------------------------------------------------------

    def metrics(self) -> Iterable[Metric]:
        yield GaugeMetricFamily("tradingd_events_stream_clients", "Open /api/events streams",
                                value=len(self._clients))
        yield CounterMetricFamily("tradingd_events_stream_dropped",
                                  "Events dropped for /api/events clients reading too slowly",
                                  value=self.dropped_total)


def _frame(kind: str, doc: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(doc, default=str) + b"\n\n"


__all__ = ["STREAMED", "EventHub", "TooManyClients", "encode_event", "kind_of"]
