"""Helpers for tests of the IB adapter against the fake TWS: the adapter's config with
short timeouts, and comparisons of what the adapter reported with the fake's books."""

from __future__ import annotations

import asyncio
from collections import Counter
from decimal import Decimal
from typing import Any

from brokers.config import IbConfig
from kernel.events import Event, OrderFilled
from tests.fake_tws.server import FakeTws

PRICES = {"AAPL": Decimal("170.50"), "MSFT": Decimal("400.25")}


def ib_cfg(tws: FakeTws, **over: Any) -> IbConfig:
    base: dict[str, Any] = {
        "port": tws.port, "client_id": 11, "connect_timeout_secs": 2.0,
        "request_timeout_secs": 1.0, "ack_timeout_secs": 0.5, "heartbeat_secs": 5.0,
        "commission_wait_secs": 0.3, "gap_grace_secs": 0.1, "reconnect_backoff_secs": 0.05,
        "reconnect_backoff_max_secs": 0.2,
    }
    base.update(over)
    return IbConfig(**base)


def fills_of(events: list[Event]) -> list[OrderFilled]:
    return [e for e in events if isinstance(e, OrderFilled)]


def orders_by_ref(tws: FakeTws) -> Counter[str]:
    return Counter(o["order_ref"] for o in tws.snapshot()["orders"])


def assert_fills_match_fake(events: list[Event], tws: FakeTws, refs: set[str] | None = None
                            ) -> None:
    """Every execution at the fake reported exactly once, with its qty, price and fee."""
    ours = {f.fill.execution_id: f.fill for f in fills_of(events)}
    theirs = {e["exec_id"]: e for e in tws.snapshot()["executions"]
              if refs is None or e["order_ref"] in refs}
    assert sorted(f.fill.execution_id for f in fills_of(events)
                  if refs is None or f.client_order_id in refs) == sorted(theirs)
    for exec_id, e in theirs.items():
        fill = ours[exec_id]
        assert (fill.client_order_id, fill.qty, fill.price, fill.commission, fill.cum_qty) == (
            e["order_ref"], int(e["shares"]), Decimal(e["price"]), Decimal(e["commission"]),
            int(Decimal(e["cum_qty"])))


def assert_books_match(events: list[Event], tws: FakeTws,
                       start_cash: Decimal = Decimal(100_000)) -> None:
    """Positions and cash implied by the reported fills equal the fake's books."""
    cash, held = start_cash, Counter[str]()
    for f in fills_of(events):
        cash -= f.fill.signed_qty * f.fill.price + f.fill.commission
        held[f.fill.symbol] += f.fill.signed_qty
    snap = tws.snapshot()
    assert {s: q for s, q in held.items() if q} == {
        s: int(Decimal(p["qty"])) for s, p in snap["positions"].items()}
    assert cash == Decimal(snap["account"]["cash"])


async def eventually(pred: Any, secs: float = 5.0) -> None:
    """Wait until ``pred()`` holds (it reads state of the fake or the recorder, which
    signal nothing: polled every 10 ms), at most ``secs``."""

    async def loop() -> None:
        while not pred():  # noqa: ASYNC110 - no event to wait on: polling is the point
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), secs)


__all__ = ["PRICES", "assert_books_match", "assert_fills_match_fake", "eventually",
           "fills_of", "ib_cfg", "orders_by_ref"]
