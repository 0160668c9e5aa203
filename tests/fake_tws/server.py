"""A protocol-level fake TWS / IB Gateway: an asyncio server that speaks the TWS socket
protocol (server version 178) to the real ib_async client. Test support, not product.

It keeps its own books (``tests.fake_tws.books``), acknowledges, matches and fills
market, limit and stop orders on the prices a test sets (optionally in several
executions), and answers the requests ib_async and the adapter make: open orders (own
client and all), completed orders, executions with their commission reports,
positions, account updates, account summary, ids and the current time.

Faults are public methods (call them on the fake's loop, through ``FakeTwsThread``, or
over the control channel ``POST /_control/<method>``): rejections (201 or any code),
103 for the next placements, warnings, dropped and duplicated outbound messages by
kind, dropped connections, a hung Gateway, acknowledgements held back, TWS losing and
regaining IB's servers (1100/1102), a client id held by another session (326), and a
restart that rolls ``nextValidId`` back so order ids are issued again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from tests.fake_tws import wire
from tests.fake_tws.books import ZERO, Books, FakeOrder, ib_time
from tests.fake_tws.control import Controls
from tests.fake_tws.wire import Placed

log = logging.getLogger("fake_tws")

_NOTICES = ((2104, "Market data farm connection is OK:usfarm"),
            (2106, "HMDS data farm connection is OK:ushmds"),
            (2158, "Sec-def data farm connection is OK:secdefnj"))
_ACCOUNT_TAGS = ("NetLiquidation", "TotalCashValue", "CashBalance", "BuyingPower",
                 "AvailableFunds", "EquityWithLoanValue", "GrossPositionValue")


class Session:
    """One API connection (after ``startApi`` it belongs to a client id)."""

    def __init__(self, tws: FakeTws, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> None:
        self.tws = tws
        self.reader = reader
        self.writer = writer
        self.client_id: int | None = None
        self.account_updates: str | None = None  # the subscribed account
        self.positions = False
        self.backlog: list[bytes] = []

    @property
    def cid(self) -> int:
        return self.client_id or 0

    def write(self, data: bytes) -> None:
        if not self.tws.running.is_set():
            self.backlog.append(data)  # a hung Gateway says nothing until it recovers
        elif not self.writer.is_closing():
            self.writer.write(data)

    def flush(self) -> None:
        pending, self.backlog = self.backlog, []
        for data in pending:
            self.write(data)

    def abort(self) -> None:
        transport = self.writer.transport
        if transport is not None:
            transport.abort()

    async def read_message(self) -> list[str]:
        size = struct.unpack(">I", await self.reader.readexactly(4))[0]
        return wire.split(await self.reader.readexactly(size))


class FakeTws(Controls):
    """The fake Gateway. ``async with FakeTws(...) as tws`` serves on ``tws.port``.

    Args:
        accounts: the managed accounts (the first is the default).
        cash: starting cash of each account.
        prices: starting prices by symbol.
        fill_parts: executions per marketable order.
        fill_delay: seconds between those executions (0: all at once).
        first_order_id: the ``nextValidId`` of a client id with no orders yet.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 accounts: tuple[str, ...] = ("DU1234567",), cash: Decimal = Decimal(100_000),
                 prices: dict[str, Decimal] | None = None, fill_parts: int = 1,
                 fill_delay: float = 0.0, first_order_id: int = 1,
                 commission_per_share: Decimal = Decimal("0.0035"),
                 min_commission: Decimal = Decimal("0.35")) -> None:
        self.host, self._port = host, port
        self.books = Books(accounts=accounts, cash=dict.fromkeys(accounts, cash),
                           commission_per_share=commission_per_share,
                           min_commission=min_commission, exec_prefix=secrets.token_hex(4))
        self.books.prices.update(prices or {})
        self.fill_parts, self.fill_delay, self.auto_fill = fill_parts, fill_delay, True
        self.first_order_id = first_order_id
        self.running = asyncio.Event()
        self.running.set()
        self.sessions: dict[int, Session] = {}
        self._all: set[Session] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self._used: dict[int, int] = {}  # highest orderId used per client id
        self._by_id: dict[tuple[int, int], FakeOrder] = {}
        self._drop: dict[str, int] = {}
        self._dup: dict[str, int] = {}
        self._rejects: deque[tuple[int, str]] = deque()
        self._dup_ids = 0
        self._warn: deque[tuple[int, str]] = deque()
        self._hold = False
        self.market_open = True
        self._occupied: set[int] = set()
        self.requests: list[int] = []  # message ids received, for tests

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "start the fake first"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> FakeTws:
        self._server = await asyncio.start_server(self._serve, self.host, self._port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.running.set()
        self.drop_connections()
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeTws:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = Session(self, reader, writer)
        self._all.add(session)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await self._handshake(session)
            while True:
                fields = await session.read_message()
                await self.running.wait()
                self._handle(session, fields)
        except (asyncio.IncompleteReadError, ConnectionError, _Closed):
            pass
        finally:
            self._all.discard(session)
            if session.client_id is not None and self.sessions.get(session.client_id) is session:
                del self.sessions[session.client_id]
            with contextlib.suppress(Exception):
                writer.close()

    async def _handshake(self, s: Session) -> None:
        if await s.reader.readexactly(4) != b"API\0":
            raise _Closed
        size = struct.unpack(">I", await s.reader.readexactly(4))[0]
        hello = (await s.reader.readexactly(size)).decode()
        await self.running.wait()
        version = wire.negotiate(hello)
        if version is None:
            raise _Closed
        now = datetime.now(UTC)
        s.write(wire.frame([version, f"{now:%Y%m%d %H:%M:%S} UTC"]))
        fields = await s.read_message()
        await self.running.wait()
        self.requests.append(int(fields[0]))
        if fields[0] != "71":
            raise _Closed
        client_id = int(fields[2])
        if client_id in self.sessions or client_id in self._occupied:
            s.write(wire.frame(wire.error(-1, 326, "Unable to connect as the client id is "
                                          "already in use. Retry with a unique client id.")))
            await s.writer.drain()
            raise _Closed
        s.client_id = client_id
        self.sessions[client_id] = s
        self._send(s, "managedAccounts", [15, 1, ",".join(self.books.accounts)])
        self._send(s, "nextValidId", [9, 1, self._next_id(client_id)])
        for code, text in _NOTICES:
            self._send(s, "error", wire.error(-1, code, text))

    def _send(self, s: Session, kind: str, fields: list[Any]) -> None:
        if self._drop.get(kind, 0) > 0:
            self._drop[kind] -= 1
            log.info("fake_tws: dropped %s", kind)
            return
        data = wire.frame(fields)
        s.write(data)
        if self._dup.get(kind, 0) > 0:
            self._dup[kind] -= 1
            s.write(data)

    def _to_client(self, client_id: int, kind: str, fields: list[Any]) -> None:
        s = self.sessions.get(client_id)
        if s is not None:
            self._send(s, kind, fields)

    def _next_id(self, client_id: int) -> int:
        return max(self.first_order_id, self._used.get(client_id, 0) + 1)

    # -- requests ------------------------------------------------------------------------

    def _handle(self, s: Session, f: list[str]) -> None:
        msg = int(f[0])
        self.requests.append(msg)
        handler = self._handlers().get(msg)
        if handler is None:
            log.info("fake_tws: ignored message %s", msg)
            return
        handler(s, f)

    def _handlers(self) -> dict[int, Callable[[Session, list[str]], None]]:
        return {3: self._place, 4: self._cancel_request, 5: self._open_orders,
                16: self._open_orders, 6: self._account_updates, 7: self._executions,
                8: lambda s, f: self._send(s, "nextValidId", [9, 1, self._next_id(s.cid)]),
                17: lambda s, f: self._send(s, "managedAccounts",
                                            [15, 1, ",".join(self.books.accounts)]),
                49: lambda s, f: self._send(s, "currentTime",
                                            [49, 1, int(datetime.now(UTC).timestamp())]),
                58: self._global_cancel,
                61: self._positions, 64: lambda s, f: setattr(s, "positions", False),
                62: self._account_summary, 76: self._account_multi,
                99: self._completed_orders}

    def _place(self, s: Session, f: list[str]) -> None:
        p = wire.parse_place(f)
        cid = s.cid
        live = self._by_id.get((cid, p.order_id))
        if live is not None and live.is_open:
            self._modify(live, p)
            return
        if self._dup_ids > 0 or p.order_id <= self._used.get(cid, 0):
            self._dup_ids = max(0, self._dup_ids - 1)
            self._send(s, "error", wire.error(p.order_id, 103, "Duplicate order id"))
            return
        self._used[cid] = max(self._used.get(cid, 0), p.order_id)
        order = self._book_order(cid, p)
        refusal = self._refusal(order)
        if refusal is not None:
            self._reject(order, *refusal)
            return
        if self._hold:
            order.held = True
            return
        if not self.market_open:
            order.status = "PreSubmitted"  # accepted, waits for the open
        self._ack(order)
        self._match(order)

    def _book_order(self, cid: int, p: Placed) -> FakeOrder:
        order = FakeOrder(
            perm_id=self.books.next_perm_id(), client_id=cid, order_id=p.order_id,
            account=p.account or self.books.accounts[0], symbol=p.symbol,
            con_id=self.books.con_id(p.symbol), action=p.action, qty=p.qty,
            order_type=p.order_type, lmt_price=p.lmt_price, aux_price=p.aux_price,
            tif=p.tif or "DAY", order_ref=p.order_ref, outside_rth=p.outside_rth)
        self.books.orders[order.perm_id] = order
        self._by_id[(cid, p.order_id)] = order
        return order

    def _refusal(self, o: FakeOrder) -> tuple[int, str] | None:
        if self._rejects:
            return self._rejects.popleft()
        if o.account not in self.books.accounts:
            return 201, f"account {o.account} is not managed"
        if o.qty <= 0 or o.action not in ("BUY", "SELL"):
            return 201, "invalid quantity or action"
        if o.order_type not in ("MKT", "LMT", "STP", "STP LMT"):
            return 201, f"order type {o.order_type} not supported"
        price = o.lmt_price or self.books.prices.get(o.symbol)
        if o.action == "BUY" and price is not None:
            need = o.qty * price + self.books.commission(o.qty)
            if need > self.books.cash[o.account]:
                return 201, (f"YOUR ORDER IS NOT ACCEPTED: cash {self.books.cash[o.account]} "
                             f"does not cover {need}")
        return None

    def _reject(self, o: FakeOrder, code: int, reason: str) -> None:
        o.status, o.completed_status = "Inactive", f"Rejected: {reason}"
        o.completed_time = ib_time(datetime.now(UTC))
        self._to_client(o.client_id, "error",
                        wire.error(o.order_id, code, f"Order rejected - reason:{reason}"))
        self._to_client(o.client_id, "orderStatus", self._status(o))

    def _ack(self, o: FakeOrder) -> None:
        self._to_client(o.client_id, "openOrder", wire.open_order(o.fields()))
        self._to_client(o.client_id, "orderStatus", self._status(o))
        if self._warn:
            code, message = self._warn.popleft()
            self._to_client(o.client_id, "error", wire.error(o.order_id, code, message))

    def _status(self, o: FakeOrder) -> list[Any]:
        last = self.books.executions[-1].price if o.filled and self.books.executions else ZERO
        return wire.order_status(o.order_id, o.status, o.filled, o.remaining, o.avg_price,
                                 o.perm_id, last, o.client_id)

    def _modify(self, o: FakeOrder, p: Placed) -> None:
        o.qty, o.lmt_price, o.aux_price = p.qty, p.lmt_price, p.aux_price
        self._ack(o)
        self._match(o)

    def _cancel_request(self, s: Session, f: list[str]) -> None:
        o = self._by_id.get((s.cid, int(f[2])))
        if o is None or not o.is_open:
            state = o.status if o is not None else "unknown"
            self._send(s, "error", wire.error(int(f[2]), 10148, f"OrderId {f[2]} that needs to "
                                              f"be cancelled cannot be cancelled, state: {state}."))
            return
        self._cancel(o, "")

    def _cancel(self, o: FakeOrder, reason: str) -> None:
        o.status, o.held = "Cancelled", False
        o.completed_status, o.completed_time = "Cancelled", ib_time(datetime.now(UTC))
        self._to_client(o.client_id, "orderStatus", self._status(o))
        self._to_client(o.client_id, "error",
                        wire.error(o.order_id, 202, f"Order Canceled - reason:{reason}"))

    def _global_cancel(self, s: Session, f: list[str]) -> None:
        for o in list(self.books.orders.values()):
            if o.is_open:
                self._cancel(o, "global cancel")

    def _open_orders(self, s: Session, f: list[str]) -> None:
        every = f[0] == "16"
        for o in list(self.books.orders.values()):
            if o.is_open and (every or o.client_id == s.client_id):
                self._send(s, "openOrder", wire.open_order(o.fields()))
                self._send(s, "orderStatus", self._status(o))
        self._send(s, "openOrderEnd", [53, 1])

    def _completed_orders(self, s: Session, f: list[str]) -> None:
        for o in list(self.books.orders.values()):
            if not o.is_open:
                self._send(s, "completedOrder", wire.completed_order(o.fields()))
        self._send(s, "completedOrdersEnd", [102])

    def _executions(self, s: Session, f: list[str]) -> None:
        req_id, client, account, since = int(f[2]), int(f[3] or 0), f[4], _parse_time(f[5])
        symbol, side = f[6], f[9]
        for e in list(self.books.executions):
            o = e.order
            if ((client and o.client_id != client) or (account and o.account != account)
                    or (since is not None and e.time < since) or (symbol and o.symbol != symbol)
                    or (side and o.action != side.upper())):
                continue
            self._send(s, "execDetails", wire.exec_details(req_id, e.fields()))
            self._send(s, "commissionReport", wire.commission_report(e.exec_id, e.commission))
        self._send(s, "execDetailsEnd", [55, 1, req_id])

    def _positions(self, s: Session, f: list[str]) -> None:
        s.positions = True
        for (account, symbol), h in list(self.books.holdings.items()):
            self._send(s, "position", wire.position(account, self.books.con_id(symbol), symbol,
                                                    h.qty, h.avg_cost))
        self._send(s, "positionEnd", [62, 1])

    def _account_updates(self, s: Session, f: list[str]) -> None:
        if f[2] != "1":
            s.account_updates = None
            return
        account = f[3] or self.books.accounts[0]
        s.account_updates = account
        self._push_values(s, account)
        for symbol, h in self.books.positions(account).items():
            self._send(s, "portfolio", self._portfolio(account, symbol, h.qty, h.avg_cost))
        self._send(s, "accountTime", [8, 1, f"{datetime.now(UTC):%H:%M}"])
        self._send(s, "accountDownloadEnd", [54, 1, account])

    def _account_multi(self, s: Session, f: list[str]) -> None:
        req_id, account = int(f[2]), f[3] or self.books.accounts[0]
        for tag, value in self._values(account):
            self._send(s, "accountUpdateMulti", [73, 1, req_id, account, "", tag, value, "USD"])
        self._send(s, "accountUpdateMultiEnd", [74, 1, req_id])

    def _account_summary(self, s: Session, f: list[str]) -> None:
        req_id = int(f[2])
        for account in self.books.accounts:
            for tag, value in self._values(account):
                self._send(s, "accountSummary", [63, 1, req_id, account, tag, value, "USD"])
        self._send(s, "accountSummaryEnd", [64, 1, req_id])

    def _values(self, account: str) -> list[tuple[str, Decimal]]:
        cash, nlv = self.books.cash[account], self.books.net_liquidation(account)
        gross = sum((abs(h.qty) * self.books.prices.get(sym, ZERO)
                     for sym, h in self.books.positions(account).items()), ZERO)
        vals = {"NetLiquidation": nlv, "TotalCashValue": cash, "CashBalance": cash,
                "BuyingPower": max(cash, ZERO), "AvailableFunds": max(cash, ZERO),
                "EquityWithLoanValue": nlv, "GrossPositionValue": gross}
        return [(tag, vals[tag]) for tag in _ACCOUNT_TAGS]

    def _push_values(self, s: Session, account: str) -> None:
        for tag, value in self._values(account):
            self._send(s, "accountValue", wire.account_value(account, tag, value))

    def _portfolio(self, account: str, symbol: str, qty: Decimal, avg: Decimal) -> list[Any]:
        price = self.books.prices.get(symbol, avg)
        return wire.portfolio(account, self.books.con_id(symbol), symbol, qty, price, avg)

    # -- matching ------------------------------------------------------------------------

    def _fill_price(self, o: FakeOrder) -> Decimal | None:
        px = self.books.prices.get(o.symbol)
        if px is None:
            return None
        buy = o.action == "BUY"
        if o.order_type in ("STP", "STP LMT") and not o.triggered:
            assert o.aux_price is not None
            if not ((buy and px >= o.aux_price) or (not buy and px <= o.aux_price)):
                return None
            o.triggered = True
        if o.order_type in ("MKT", "STP"):
            return px
        assert o.lmt_price is not None
        return px if (buy and px <= o.lmt_price) or (not buy and px >= o.lmt_price) else None

    def _match(self, o: FakeOrder) -> None:
        if o.held or not o.is_open or not self.auto_fill or o.status == "PreSubmitted":
            return
        px = self._fill_price(o)
        if px is None:
            if o.tif in ("IOC", "FOK"):
                self._cancel(o, "not marketable")
            return
        parts = _split(o.remaining, self.fill_parts)
        if self.fill_delay <= 0:
            for part in parts:
                self._execute(o, part, px)
            return
        loop = asyncio.get_running_loop()
        for i, part in enumerate(parts):
            loop.call_later(i * self.fill_delay, self._execute, o, part, px)

    def _execute(self, o: FakeOrder, shares: Decimal, price: Decimal) -> None:
        shares = min(shares, o.remaining)
        if not o.is_open or shares <= 0:
            return
        ex = self.books.execute(o, shares, price, datetime.now(UTC))
        done = o.filled == o.qty
        if done:
            o.status, o.completed_status = "Filled", "Filled"
            o.completed_time = ib_time(ex.time)
        self._to_client(o.client_id, "execDetails", wire.exec_details(-1, ex.fields()))
        self._to_client(o.client_id, "orderStatus", self._status(o))
        if done:
            self._to_client(o.client_id, "openOrder", wire.open_order(o.fields()))
        self._to_client(o.client_id, "commissionReport",
                        wire.commission_report(ex.exec_id, ex.commission))
        self._after_trade(o.account, o.symbol)

    def _after_trade(self, account: str, symbol: str) -> None:
        h = self.books.holdings.get((account, symbol))
        qty, avg = (h.qty, h.avg_cost) if h else (ZERO, ZERO)
        for s in list(self.sessions.values()):
            if s.account_updates == account:
                self._push_values(s, account)
                self._send(s, "portfolio", self._portfolio(account, symbol, qty, avg))
            if s.positions:
                self._send(s, "position", wire.position(account, self.books.con_id(symbol),
                                                        symbol, qty, avg))


class _Closed(Exception):
    """The fake ends a connection (bad handshake, client id in use)."""


def _split(total: Decimal, parts: int) -> list[Decimal]:
    n = max(1, min(parts, int(total)))
    base = Decimal(int(total) // n)
    out = [base] * n
    out[-1] += total - base * n
    return [p for p in out if p > 0]


def _parse_time(text: str) -> datetime | None:
    """``ExecutionFilter.time``: ``yyyymmdd-hh:mm:ss`` (UTC) or ``yyyymmdd hh:mm:ss``."""
    if not text:
        return None
    stamp = text.strip().replace("-", " ", 1)[:17]
    return datetime.strptime(stamp, "%Y%m%d %H:%M:%S").replace(tzinfo=UTC)


__all__ = ["FakeTws", "Session"]
