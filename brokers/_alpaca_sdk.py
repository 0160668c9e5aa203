"""What the Alpaca adapter and the bar feed add to alpaca-py's clients and streams.

Keys from the config (``sdk_keys``), REST clients without blind retries and with a
timeout on every request (``harden``), the trading stream with the hooks the SDK lacks
(``HookedTradingStream``), stopping an SDK stream that runs on its own thread and loop
(``thread_stop``), and the SDK's order request for an intent (``order_request``). See
alpaca-protocol.md §7, §8.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import requests
import structlog
import websockets
from alpaca.trading.enums import OrderSide as AlpacaSide
from alpaca.trading.enums import TimeInForce as AlpacaTif
from alpaca.trading.requests import (
    LimitOrderRequest,
    MarketOrderRequest,
    OrderRequest,
    StopLimitOrderRequest,
    StopOrderRequest,
)
from alpaca.trading.stream import TradingStream

from brokers._alpaca_map import order_body_fields
from brokers.config import AlpacaConfig
from kernel.errors import BrokerAuthError, BrokerRejected
from kernel.events import OrderIntent
from kernel.model import OrderType

log = structlog.get_logger("brokers.alpaca")

STREAM_STOP_SECS = 5.0


def sdk_keys(cfg: AlpacaConfig) -> tuple[str, str]:
    if cfg.key_id is None or cfg.secret_key is None:
        raise BrokerAuthError(
            "Alpaca API keys missing: set APCA_API_KEY_ID and APCA_API_SECRET_KEY")
    key, secret = cfg.key_id.get_secret_value(), cfg.secret_key.get_secret_value()
    if not key or not secret:
        raise BrokerAuthError(
            "Alpaca API keys empty: set APCA_API_KEY_ID and APCA_API_SECRET_KEY")
    return key, secret


def harden(client: Any, timeout: float) -> None:
    """No blind SDK retries (a retried POST can double-submit), and a timeout on every
    request (the SDK sets none, so a hung server would hang the call forever)."""
    client._retry = 0  # ``while retry >= 0`` in RESTClient._request: one attempt
    client._retry_wait = 0
    session: requests.Session = client._session
    raw = session.request

    @functools.wraps(raw)
    def request(method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", timeout)
        return raw(method, url, **kwargs)

    session.request = request  # type: ignore[method-assign,assignment]


class HookedTradingStream(TradingStream):
    """``TradingStream`` with hooks the SDK lacks: connected (auth ok), auth failed,
    dropped, and a timestamp of the last frame of any kind. Hooks run on the stream's
    thread; the adapter hops them onto its loop."""

    def __init__(self, *args: Any, hooks: StreamHooks, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hooks = hooks
        self.stopping = False
        self.last_frame = time.monotonic()

    async def _auth(self) -> None:
        try:
            await super()._auth()  # type: ignore[no-untyped-call]
        except ValueError:
            self.hooks.auth_failed()
            raise

    async def _start_ws(self) -> None:
        await super()._start_ws()  # type: ignore[no-untyped-call]
        self.last_frame = time.monotonic()
        self.hooks.connected()

    async def _consume(self) -> None:
        try:
            await super()._consume()  # type: ignore[no-untyped-call]
        except websockets.WebSocketException as exc:
            if not self.stopping:
                self.hooks.dropped(type(exc).__name__)
            raise

    async def _dispatch(self, msg: dict[str, Any]) -> None:
        self.last_frame = time.monotonic()
        await super()._dispatch(msg)

    async def probe(self, wait_secs: float) -> bool:
        """A websocket ping; True if the pong came back within ``wait_secs``."""
        ws = self._ws
        if ws is None:
            return False
        try:
            waiter = await ws.ping()
            await asyncio.wait_for(waiter, wait_secs)
        except (TimeoutError, websockets.WebSocketException, RuntimeError):
            return False
        self.last_frame = time.monotonic()
        return True

    async def cut(self) -> None:
        """Abort the socket: the SDK sees a transport error and reconnects."""
        ws = self._ws
        if ws is not None and ws.transport is not None:
            ws.transport.abort()

    async def shutdown(self) -> None:
        self.stopping = True
        await self.stop_ws()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.close(), 1.0)
        await self.cut()


@dataclass(slots=True)
class StreamHooks:
    connected: Callable[[], None]
    auth_failed: Callable[[], None]
    dropped: Callable[[str], None]


def thread_stop(
    get_loop: Callable[[], asyncio.AbstractEventLoop | None],
    coro: Callable[[], Coroutine[Any, Any, None]],
    fallback: Callable[[], None], thread: threading.Thread | None,
) -> None:
    """Stop an SDK stream from outside its thread and wait for the thread to end.

    The SDK's ``_run_forever`` clears its stop queue and sets ``_should_run`` when it
    starts, so a stop sent before its loop exists would be lost: wait for the loop.
    """
    deadline = time.monotonic() + STREAM_STOP_SECS
    while (get_loop() is None and thread is not None and thread.is_alive()
           and time.monotonic() < deadline):
        time.sleep(0.01)
    loop = get_loop()
    if loop is not None and loop.is_running():
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(coro(), loop).result(STREAM_STOP_SECS)
    else:
        fallback()
    if thread is not None:
        thread.join(STREAM_STOP_SECS)


def order_request(intent: OrderIntent) -> OrderRequest:
    """The SDK request for ``intent``. Raises ``BrokerRejected`` (nothing was sent)
    when the order cannot be expressed: our own check or the SDK's validation."""
    try:
        return _build_request(intent)
    except BrokerRejected:
        raise
    except (ValueError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        log.warning("alpaca.unbuildable", client_order_id=intent.client_order_id,
                    error=str(exc)[:300])
        raise BrokerRejected(f"order not sent: {str(exc)[:300]}") from exc


def _build_request(intent: OrderIntent) -> OrderRequest:
    order_body_fields(order_type=intent.order_type, limit_price=intent.limit_price,
                      stop_price=intent.stop_price)
    common: dict[str, Any] = {
        "symbol": intent.symbol, "qty": intent.qty, "side": AlpacaSide(intent.side.value),
        "time_in_force": AlpacaTif(intent.time_in_force.value),
        "client_order_id": intent.client_order_id,
    }
    lp = float(intent.limit_price) if intent.limit_price is not None else None
    sp = float(intent.stop_price) if intent.stop_price is not None else None
    match intent.order_type:
        case OrderType.MARKET:
            return MarketOrderRequest(**common)
        case OrderType.LIMIT:
            return LimitOrderRequest(**common, limit_price=lp)
        case OrderType.STOP:
            return StopOrderRequest(**common, stop_price=sp)
        case OrderType.STOP_LIMIT:
            return StopLimitOrderRequest(**common, limit_price=lp, stop_price=sp)
    raise BrokerRejected(f"unsupported order type {intent.order_type}")
