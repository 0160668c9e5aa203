"""Builders shared by the paper broker tests: intents, bar batches, a recording sink, and
replaying reported events through the daemon's order state machine."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from brokers.config import PaperConfig
from brokers.paper import PaperBroker
from kernel.clock import ReplayClock
from kernel.events import BarBatch, Event, OrderEvent, OrderFilled, OrderIntent
from kernel.model import OrderSide, OrderType, TimeInForce
from kernel.orders import Order

# Monday 2026-01-05 09:30 New York (EST, UTC-5).
OPEN_TS = datetime(2026, 1, 5, 14, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
D = Decimal


class Recorder:
    """The broker's sink: keeps every reported event in order."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[OrderEvent], cid: str | None = None) -> list[OrderEvent]:
        return [e for e in self.events if isinstance(e, kind)
                and (cid is None or e.client_order_id == cid)]

    def fills(self, cid: str | None = None) -> list[OrderFilled]:
        return [e for e in self.events if isinstance(e, OrderFilled)
                and (cid is None or e.client_order_id == cid)]

    def clear(self) -> None:
        self.events.clear()


def intent(
    cid: str,
    side: str = "buy",
    qty: int = 100,
    *,
    symbol: str = "AAA",
    order_type: str = "market",
    tif: str = "gtc",
    ref: str = "100",
    limit: str | None = None,
    stop: str | None = None,
    ts: datetime = OPEN_TS,
) -> OrderIntent:
    return OrderIntent(
        client_order_id=cid, symbol=symbol, side=OrderSide(side), qty=qty,
        order_type=OrderType(order_type), time_in_force=TimeInForce(tif), ts=ts,
        reference_price=D(ref), limit_price=D(limit) if limit else None,
        stop_price=D(stop) if stop else None,
    )


def batch(ts: datetime, **bars: tuple[float, float, float, float, float]) -> BarBatch:
    """One batch: ``AAA=(open, high, low, close, volume)`` per symbol."""
    symbols = tuple(bars)
    cols = np.array([bars[s] for s in symbols], dtype=np.float64).reshape(len(symbols), 5)
    return BarBatch(ts=ts, symbols=symbols, open=cols[:, 0].copy(), high=cols[:, 1].copy(),
                    low=cols[:, 2].copy(), close=cols[:, 3].copy(), volume=cols[:, 4].copy())


def flat(px: float, volume: float = 1_000_000) -> tuple[float, float, float, float, float]:
    return (px, px, px, px, volume)


class Harness:
    """A real PaperBroker with a ReplayClock and a recording sink."""

    def __init__(self, store_path: Path | None = None, /, **cfg: Any) -> None:
        self.clock = ReplayClock(OPEN_TS)
        self.sink = Recorder()
        self.cfg = PaperConfig(**cfg)
        self.store_path = store_path
        self.broker = PaperBroker(cfg=self.cfg, clock=self.clock, sink=self.sink,
                                  store_path=store_path)
        self.intents: dict[str, OrderIntent] = {}
        self.now = OPEN_TS

    async def submit(self, it: OrderIntent) -> OrderIntent:
        await self.broker.submit(it)
        # With a store, submissions are group-committed at the end of the loop iteration
        # and acknowledged after the write: let the loop turn once.
        await asyncio.sleep(0)
        self.intents[it.client_order_id] = it
        return it

    def bar(self, **bars: tuple[float, float, float, float, float]) -> None:
        """Advance one minute and feed one batch stamped with the new time."""
        self.now += MINUTE
        self.clock.set(self.now)
        self.broker.on_bars(batch(self.now, **bars))

    def at(self, ts: datetime, **bars: tuple[float, float, float, float, float]) -> None:
        self.now = ts
        self.clock.set(ts)
        self.broker.on_bars(batch(ts, **bars))

    def note_replacement(self, old: str, new: str, total: int | None = None,
                         filled: int = 0, **changes: Any) -> None:
        """Register the intent the daemon would create for a replacement order."""
        base = self.intents[old]
        qty = (total if total is not None else base.qty) - filled
        self.intents[new] = dataclasses.replace(base, client_order_id=new, qty=qty, **changes)

    def orders(self) -> dict[str, Order]:
        return apply_all(self.intents, self.sink.events)


def apply_all(intents: dict[str, OrderIntent], events: Iterable[Event]) -> dict[str, Order]:
    """Apply every reported order event to the daemon's ``Order`` FSM (raises if illegal)."""
    orders: dict[str, Order] = {}
    for event in events:
        if isinstance(event, OrderEvent):
            cid = event.client_order_id
            if cid not in orders:
                orders[cid] = Order.from_intent(intents[cid])
            orders[cid].apply(event)
    return orders
