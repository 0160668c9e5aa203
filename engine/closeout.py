"""The end of one account's trading day: cancel its working day orders, flatten it.

Both act only through the account's bus, like every other order in the daemon: a cancel
is a ``CancelOrder`` command to the order manager, a flatten order is a ``PlaceOrder``
that passes the pre-trade gate. The session lifecycle (``daemon.live``) calls them.

Flatten sends, per held symbol, a reduce-only DAY **market** order (``origin: session``)
for the whole position. It must run while the market is open: after the close the gate
denies ``MARKET_CLOSED`` and a broker would not fill a market order anyway. The daemon
therefore flattens at the start of the CLOSING window (``no_new_entries_before_close_mins``
before the close), when the gate already refuses new entries. The gate's normal rules
apply: a halt, a kill switch or reconciliation deny the order (a halted account keeps its
positions: an operator who wants them closed uses ``tradingd liquidate``). Rounds repeat,
each waiting up to ``timeout_secs`` (wall time) for its orders to finish and cancelling
what is left, until the account is flat, an order is denied, or ``rounds`` are done.

Client order ids are deterministic (``close-`` + session, symbol, round), so a flatten
repeated after a restart can never send the same order twice.

Commands sent: ``CancelOrder``, ``PlaceOrder``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date

import structlog

from engine.system import TradingSystem
from kernel.events import CancelOrder, OrderIntent, PlaceOrder
from kernel.ids import client_order_id
from kernel.model import OrderSide, OrderType, TimeInForce
from kernel.orders import Order

log = structlog.get_logger("engine.closeout")

ORIGIN = "session"
_POLL_SECS = 0.05


@dataclass(slots=True)
class Cancelled:
    """What ``cancel_day_orders`` asked and what was still open when it stopped waiting."""

    asked: int = 0
    still_open: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {"cancelled": self.asked - len(self.still_open),
                "still_open": len(self.still_open)}


@dataclass(slots=True)
class Flattened:
    """What ``flatten`` did; ``remaining`` is what the account still holds."""

    rounds: int = 0
    orders: int = 0
    denied: int = 0
    remaining: dict[str, int] = field(default_factory=dict)

    @property
    def flat(self) -> bool:
        return not self.remaining

    def as_dict(self) -> dict[str, object]:
        return {"flat": self.flat, "rounds": self.rounds, "orders": self.orders,
                "denied": self.denied, "remaining": dict(self.remaining)}


async def cancel_day_orders(system: TradingSystem, *, why: str,
                            timeout_secs: float) -> Cancelled:
    """Cancel every working DAY order of ``system`` and wait (bounded) for the outcome."""
    working = [o for o in system.orders.open_orders()
               if o.time_in_force is TimeInForce.DAY]
    for o in working:
        system.bus.send(CancelOrder(o.client_order_id, reason=why))
    await wait_until(lambda: not _open(working), timeout_secs)
    out = Cancelled(len(working), [o.client_order_id for o in _open(working)])
    if working:
        log.info("session.day_orders_cancelled", account=system.name, why=why, **out.as_dict())
    return out


async def flatten(system: TradingSystem, *, session: date, rounds: int,
                  timeout_secs: float) -> Flattened:
    """Close every position of ``system`` with reduce-only market orders (see the module
    doc); returns what was done and what is still held."""
    out = Flattened()
    for rnd in range(1, rounds + 1):
        held = _to_close(system)
        if not held:
            break
        out.rounds = rnd
        sent = []
        for symbol, qty in held.items():
            intent = _exit(system, symbol, qty, session=session, rnd=rnd)
            system.bus.send(PlaceOrder(intent))
            order = system.orders.orders.get(intent.client_order_id)
            if order is None:  # the gate denied it (logged gate.reject, journaled)
                out.denied += 1
                continue
            out.orders += 1
            sent.append(order)
        if not sent:
            break  # every exit was denied: another round would be denied the same way
        await wait_until(lambda sent=sent: not _open(sent), timeout_secs)  # type: ignore[misc]
        if _open(sent):
            await cancel_day_orders(system, why="flatten round timed out",
                                    timeout_secs=timeout_secs)
    out.remaining = {v.symbol: v.qty for v in system.portfolio.views() if v.qty}
    if out.flat:
        log.info("session.flattened", account=system.name, **out.as_dict())
    else:
        log.error("session.flatten_incomplete", account=system.name, **out.as_dict())
    return out


def _to_close(system: TradingSystem) -> dict[str, int]:
    """Signed quantity each symbol still needs to reach zero (working exits counted)."""
    out = {}
    for v in system.portfolio.views():
        net = v.qty + system.orders.working_qty(v.symbol)
        if v.qty and net and (net > 0) == (v.qty > 0):
            out[v.symbol] = net
    return out


def _exit(system: TradingSystem, symbol: str, qty: int, *, session: date,
          rnd: int) -> OrderIntent:
    now = system.clock.now()
    price = system.portfolio.price(symbol) or system.portfolio.positions[symbol].avg_price
    return OrderIntent(
        client_order_id=client_order_id("close", system.name, session.isoformat(), symbol,
                                        str(rnd)),
        symbol=symbol, side=OrderSide.SELL if qty > 0 else OrderSide.BUY, qty=abs(qty),
        order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY, ts=now,
        reference_price=price, reduce_only=True, origin=ORIGIN)


def _open(orders: Iterable[Order]) -> list[Order]:
    return [o for o in orders if o.is_open]


async def wait_until(done: Callable[[], bool], timeout_secs: float) -> bool:
    """Poll ``done`` until true or ``timeout_secs`` of wall time (an operational bound,
    not market time) have passed."""
    deadline = time.monotonic() + timeout_secs
    while not done():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_SECS)
    return True


__all__ = ["ORIGIN", "Cancelled", "Flattened", "cancel_day_orders", "flatten", "wait_until"]
