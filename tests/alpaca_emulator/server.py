"""Loopback Alpaca emulator: REST v2, the JSON trade stream, the msgpack data stream.

One aiohttp app on one port serves what the real alpaca-py clients talk to (see
``/work/shared/reference/alpaca-protocol.md`` §11): ``/v2/...`` REST, ``/stream``
(trade updates), ``/v2/iex|sip|test`` (market data) and ``/v2/stocks/bars`` (history).
Faults are armed through the public methods of ``Emulator`` (call them on the
emulator's loop, or through ``EmulatorThread`` which marshals them) or over HTTP with
``POST /_control/<method>`` and a JSON body of keyword arguments.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import csv
import json
import logging
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack
from aiohttp import WSMsgType, web

from tests.alpaca_emulator.state import EmulatorError, EmuOrder, Exchange, asset_id, dec

if TYPE_CHECKING:
    from tests.alpaca_emulator.session import SessionMarket

log = logging.getLogger("alpaca_emulator")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ERROR_BODIES: dict[int, tuple[str, str]] = {
    # Some deliberately not JSON: the SDK's APIError.code/.message then raise.
    429: ('{"code":42910000,"message":"rate limit exceeded"}', "application/json"),
    500: ("internal server error", "text/plain"),
    502: ("<html><body>502 Bad Gateway</body></html>", "text/html"),
    503: ('{"message":"service unavailable"}', "application/json"),
    504: ("<html><body>504 Gateway Time-out</body></html>", "text/html"),
}
DATA_FEEDS = ("iex", "sip", "test")


@dataclass(slots=True)
class Fault:
    """One armed REST fault. ``path`` matches exactly, or as a prefix when it ends in ``*``."""

    count: int
    mode: str  # "status" | "drop" | "delay"
    status: int = 500
    method: str | None = None
    path: str | None = None
    after_effect: bool = False
    delay: float = 0.0

    def matches(self, request: web.Request) -> bool:
        if self.count <= 0:
            return False
        if self.method and self.method.upper() != request.method:
            return False
        if self.path is None:
            return True
        if self.path.endswith("*"):
            return request.path.startswith(self.path[:-1])
        return request.path == self.path


@dataclass(slots=True)
class EventFault:
    kind: str  # "drop" | "duplicate"
    count: int
    event: str | None = None


class _Client:
    """One websocket connection with its own writer task (sends never block the emulator)."""

    def __init__(self, ws: web.WebSocketResponse, kind: str) -> None:
        self.ws = ws
        self.kind = kind
        self.listening = False
        self.subs: set[str] = set()
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.writer = asyncio.create_task(self._write(), name=f"emu.{kind}.writer")

    async def _write(self) -> None:
        while (frame := await self.queue.get()) is not None:
            try:
                await self.ws.send_bytes(frame)
            except (ConnectionError, RuntimeError):
                return

    def send(self, frame: bytes) -> None:
        self.queue.put_nowait(frame)

    async def kill(self) -> None:
        """Abrupt close, like a dropped TCP connection or a 1011 from the server."""
        self.queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await self.ws.close(code=1011, message=b"emulator drop")


class Emulator:
    """The emulated Alpaca service. Construct, ``await start()``, ``await stop()``."""

    def __init__(
        self,
        *,
        key_id: str = "EMUKEY",
        secret_key: str = "EMUSECRET",
        host: str = "127.0.0.1",
        port: int = 0,
        bars_csv: str | Path | None = None,
        cash: Decimal = Decimal(100_000),
        single_stream_connection: bool = True,
        calendar: str | None = None,
        session_bars: str | Path | None = None,
    ) -> None:
        self.key_id = key_id
        self.secret_key = secret_key
        self.host = host
        self.port = port
        self.exchange = Exchange(on_event=self._on_trade_event, cash=cash, initial_cash=cash)
        self.single_stream_connection = single_stream_connection
        self.ack_delay = 0.0
        self.fill_delay = 0.0
        self.cancel_delay = 0.0
        self.rate_limit_per_min: int | None = None
        self.requests: list[dict[str, Any]] = []
        self.fired: Counter[str] = Counter()  # faults that actually hit, by kind
        self.events: list[dict[str, Any]] = []  # every trade update the exchange produced
        self.delivered: list[dict[str, Any]] = []  # what was actually put on the wire
        self.stream_connections = 0
        self._faults: list[Fault] = []
        self._event_faults: list[EventFault] = []
        self._reorder_n = 0
        self._reorder_buf: list[bytes] = []
        self._drop_after: int | None = None
        self._muted = False
        self._refuse_until = 0.0
        self._trade_clients: set[_Client] = set()
        self._data_clients: set[_Client] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._working: set[str] = set()
        self._hits: deque[float] = deque()
        self.bars: dict[datetime, list[dict[str, Any]]] = {}
        self._bar_cursor = 0
        self._page_cap = 10_000  # tests lower it to force paging with the SDK's limit
        if bars_csv:
            self.load_bars(bars_csv)
        self._runner: web.AppRunner | None = None
        # The market on an exchange calendar and this process's clock (tests/.../session.py).
        self.session: SessionMarket | None = None
        if calendar is not None:
            from tests.alpaca_emulator.session import SessionMarket

            self.session = SessionMarket(self, calendar=calendar, session_bars=session_bars)

    # -- lifecycle -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._mw_log, self._mw_faults, self._mw_auth])
        self._routes(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        log.info("alpaca emulator listening on %s", self.base_url)
        if self.session is not None:
            self.session.start()

    async def stop(self) -> None:
        if self.session is not None:
            await self.session.stop()
        for c in list(self._trade_clients | self._data_clients):
            await c.kill()
        for t in list(self._tasks):
            t.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/v2/account", self._account)
        r.add_get("/v2/clock", self._clock)
        r.add_get("/v2/calendar", self._calendar)
        r.add_get("/v2/assets", self._assets)
        r.add_get("/v2/assets/{symbol}", self._asset)
        r.add_post("/v2/orders", self._post_order)
        r.add_get("/v2/orders", self._list_orders)
        r.add_delete("/v2/orders", self._cancel_all)
        r.add_get("/v2/orders:by_client_order_id", self._order_by_cid)
        r.add_get("/v2/orders/{order_id}", self._get_order)
        r.add_patch("/v2/orders/{order_id}", self._replace)
        r.add_delete("/v2/orders/{order_id}", self._cancel)
        r.add_get("/v2/positions", self._positions)
        r.add_delete("/v2/positions", self._close_all)
        r.add_get("/v2/positions/{symbol}", self._position)
        r.add_delete("/v2/positions/{symbol}", self._close_position)
        r.add_get("/v2/account/activities/FILL", self._fill_activities)
        r.add_get("/v2/stocks/bars", self._historical_bars)
        r.add_get("/stream", self._trade_stream)
        for feed in DATA_FEEDS:
            r.add_get(f"/v2/{feed}", self._data_stream)
        r.add_get("/_control/snapshot", self._ctl_snapshot)
        r.add_get("/_control/faults", self._ctl_faults)
        r.add_post("/_control/{name}", self._ctl)

    # -- middlewares -----------------------------------------------------------------

    @web.middleware
    async def _mw_log(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/_control"):
            return await handler(request)
        entry: dict[str, Any] = {"method": request.method, "path": request.path,
                                 "query": dict(request.query), "status": 0,
                                 "t": time.monotonic()}
        if request.method in ("POST", "PATCH") and request.can_read_body:
            with contextlib.suppress(ValueError):
                body = await request.json()
                entry["cid"] = body.get("client_order_id") if isinstance(body, dict) else None
        self.requests.append(entry)
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            entry["status"] = exc.status
            raise
        entry["status"] = resp.status
        return resp

    @web.middleware
    async def _mw_faults(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = next((f for f in self._faults if f.matches(request)), None)
        if fault is None or request.path.startswith("/_control"):
            return await handler(request)
        fault.count -= 1
        self.fired[f"http_{fault.mode}" + (f"_{fault.status}" if fault.mode == "status" else "")
                   + ("_after_effect" if fault.after_effect else "")] += 1
        log.info("fault %s %s on %s %s", fault.mode, fault.status, request.method, request.path)
        if fault.mode == "delay" and not fault.after_effect:
            await asyncio.sleep(fault.delay)
            return await handler(request)
        if not fault.after_effect:
            return self._fault_response(request, fault)
        resp = await handler(request)  # the request takes effect...
        if fault.mode == "delay":
            await asyncio.sleep(fault.delay)
            return resp
        return self._fault_response(request, fault)  # ...but the client never learns it

    def _fault_response(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        if fault.mode == "drop":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # aiohttp drops the request quietly
        text, ctype = _ERROR_BODIES.get(fault.status, ('{"message":"error"}', "application/json"))
        return web.Response(status=fault.status, text=text, content_type=ctype)

    @web.middleware
    async def _mw_auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_control") or path == "/stream" or path in {
            f"/v2/{f}" for f in DATA_FEEDS
        }:
            return await handler(request)
        key = request.headers.get("APCA-API-KEY-ID")
        secret = request.headers.get("APCA-API-SECRET-KEY")
        if key != self.key_id or secret != self.secret_key:
            return web.json_response({"message": "unauthorized"}, status=401)
        if self.rate_limit_per_min:
            now = time.monotonic()
            while self._hits and now - self._hits[0] > 60:
                self._hits.popleft()
            if len(self._hits) >= self.rate_limit_per_min:
                text, ctype = _ERROR_BODIES[429]
                return web.Response(status=429, text=text, content_type=ctype)
            self._hits.append(now)
        try:
            return await handler(request)
        except EmulatorError as err:
            return web.json_response(err.body, status=err.status)

    # -- REST: account, clock, calendar, assets -------------------------------------

    async def _account(self, _: web.Request) -> web.Response:
        return web.json_response(self.exchange.account_json())

    async def _clock(self, _: web.Request) -> web.Response:
        if self.session is not None:
            return web.json_response(self.session.clock_json())
        return web.json_response(self.exchange.clock_json())

    async def _calendar(self, request: web.Request) -> web.Response:
        today = datetime.now(UTC).date()
        start = date.fromisoformat(request.query.get("start", today.isoformat())[:10])
        end = date.fromisoformat(request.query.get("end", (today + timedelta(30)).isoformat())[:10])
        if self.session is not None:
            return web.json_response(self.session.calendar_json(start, end))
        days = []
        d = start
        while d <= end:
            if d.weekday() < 5:
                days.append({"date": d.isoformat(), "open": "09:30", "close": "16:00",
                             "session_open": "0400", "session_close": "2000",
                             "settlement_date": (d + timedelta(1)).isoformat()})
            d += timedelta(1)
        return web.json_response(days)

    def _asset_json(self, symbol: str) -> dict[str, Any]:
        return {"id": asset_id(symbol), "class": "us_equity", "exchange": "NASDAQ",
                "symbol": symbol, "name": f"{symbol} Common Stock", "status": "active",
                "tradable": True, "marginable": True, "shortable": True,
                "easy_to_borrow": True, "fractionable": True,
                "maintenance_margin_requirement": 30, "attributes": []}

    def _known_symbols(self) -> set[str]:
        syms = set(self.exchange.prices) | set(self.exchange.positions)
        for rows in self.bars.values():
            syms.update(b["S"] for b in rows)
        return syms

    async def _assets(self, _: web.Request) -> web.Response:
        return web.json_response([self._asset_json(s) for s in sorted(self._known_symbols())])

    async def _asset(self, request: web.Request) -> web.Response:
        sym = request.match_info["symbol"].upper()
        if sym not in self._known_symbols():
            raise EmulatorError(404, 40410000, "asset not found")
        return web.json_response(self._asset_json(sym))

    # -- REST: orders ----------------------------------------------------------------

    async def _post_order(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        order, reject = self.exchange.create_order(body)
        self._spawn(self._work(order, reject))
        return web.json_response(order.to_json())

    async def _list_orders(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status", "open")
        limit = min(int(q.get("limit", 50)), 500)
        symbols = set(q["symbols"].split(",")) if q.get("symbols") else None
        after = _parse_ts(q.get("after"))
        until = _parse_ts(q.get("until"))
        out = []
        for o in self.exchange.orders.values():
            if (status == "open" and not o.open) or (status == "closed" and o.open):
                continue
            if (symbols and o.symbol not in symbols) or (q.get("side") and o.side != q["side"]):
                continue
            if (after and o.created_at <= after) or (until and o.created_at >= until):
                continue
            out.append(o)
        out.sort(key=lambda o: o.created_at, reverse=q.get("direction", "desc") == "desc")
        return web.json_response([o.to_json() for o in out[:limit]])

    async def _order_by_cid(self, request: web.Request) -> web.Response:
        order = self.exchange.by_cid.get(request.query.get("client_order_id", ""))
        if order is None:
            raise EmulatorError(404, 40410000, "order not found")
        return web.json_response(order.to_json())

    def _order(self, request: web.Request) -> EmuOrder:
        oid = request.match_info["order_id"]
        try:
            uuid.UUID(oid)
        except ValueError:
            raise EmulatorError(422, 40010000, "order_id is missing") from None
        order = self.exchange.orders.get(oid)
        if order is None:
            raise EmulatorError(404, 40410000, "order not found")
        return order

    async def _get_order(self, request: web.Request) -> web.Response:
        return web.json_response(self._order(request).to_json())

    async def _cancel(self, request: web.Request) -> web.Response:
        order = self.exchange.cancel(self._order(request).id)
        self._spawn(self._finish_cancel(order))
        return web.Response(status=204)

    async def _cancel_all(self, _: web.Request) -> web.Response:
        out = []
        for o in list(self.exchange.orders.values()):
            if o.open and o.status != "pending_cancel":
                self.exchange.cancel(o.id)
                self._spawn(self._finish_cancel(o))
                out.append({"id": o.id, "status": 200})
        return web.json_response(out, status=207)

    async def _replace(self, request: web.Request) -> web.Response:
        old = self._order(request)
        new = self.exchange.replace(old.id, await self._json(request))
        self._spawn(self._work(new, None))
        return web.json_response(new.to_json())

    # -- REST: positions and activities ---------------------------------------------

    async def _positions(self, _: web.Request) -> web.Response:
        ex = self.exchange
        return web.json_response([ex.position_json(p) for p in ex.positions.values()])

    async def _position(self, request: web.Request) -> web.Response:
        pos = self.exchange.positions.get(request.match_info["symbol"].upper())
        if pos is None:
            raise EmulatorError(404, 40410000, "position does not exist")
        return web.json_response(self.exchange.position_json(pos))

    def _close(self, symbol: str, qty: int | None = None) -> EmuOrder:
        pos = self.exchange.positions.get(symbol)
        if pos is None:
            raise EmulatorError(404, 40410000, "position does not exist")
        q = qty if qty is not None else abs(pos.qty)
        order, _ = self.exchange.create_order({
            "symbol": symbol, "qty": q, "side": "sell" if pos.qty > 0 else "buy",
            "type": "market", "time_in_force": "day"})
        self._spawn(self._work(order, None))
        return order

    async def _close_position(self, request: web.Request) -> web.Response:
        sym = request.match_info["symbol"].upper()
        pos = self.exchange.positions.get(sym)
        qty = None
        if pos is not None and request.query.get("qty"):
            qty = int(dec(request.query["qty"]))
        elif pos is not None and request.query.get("percentage"):
            qty = int(abs(pos.qty) * dec(request.query["percentage"]) / 100)
        return web.json_response(self._close(sym, qty).to_json())

    async def _close_all(self, request: web.Request) -> web.Response:
        if request.query.get("cancel_orders", "").lower() == "true":
            for o in list(self.exchange.orders.values()):
                if o.open and o.status != "pending_cancel":
                    self.exchange.cancel(o.id)
                    self._spawn(self._finish_cancel(o))
        out = [{"symbol": s, "status": 200, "body": self._close(s).to_json()}
               for s in list(self.exchange.positions)]
        return web.json_response(out, status=207)

    async def _fill_activities(self, request: web.Request) -> web.Response:
        q = request.query
        after, until = _parse_ts(q.get("after")), _parse_ts(q.get("until"))
        rows = [e for e in self.exchange.executions
                if (not after or e.ts > after) and (not until or e.ts < until)]
        desc = q.get("direction", "desc") == "desc"
        acts = [e.activity() for e in rows]
        if desc:
            acts.reverse()
        if q.get("page_token"):
            ids = [a["id"] for a in acts]
            token = q["page_token"]
            acts = acts[ids.index(token) + 1:] if token in ids else []
        size = min(int(q.get("page_size", 100)), 100)
        return web.json_response(acts[:size])

    # -- REST: historical bars ------------------------------------------------------

    async def _historical_bars(self, request: web.Request) -> web.Response:
        q = request.query
        if q.get("timeframe", "1Min") not in ("1Min", "1T"):
            raise EmulatorError(422, 42210000, "only 1Min bars are emulated")
        symbols = [s for s in q.get("symbols", "").split(",") if s]
        start, end = _parse_ts(q.get("start")), _parse_ts(q.get("end"))
        limit = max(1, min(int(q.get("limit") or 1000), 10_000, self._page_cap))
        rows = [(b["S"], ts, b) for ts, bs in self.bars.items() for b in bs
                if b["S"] in symbols and (not start or ts >= start) and (not end or ts <= end)]
        rows.sort(key=lambda r: (r[0], r[1]))  # symbol, then time: pages may hold one symbol
        offset = int(base64.b64decode(q["page_token"]).decode()) if q.get("page_token") else 0
        page = rows[offset:offset + limit]
        bars: dict[str, list[dict[str, Any]]] = {}
        for sym, ts, b in page:
            bars.setdefault(sym, []).append({
                "t": ts.strftime("%Y-%m-%dT%H:%M:%SZ"), "o": b["o"], "h": b["h"], "l": b["l"],
                "c": b["c"], "v": b["v"], "n": b["n"], "vw": b["vw"]})
        nxt = offset + limit
        token = base64.b64encode(str(nxt).encode()).decode() if nxt < len(rows) else None
        return web.json_response({"bars": bars, "next_page_token": token,
                                  "symbol": None, "currency": "USD"})

    # -- order processing --------------------------------------------------------------

    async def _work(self, order: EmuOrder, reject: str | None) -> None:
        await asyncio.sleep(self.ack_delay)
        if reject is not None:
            self.exchange.reject(order, reject)
            return
        self.exchange.route(order)
        await self._match(order)

    async def _match(self, order: EmuOrder) -> None:
        if order.id in self._working:
            return
        self._working.add(order.id)
        try:
            for qty in self.exchange.plan_fills(order):
                await asyncio.sleep(self.fill_delay)
                if not order.open or order.status == "pending_cancel":
                    break
                if self.exchange.marketable_price(order) is None or self.exchange.fills_paused:
                    break
                self.exchange.execute(order, qty)
            if self.exchange.marketable_price(order) is not None or order.status != "accepted":
                self.exchange.after_match(order)
        finally:
            self._working.discard(order.id)

    def _rematch(self, symbol: str | None = None) -> None:
        for o in list(self.exchange.orders.values()):
            if o.open and (symbol is None or o.symbol == symbol):
                self._spawn(self._match(o))

    async def _finish_cancel(self, order: EmuOrder) -> None:
        await asyncio.sleep(self.cancel_delay)
        self.exchange.finish_cancel(order)

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise EmulatorError(400, 40010000, "request body format is invalid") from None
        if not isinstance(body, dict):
            raise EmulatorError(422, 40010000, "request body must be an object")
        return body

    # -- trade stream ------------------------------------------------------------------

    async def _trade_stream(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._refuse_until:
            return web.Response(status=503, text="stream unavailable")
        if self.single_stream_connection and any(
            not c.ws.closed for c in self._trade_clients
        ):
            return web.Response(status=429, text="connection limit exceeded")
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        client = _Client(ws, "trade")
        self.stream_connections += 1
        authed = False
        self._trade_clients.add(client)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.PING:
                    if not self._muted:
                        await ws.pong(msg.data)
                    continue
                if msg.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                data = json.loads(msg.data)
                action = data.get("action")
                if action == "authenticate":
                    d = data.get("data") or {}
                    authed = (d.get("key_id"), d.get("secret_key")) == (
                        self.key_id, self.secret_key)
                    status = "authorized" if authed else "unauthorized"
                    client.send(_j({"stream": "authorization",
                                    "data": {"status": status, "action": "authenticate"}}))
                    if not authed:
                        await asyncio.sleep(0.05)
                        break
                elif action == "listen":
                    if not authed:
                        client.send(_j({"stream": "authorization", "data": {
                            "status": "unauthorized", "action": "listen"}}))
                        continue
                    streams = (data.get("data") or {}).get("streams") or []
                    client.listening = "trade_updates" in streams
                    client.send(_j({"stream": "listening", "data": {"streams": streams}}))
        finally:
            self._trade_clients.discard(client)
            await client.kill()
        return ws

    def _on_trade_event(self, event: str, payload: dict[str, Any]) -> None:
        self.events.append(payload)
        frame = _j({"stream": "trade_updates", "data": payload})
        for f in self._event_faults:
            if f.count > 0 and (f.event is None or f.event == event):
                f.count -= 1
                self.fired[f"event_{f.kind}"] += 1
                if f.kind == "drop":
                    log.info("fault: dropped %s event", event)
                    return
                self._deliver(frame, payload)  # duplicate: same execution_id, twice
                break
        if self._reorder_n > 0:
            self._reorder_buf.append(frame)
            if len(self._reorder_buf) >= self._reorder_n:
                self._reorder_n = 0
                self.fired["event_reorder"] += 1
                held, self._reorder_buf = self._reorder_buf, []
                for fr in reversed(held):
                    self._deliver(fr, json.loads(fr)["data"])
            return
        self._deliver(frame, payload)

    def _deliver(self, frame: bytes, payload: dict[str, Any]) -> None:
        if self._muted:
            return
        listeners = [c for c in self._trade_clients if c.listening and not c.ws.closed]
        for c in listeners:
            c.send(frame)
        if listeners:
            self.delivered.append(payload)
        if self._drop_after is not None and listeners:
            self._drop_after -= 1
            if self._drop_after <= 0:
                self._drop_after = None
                self._spawn(self._drop_after_flush(listeners))

    async def _drop_after_flush(self, clients: list[_Client]) -> None:
        # Let the writer put the K-th event on the wire before cutting the line.
        for c in clients:
            while not c.queue.empty():  # noqa: ASYNC110 (a queue has no "drained" event)
                await asyncio.sleep(0.001)
        self.drop_stream()

    # -- data stream ---------------------------------------------------------------------

    async def _data_stream(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        client = _Client(ws, "data")
        client.send(msgpack.packb([{"T": "success", "msg": "connected"}]))
        authed = False
        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                data = msgpack.unpackb(msg.data)
                action = data.get("action")
                if action == "auth":
                    if authed:
                        client.send(_err(403, "already authenticated"))
                        continue
                    authed = (data.get("key"), data.get("secret")) == (
                        self.key_id, self.secret_key)
                    if not authed:
                        client.send(_err(402, "auth failed"))
                        await asyncio.sleep(0.05)
                        break
                    client.send(msgpack.packb([{"T": "success", "msg": "authenticated"}]))
                    self._data_clients.add(client)
                elif not authed:
                    client.send(_err(401, "not authenticated"))
                elif action in ("subscribe", "unsubscribe"):
                    syms = set(data.get("bars") or [])
                    sub = action == "subscribe"
                    client.subs = client.subs | syms if sub else client.subs - syms
                    client.send(msgpack.packb([{
                        "T": "subscription", "trades": [], "quotes": [],
                        "bars": sorted(client.subs), "updatedBars": [], "dailyBars": [],
                        "statuses": [], "lulds": [], "corrections": [], "cancelErrors": []}]))
        finally:
            self._data_clients.discard(client)
            await client.kill()
        return ws

    @property
    def data_subscribers(self) -> int:
        """Data-stream clients subscribed to at least one symbol's bars."""
        return sum(1 for c in self._data_clients if c.subs)

    def rebase_bars(self, start: datetime) -> None:
        """Shift every loaded bar so the first minute starts at ``start`` (a replayed day
        presented as if live: bar times near the wall clock, spacing kept)."""
        if not self.bars:
            return
        shift = start - next(iter(self.bars))
        self.bars = {ts + shift: rows for ts, rows in self.bars.items()}

    def publish_bars(self, ts: datetime, bars: list[dict[str, Any]]) -> None:
        """Send one minute's bars (dicts with S,o,h,l,c,v[,n,vw]) and trade at their close."""
        stamp = msgpack.Timestamp.from_datetime(ts)
        for b in bars:
            self.exchange.prices[b["S"]] = dec(b["c"])
        for c in list(self._data_clients):
            msgs = [{"T": "b", "S": b["S"], "o": b["o"], "h": b["h"], "l": b["l"],
                     "c": b["c"], "v": b["v"], "t": stamp, "n": b.get("n", 0),
                     "vw": b.get("vw", b["c"])}
                    for b in bars if b["S"] in c.subs or "*" in c.subs]
            if msgs:
                c.send(msgpack.packb(msgs))
        for sym in {b["S"] for b in bars}:
            self._rematch(sym)

    def load_bars(self, path: str | Path) -> None:
        """CSV columns: symbol,timestamp,open,high,low,close,volume[,trade_count,vwap]."""
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                ts = _parse_ts(row["timestamp"])
                assert ts is not None
                c = float(row["close"])
                self.bars.setdefault(ts, []).append({
                    "S": row["symbol"], "o": float(row["open"]), "h": float(row["high"]),
                    "l": float(row["low"]), "c": c, "v": int(float(row["volume"])),
                    "n": int(row.get("trade_count") or 0), "vw": float(row.get("vwap") or c)})
        self.bars = dict(sorted(self.bars.items()))

    # -- control API (call on the emulator loop) -----------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, method: str | None = None,
                  path: str | None = None, after_effect: bool = False,
                  mode: str = "status") -> None:
        """Answer the next ``n`` matching requests with ``status`` (or drop them:
        ``mode="drop"``); with ``after_effect`` the request is processed first."""
        self._faults.append(Fault(n, mode, status, method, path, after_effect))

    def delay_next(self, n: int = 1, seconds: float = 1.0, method: str | None = None,
                   path: str | None = None, after_effect: bool = False) -> None:
        """Delay (hang) the next ``n`` matching requests; the handler still runs."""
        self._faults.append(Fault(n, "delay", 0, method, path, after_effect, seconds))

    def clear_faults(self) -> None:
        self._faults.clear()
        self._event_faults.clear()
        self._reorder_n, self._drop_after, self._muted = 0, None, False

    def drop_stream(self) -> None:
        """Close every trade-stream connection now (no replay on reconnect)."""
        if self._trade_clients:
            self.fired["stream_drop"] += 1
        for c in list(self._trade_clients):
            self._trade_clients.discard(c)
            self._spawn(c.kill())

    def refuse_stream_for(self, seconds: float) -> None:
        """Answer trade-stream handshakes with 503 for a while (a longer outage)."""
        self._refuse_until = time.monotonic() + seconds

    def drop_stream_after(self, k: int) -> None:
        self._drop_after = k

    def mute_stream(self, on: bool = True) -> None:
        """A silent socket: events are swallowed and pings go unanswered."""
        self._muted = on

    def drop_events(self, n: int = 1, event: str | None = None) -> None:
        self._event_faults.append(EventFault("drop", n, event))

    def duplicate_events(self, n: int = 1, event: str | None = None) -> None:
        self._event_faults.append(EventFault("duplicate", n, event))

    def reorder_events(self, n: int = 2) -> None:
        """Hold the next ``n`` events and send them in reverse order."""
        self._reorder_n, self._reorder_buf = n, []

    def refuse_next_orders(self, n: int = 1, status: int = 422, code: int = 40010001,
                           message: str = "qty must be a whole number of shares") -> None:
        """Refuse the next ``n`` order POSTs synchronously (nothing is booked). The default
        is the validation refusal real Alpaca sends with the *same code* as a duplicate
        client_order_id; only the message differs."""
        self.exchange.refuse_next.extend([(status, code, message)] * n)

    def roll_day(self) -> None:
        """Start a new trading day: the account's ``last_equity`` becomes today's equity."""
        self.exchange.roll_day()

    def reject_next_orders(self, n: int = 1, reason: str = "rejected by emulator") -> None:
        """Accept the next ``n`` orders, then stream ``rejected`` for them."""
        self.exchange.reject_next.extend([reason] * n)

    def set_clock(self, is_open: bool) -> None:
        if self.session is not None:  # forced until clear_clock_override
            self.session.override = is_open
        self.set_market_open(is_open)

    def set_market_open(self, is_open: bool) -> None:
        """Open (route and match working orders) or close (expire day orders) the market."""
        self.exchange.set_open(is_open)
        if is_open:
            self._rematch()

    def clear_clock_override(self) -> None:
        """Hand the market back to the calendar (``--calendar``) after ``set_clock``."""
        if self.session is not None:
            self.session.override = None

    def set_account(self, status: str | None = None, trading_blocked: bool | None = None,
                    last_equity: str | None = None) -> None:
        """The account's ``status`` (ACTIVE, INACTIVE, ...), ``trading_blocked`` and
        ``last_equity`` (None: the initial cash until the next close rolls it)."""
        ex = self.exchange
        ex.status = ex.status if status is None else status
        ex.trading_blocked = ex.trading_blocked if trading_blocked is None else trading_blocked
        ex.last_equity = dec(last_equity) if last_equity is not None else ex.last_equity

    def set_price(self, symbol: str, price: str | float | Decimal) -> None:
        self.exchange.prices[symbol] = dec(price)
        self._rematch(symbol)

    def set_fill_parts(self, n: int) -> None:
        self.exchange.fill_parts = n

    def set_liquidity(self, symbol: str, qty: int | None) -> None:
        if qty is None:
            self.exchange.liquidity.pop(symbol, None)
        else:
            self.exchange.liquidity[symbol] = qty

    def pause_fills(self, on: bool = True) -> None:
        self.exchange.fills_paused = on
        if not on:
            self._rematch()

    def set_delays(self, ack: float | None = None, fill: float | None = None,
                   cancel: float | None = None) -> None:
        self.ack_delay = self.ack_delay if ack is None else ack
        self.fill_delay = self.fill_delay if fill is None else fill
        self.cancel_delay = self.cancel_delay if cancel is None else cancel

    def set_rate_limit(self, per_min: int | None) -> None:
        self.rate_limit_per_min = per_min
        self._hits.clear()

    def emit_fill(self, client_order_id: str, qty: int,
                  price: str | float | Decimal | None = None) -> None:
        """Execute ``qty`` of an open order now (at ``price`` or the current price)."""
        order = self.exchange.by_cid[client_order_id]
        if order.status == "accepted":
            self.exchange.route(order)
        self.exchange.execute(order, qty, dec(price) if price is not None else None)

    def replay_again(self) -> None:
        """Start the loaded bars over, as the minutes after the last one (time only
        moves forward: a live feed never sends a minute twice)."""
        if not self.bars:
            return
        keys = list(self.bars)
        shift = keys[-1] - keys[0] + timedelta(minutes=1)
        self.bars = {ts + shift: rows for ts, rows in self.bars.items()}
        self._bar_cursor = 0

    def advance(self) -> datetime | None:
        """Publish the next minute of the loaded bars; returns its timestamp."""
        keys = list(self.bars)
        if self._bar_cursor >= len(keys):
            return None
        ts = keys[self._bar_cursor]
        self._bar_cursor += 1
        self.publish_bars(ts, self.bars[ts])
        return ts

    def snapshot(self) -> dict[str, Any]:
        ex = self.exchange
        return {
            "orders": [o.to_json() for o in ex.orders.values()],
            "positions": {s: {"qty": p.qty, "avg_entry_price": str(p.avg_entry)}
                          for s, p in ex.positions.items()},
            "account": ex.account_json(),
            "executions": [{**e.activity(), "client_order_id": e.client_order_id,
                            "execution_id": e.execution_id} for e in ex.executions],
            "requests": len(self.requests),
            "order_posts": [{"cid": r.get("cid"), "status": r["status"]} for r in self.requests
                            if (r["method"], r["path"]) == ("POST", "/v2/orders")],
            "stream_connections": self.stream_connections,
            **self.faults(),
        }

    def faults(self) -> dict[str, Any]:
        """Faults armed but not yet fired, and those fired by kind."""
        ex = self.exchange
        return {
            "faults_pending": sum(f.count for f in self._faults)
            + sum(f.count for f in self._event_faults) + len(ex.refuse_next)
            + len(ex.reject_next) + self._reorder_n,
            "faults_fired": dict(self.fired) | {
                "order_refused": ex.refused, "order_rejected_async": ex.rejected_async},
        }

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r["method"] == method and r["path"] == path)

    CONTROLS = frozenset({
        "fail_next", "delay_next", "clear_faults", "drop_stream", "drop_stream_after",
        "mute_stream", "refuse_stream_for", "drop_events", "duplicate_events", "reorder_events",
        "reject_next_orders", "refuse_next_orders", "roll_day", "set_clock", "set_price",
        "set_fill_parts", "set_liquidity", "pause_fills", "set_delays", "set_rate_limit",
        "emit_fill", "advance",
        # the calendar-driven market (tests/alpaca_emulator/session.py)
        "clear_clock_override", "set_account",
    })

    async def _ctl(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.CONTROLS:
            return web.json_response({"message": f"unknown control {name}"}, status=404)
        kwargs = await request.json() if request.can_read_body else {}
        result = getattr(self, name)(**kwargs)
        return web.json_response({"ok": True, "result": str(result) if result else None})

    async def _ctl_snapshot(self, _: web.Request) -> web.Response:
        return web.json_response(self.snapshot())

    async def _ctl_faults(self, _: web.Request) -> web.Response:
        return web.json_response(self.faults())


def _j(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode()


def _err(code: int, msg: str) -> bytes:
    return msgpack.packb([{"T": "error", "code": code, "msg": msg}])


def _parse_ts(text: str | None) -> datetime | None:
    if not text:
        return None
    text = text.replace(" ", "+")  # a '+' that arrived unencoded in a query string
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if "." in text:  # nanoseconds: keep microseconds
        head, _, tail = text.partition(".")
        frac, sign, tz = tail, "", ""
        for s in ("+", "-"):
            if s in tail:
                frac, sign, tz = tail.partition(s)
        text = f"{head}.{frac[:6]}{sign}{tz}"
    if len(text) == 10:
        text += "T00:00:00+00:00"
    ts = datetime.fromisoformat(text)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)

