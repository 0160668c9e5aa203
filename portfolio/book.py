"""The portfolio book: positions, cash, average cost, P&L and exposure, from fills only.

Amounts are exact ``Decimal``. Last prices arrive as floats from bar batches and are
turned into decimals (``repr`` of the float, i.e. the price as written) only for symbols
held, so marking 53 symbols per batch stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any

from kernel.events import BarBatch, Event, OrderFilled, PositionChanged
from kernel.model import BrokerPosition, Fill, Position, PositionView, to_price

ZERO = Decimal(0)


class Portfolio:
    """Books fills into positions and cash; marks positions to the last bar close.

    Events published: ``PositionChanged`` after every fill.
    """

    def __init__(self, initial_cash: Decimal, publish: Callable[[Event], None] | None = None):
        self.cash = Decimal(initial_cash)
        self.positions: dict[str, Position] = {}
        self.last_price: dict[str, float] = {}
        self.commissions = ZERO
        self.fill_count = 0
        self._publish = publish
        # Several components ask for prices, equity and exposure on every batch; these
        # caches are dropped whenever bars, fills or a restore change the books.
        self._px: dict[str, Decimal] = {}
        self._totals: tuple[Decimal, Decimal, Decimal] | None = None
        self._views: tuple[PositionView, ...] | None = None

    # -- updates -----------------------------------------------------------------------

    def on_bars(self, batch: BarBatch) -> None:
        self.last_price.update(zip(batch.symbols, batch.close.tolist(), strict=True))
        self._px.clear()
        self._changed()

    def on_fill(self, event: OrderFilled) -> None:
        pos = self.apply_fill(event.fill)
        if self._publish is not None:
            self._publish(
                PositionChanged(symbol=pos.symbol, qty=pos.qty, avg_price=pos.avg_price,
                                realized_pnl=pos.realized_pnl, ts=event.ts)
            )

    def apply_fill(self, fill: Fill) -> Position:
        """Book one fill: cash moves by qty x price plus commission; average cost is
        the weighted cost of the open quantity; closing quantity realizes P&L."""
        self._changed()
        pos = self.positions.get(fill.symbol)
        if pos is None:
            pos = self.positions[fill.symbol] = Position(fill.symbol)
        signed = fill.signed_qty
        self.cash -= fill.price * signed + fill.commission
        self.commissions += fill.commission
        self.fill_count += 1
        if pos.qty == 0 or (pos.qty > 0) == (signed > 0):
            new_qty = pos.qty + signed
            pos.avg_price = (pos.avg_price * abs(pos.qty) + fill.price * abs(signed)) / abs(new_qty)
            pos.qty = new_qty
            return pos
        closing = min(abs(signed), abs(pos.qty))
        direction = 1 if pos.qty > 0 else -1
        pos.realized_pnl += (fill.price - pos.avg_price) * closing * direction
        pos.qty += signed
        if pos.qty == 0:
            pos.avg_price = ZERO
        elif (pos.qty > 0) != (direction > 0):
            pos.avg_price = fill.price  # flipped: the remainder opened at this fill's price
        return pos

    def restore(self, cash: Decimal, positions: Iterable[BrokerPosition]) -> None:
        """Replace the books with a known state (recovery, or adopting the broker's)."""
        self._changed()
        self.cash = Decimal(cash)
        self.positions = {
            p.symbol: Position(p.symbol, p.qty, p.avg_price) for p in positions if p.qty
        }

    def load(
        self,
        cash: Decimal,
        positions: Iterable[Position],
        *,
        commissions: Decimal | None = None,
        fill_count: int | None = None,
        prices: dict[str, float] | None = None,
    ) -> None:
        """Replace the books with journaled ones (recovery) or the broker's positions kept
        with their realized P&L (reconciliation): unlike ``restore``, nothing is lost."""
        self._changed()
        self._px.clear()
        self.cash = Decimal(cash)
        self.positions = {p.symbol: p for p in positions}
        if commissions is not None:
            self.commissions = commissions
        if fill_count is not None:
            self.fill_count = fill_count
        if prices:
            self.last_price.update(prices)

    def _changed(self) -> None:
        """The books or the marks moved: drop what is computed from them."""
        self._totals = self._views = None

    # -- views ---------------------------------------------------------------------------

    def qty(self, symbol: str) -> int:
        pos = self.positions.get(symbol)
        return pos.qty if pos else 0

    def price(self, symbol: str) -> Decimal | None:
        px = self._px.get(symbol)
        if px is None:
            last = self.last_price.get(symbol)
            if last is None:
                return None
            px = self._px[symbol] = to_price(last)
        return px

    def market_value(self, symbol: str) -> Decimal:
        pos = self.positions.get(symbol)
        if not pos or not pos.qty:
            return ZERO
        px = self.price(symbol)
        return pos.qty * (px if px is not None else pos.avg_price)

    def _sums(self) -> tuple[Decimal, Decimal, Decimal]:
        """(equity, gross exposure, net exposure), computed once per change of the books
        (each bar: the risk tick asks for them). ``market_value`` of every position,
        inlined."""
        if self._totals is None:
            net = gross = ZERO
            cached, last = self._px, self.last_price
            for sym, pos in self.positions.items():
                qty = pos.qty
                if not qty:
                    continue
                px = cached.get(sym)
                if px is None:
                    f = last.get(sym)
                    if f is None:
                        px = pos.avg_price
                    else:
                        px = cached[sym] = to_price(f)
                value = qty * px
                net += value
                gross += value if qty > 0 else -value
            self._totals = (self.cash + net, gross, net)
        return self._totals

    def equity(self) -> Decimal:
        return self._sums()[0]

    def gross_exposure(self) -> Decimal:
        return self._sums()[1]

    def net_exposure(self) -> Decimal:
        return self._sums()[2]

    def realized_pnl(self) -> Decimal:
        return sum((p.realized_pnl for p in self.positions.values()), ZERO)

    def unrealized_pnl(self) -> Decimal:
        return sum((v.unrealized_pnl for v in self.views()), ZERO)

    def views(self) -> tuple[PositionView, ...]:
        """Open positions, marked (cached until bars, fills or a restore change them)."""
        if self._views is not None:
            return self._views
        self._views = tuple(self._view(sym, pos) for sym, pos in sorted(self.positions.items())
                            if pos.qty)
        return self._views

    def adverse(self, fraction: float) -> tuple[PositionView, ...]:
        """Open positions whose last price may be ``fraction`` or more against their
        average cost, marked like ``views``.

        The risk monitor asks this every tick; pricing every position in Decimal for it
        cost more than the rest of the tick. The test here is in floats with a margin far
        above their error (1e-9 against ~1e-15), so it never leaves out a position the
        exact test would take; the caller decides on the exact numbers.
        """
        floor = fraction - 1e-9
        last = self.last_price
        out: list[PositionView] = []
        for sym, pos in self.positions.items():
            qty = pos.qty
            px = last.get(sym)
            if not qty or px is None or pos.avg_price <= 0:
                continue
            avg = float(pos.avg_price)
            move = (avg - px) / avg
            if (move if qty > 0 else -move) >= floor:
                out.append(self._view(sym, pos))
        return tuple(out)

    def _view(self, sym: str, pos: Position) -> PositionView:
        px = self.price(sym)
        mv = self.market_value(sym)
        return PositionView(sym, pos.qty, pos.avg_price, px, mv, mv - pos.avg_price * pos.qty,
                            pos.realized_pnl)

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready summary (decimals as strings) for ``tradingd status``."""
        return {
            "cash": str(self.cash.quantize(Decimal("0.0001"))),
            "equity": str(self.equity().quantize(Decimal("0.0001"))),
            "gross_exposure": str(self.gross_exposure().quantize(Decimal("0.01"))),
            "net_exposure": str(self.net_exposure().quantize(Decimal("0.01"))),
            "realized_pnl": str(self.realized_pnl().quantize(Decimal("0.0001"))),
            "unrealized_pnl": str(self.unrealized_pnl().quantize(Decimal("0.0001"))),
            "commissions": str(self.commissions),
            "positions": {
                v.symbol: {
                    "qty": v.qty,
                    "avg_price": str(v.avg_price.quantize(Decimal("0.0001"))),
                    "market_value": str(v.market_value.quantize(Decimal("0.01"))),
                    "unrealized_pnl": str(v.unrealized_pnl.quantize(Decimal("0.01"))),
                }
                for v in self.views()
            },
        }

