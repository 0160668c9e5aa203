"""Fixtures for the Alpaca adapter tests: a loopback emulator, a recording sink, and the
adapter wired to the real order manager, reconciler, portfolio and journal."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from brokers.alpaca import AlpacaBroker
from brokers.config import AlpacaConfig
from kernel.clock import WallClock
from kernel.events import BrokerStatusChanged, Event, OrderEvent, OrderFilled, OrderIntent
from kernel.model import Fill, OrderSide, OrderType, TimeInForce
from kernel.orders import Order
from tests.alpaca_emulator import EmulatorThread
from tests.daemon.session import Session

KEY, SECRET = "PKTESTKEY0001", "sEcReT-TEST-0001"


class Recorder:
    """The broker's sink: records events and applies order events to real ``Order``s
    (so an illegal transition fails the test where it happens)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.orders: dict[str, Order] = {}
        self.errors: list[BaseException] = []
        self._changed = asyncio.Event()
        self.thread_ids: set[int] = set()

    def track(self, intent: OrderIntent) -> Order:
        self.orders[intent.client_order_id] = Order.from_intent(intent)
        return self.orders[intent.client_order_id]

    def __call__(self, event: Event) -> None:
        import threading

        self.thread_ids.add(threading.get_ident())
        self.events.append(event)
        if isinstance(event, OrderEvent):
            order = self.orders.get(event.client_order_id)
            if order is not None:
                try:
                    order.apply(event)
                except Exception as exc:  # surfaced by the test
                    self.errors.append(exc)
        self._changed.set()

    def of(self, cid: str) -> list[str]:
        return [type(e).__name__ for e in self.events
                if isinstance(e, OrderEvent) and e.client_order_id == cid]

    def statuses(self) -> list[str]:
        return [e.status for e in self.events if isinstance(e, BrokerStatusChanged)]

    async def wait_for(self, pred: Any, wait_secs: float = 5.0) -> None:
        async def loop() -> None:
            while not pred():
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.05)

        await asyncio.wait_for(loop(), wait_secs)


@pytest.fixture
def emu() -> Iterator[EmulatorThread]:
    with EmulatorThread(key_id=KEY, secret_key=SECRET) as e:
        e.set_price("AAPL", "170.50")
        e.set_price("MSFT", "400.25")
        yield e


def make_cfg(emu: EmulatorThread, **over: Any) -> AlpacaConfig:
    base: dict[str, Any] = {
        "key_id": SecretStr(KEY), "secret_key": SecretStr(SECRET),
        "base_url": emu.base_url, "data_url": emu.base_url,
        "request_timeout_secs": 1.0, "stream_silence_secs": 2.0,
        "retry_backoff_secs": 0.02, "retry_backoff_max_secs": 0.1,
        "reconnect_backoff_secs": 0.05,
    }
    base.update(over)
    return AlpacaConfig(**base)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def broker(emu: EmulatorThread, recorder: Recorder) -> AsyncIterator[AlpacaBroker]:
    async with AlpacaBroker(make_cfg(emu), clock=WallClock(), sink=recorder) as b:
        yield b


_seq = iter(range(1, 1_000_000))


def intent(symbol: str = "AAPL", side: OrderSide = OrderSide.BUY, qty: int = 10,
           order_type: OrderType = OrderType.MARKET, tif: TimeInForce = TimeInForce.DAY,
           limit: str | None = None, stop: str | None = None, cid: str | None = None
           ) -> OrderIntent:
    return OrderIntent(
        client_order_id=cid or f"t-{next(_seq):06d}", symbol=symbol, side=side, qty=qty,
        order_type=order_type, time_in_force=tif, ts=datetime.now(UTC),
        reference_price=Decimal("170.50"),
        limit_price=Decimal(limit) if limit else None,
        stop_price=Decimal(stop) if stop else None,
    )


@asynccontextmanager
async def alpaca_session(emu: EmulatorThread, tmp_path: Path,
                         **cfg_over: Any) -> AsyncIterator[Session]:
    """The real adapter behind the real order manager, reconciler and journal."""
    cfg = make_cfg(emu, **cfg_over)
    s = Session(tmp_path, lambda sink: AlpacaBroker(cfg, clock=WallClock(), sink=sink),
                clock=WallClock(), confirm_delay=0.2, request_delay=0.05)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def fill_identities(fills: list[Fill]) -> Counter[tuple[str, int | None]]:
    """Fills by identity: (client order id, cumulative filled quantity after the fill)."""
    return Counter((f.client_order_id, f.cum_qty) for f in fills)


def emulator_identities(emu: EmulatorThread) -> Counter[tuple[str, int | None]]:
    snap = emu.snapshot()
    return Counter((e["client_order_id"], int(e["cum_qty"])) for e in snap["executions"])


def fills_of(events: list[Event]) -> list[Fill]:
    return [e.fill for e in events if isinstance(e, OrderFilled)]
