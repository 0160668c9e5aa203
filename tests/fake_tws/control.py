"""The fake TWS's public controls: market, faults, inspection.

``FakeTws`` inherits them. Call them on the fake's loop, through ``FakeTwsThread``, or
over the process's control channel (``POST /_control/<method>``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tests.fake_tws import wire
from tests.fake_tws.books import Books, FakeOrder

if TYPE_CHECKING:
    from tests.fake_tws.server import Session


class Controls:
    """Faults and market controls (a mixin of ``FakeTws``, which owns the state)."""

    books: Books
    sessions: dict[int, Session]
    fill_parts: int
    fill_delay: float
    auto_fill: bool
    market_open: bool
    _all: set[Session]
    _used: dict[int, int]
    _rejects: Any
    _dup_ids: int
    _warn: Any
    _drop: dict[str, int]
    _dup: dict[str, int]
    _hold: bool
    _occupied: set[int]
    running: Any

    def _match(self, o: FakeOrder) -> None: ...
    def _execute(self, o: FakeOrder, shares: Decimal, price: Decimal) -> None: ...
    def _cancel(self, o: FakeOrder, reason: str) -> None: ...
    def _ack(self, o: FakeOrder) -> None: ...
    def _send(self, s: Session, kind: str, fields: list[Any]) -> None: ...
    def _next_id(self, client_id: int) -> int: ...

    def set_price(self, symbol: str, price: str | Decimal) -> None:
        """Set a symbol's price; resting orders that become marketable fill."""
        self.books.prices[symbol] = Decimal(str(price))
        for o in list(self.books.orders.values()):
            if o.symbol == symbol:
                self._match(o)

    def set_prices(self, prices: dict[str, str]) -> None:
        for symbol, price in prices.items():
            self.set_price(symbol, price)

    def set_fill(self, parts: int = 1, delay: float = 0.0, auto: bool = True) -> None:
        """Executions per order, seconds between them, and whether to fill at all."""
        self.fill_parts, self.fill_delay, self.auto_fill = parts, delay, auto
        if auto:
            for o in list(self.books.orders.values()):
                self._match(o)

    def execute(self, order_ref: str, qty: int, price: str | None = None) -> str:
        """Fill part of an open order now (by orderRef); returns the execution id."""
        o = self._order(order_ref)
        px = Decimal(price) if price is not None else self.books.prices[o.symbol]
        before = len(self.books.executions)
        self._execute(o, Decimal(qty), px)
        if len(self.books.executions) == before:
            raise ValueError(f"{order_ref} is not open")
        return self.books.executions[-1].exec_id

    def cancel(self, order_ref: str, reason: str = "") -> None:
        """Cancel an order from the Gateway side (as TWS or IB would)."""
        self._cancel(self._order(order_ref), reason)

    def _order(self, order_ref: str) -> FakeOrder:
        found = [o for o in self.books.orders.values() if o.order_ref == order_ref]
        if not found:
            raise KeyError(order_ref)
        return found[-1]

    def reject_next(self, n: int = 1, code: int = 201, reason: str = "test rejection") -> None:
        self._rejects.extend([(code, reason)] * n)

    def duplicate_id_next(self, n: int = 1) -> None:
        """Answer the next ``n`` placements with 103 "Duplicate order id"."""
        self._dup_ids += n

    def warn_next(self, code: int = 399, message: str = "Order message warning") -> None:
        self._warn.append((code, message))

    def drop_next(self, kind: str, n: int = 1) -> None:
        """Lose the next ``n`` outbound messages of ``kind`` (``execDetails``,
        ``commissionReport``, ``orderStatus``, ``openOrder``, ``error``, ...)."""
        self._drop[kind] = self._drop.get(kind, 0) + n

    def duplicate_next(self, kind: str, n: int = 1) -> None:
        """Send the next ``n`` outbound messages of ``kind`` twice."""
        self._dup[kind] = self._dup.get(kind, 0) + n

    def drop_connections(self) -> int:
        sessions = list(self._all)
        for s in sessions:
            s.abort()
        return len(sessions)

    def hang(self, on: bool = True) -> None:
        """A hung Gateway: connections stay open, nothing is read or answered."""
        if on:
            self.running.clear()
            return
        self.running.set()
        for s in list(self._all):
            s.flush()

    def hold_acks(self, on: bool = True) -> list[str]:
        """Book orders but say nothing about them (and do not fill them) until released;
        returns the orderRefs released."""
        self._hold = on
        if on:
            return []
        held = [o for o in self.books.orders.values() if o.held]
        for o in held:
            o.held = False
            self._ack(o)
            self._match(o)
        return [o.order_ref for o in held]

    def set_market_open(self, on: bool = True) -> None:
        """Closed: new orders are acknowledged ``PreSubmitted`` and wait. Opening makes
        them ``Submitted`` (acknowledged again) and matches them."""
        self.market_open = on
        if not on:
            return
        for o in list(self.books.orders.values()):
            if o.status == "PreSubmitted":
                o.status = "Submitted"
                self._ack(o)
                self._match(o)

    def restart(self, rollback_ids: bool = True) -> None:
        """The Gateway restarts: every connection drops; with ``rollback_ids`` it forgets
        the order ids it issued, so ``nextValidId`` goes back and ids are re-issued."""
        self.drop_connections()
        if rollback_ids:
            self._used.clear()

    def occupy_client_id(self, client_id: int, on: bool = True) -> None:
        """Another session holds ``client_id``: connecting with it gets 326."""
        (self._occupied.add if on else self._occupied.discard)(client_id)

    def link(self, code: int = 1100) -> None:
        """TWS's link to IB's servers: 1100 lost, 1101/1102 restored (to every session)."""
        text = {1100: "Connectivity between IB and Trader Workstation has been lost.",
                1101: "Connectivity between IB and TWS has been restored- data lost.",
                1102: "Connectivity between IB and TWS has been restored- data maintained."}
        for s in list(self.sessions.values()):
            self._send(s, "error", wire.error(-1, code, text.get(code, "connectivity")))

    def snapshot(self) -> dict[str, Any]:
        return {**self.books.snapshot(), "sessions": sorted(self.sessions),
                "next_valid_id": {str(c): self._next_id(c) for c in self._used}}


__all__ = ["Controls"]
