"""What one reconciliation found: the differences, their classes, and the broker
snapshot they were judged against (see ``engine.reconcile``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from engine.codec import encode
from kernel.broker import BrokerFill, BrokerOrder
from kernel.model import AccountSnapshot, BrokerPosition, Fill
from portfolio import Portfolio

IN_FLIGHT, EXPLAINED, UNEXPLAINED = "in_flight", "explained", "unexplained"
CASH_TOLERANCE = Decimal("0.01")
@dataclass(frozen=True, slots=True)
class Difference:
    """One difference between the books and the broker, and how it was settled."""

    kind: str  # in_flight | explained | unexplained
    what: str  # missed_fill, missed_ack, missed_status, abandoned, position, cash, ...
    client_order_id: str | None = None
    symbol: str | None = None
    local: Any = None
    broker: Any = None
    note: str = ""


@dataclass(slots=True)
class ReconcileReport:
    """What one reconciliation found (journaled as a ``ReconcileResult`` row)."""

    reason: str
    ts: datetime
    differences: list[Difference] = field(default_factory=list)
    ok: bool = True
    account: AccountSnapshot | None = None  # the broker's account as last read

    def of(self, kind: str) -> list[Difference]:
        return [d for d in self.differences if d.kind == kind]

    def add(self, kind: str, what: str, **kw: Any) -> None:
        self.differences.append(Difference(kind, what, **kw))

    def payload(self) -> dict[str, Any]:
        return {"reason": self.reason, "ok": self.ok,
                "counts": {k: len(self.of(k)) for k in (IN_FLIGHT, EXPLAINED, UNEXPLAINED)},
                "differences": encode(self.differences)}


@dataclass(frozen=True, slots=True)
class Snapshot:
    open_orders: dict[str, BrokerOrder]
    fills: list[BrokerFill]
    positions: dict[str, BrokerPosition]
    account: AccountSnapshot


def fill_of(bf: BrokerFill) -> Fill:
    return Fill(bf.execution_id, bf.client_order_id, bf.symbol, bf.side, bf.qty, bf.price,
                bf.ts, commission=bf.commission, cum_qty=bf.cum_qty)


def cumulative_order(bf: BrokerFill) -> tuple[int, datetime, str]:
    # Partial fills in the same millisecond may be listed out of order: cum_qty decides.
    return (bf.cum_qty if bf.cum_qty is not None else 1 << 62, bf.ts, bf.execution_id)


def books_snapshot(portfolio: Portfolio) -> dict[str, Any]:
    """The portfolio's state as a journal payload (restored by recovery)."""
    return {
        "cash": str(portfolio.cash),
        "commissions": str(portfolio.commissions),
        "fill_count": portfolio.fill_count,
        "positions": {s: {"qty": p.qty, "avg_price": str(p.avg_price),
                          "realized_pnl": str(p.realized_pnl)}
                      for s, p in portfolio.positions.items() if p.qty or p.realized_pnl},
        "prices": {s: portfolio.last_price[s] for s, p in portfolio.positions.items()
                   if p.qty and s in portfolio.last_price},
    }



__all__ = [
    "CASH_TOLERANCE",
    "EXPLAINED",
    "IN_FLIGHT",
    "UNEXPLAINED",
    "Difference",
    "ReconcileReport",
    "Snapshot",
    "books_snapshot",
    "cumulative_order",
    "fill_of",
]
