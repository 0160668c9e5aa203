"""The fake TWS's own books: orders, executions, positions and cash per account.

Tests assert "the daemon's books equal the fake's" against these. Money is exact:
cash moves by ``shares x price`` and the commission of each execution
(``max(min_commission, shares x commission_per_share)``, by default IB's tiered $0.0035
and $0.35). As at IB, a position's average cost includes the commissions paid to build it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from tests.fake_tws.wire import ExecFields, OrderFields

NEW_YORK = ZoneInfo("America/New_York")
ZERO = Decimal(0)
OPEN_STATUSES = frozenset({"PreSubmitted", "Submitted", "PendingCancel"})


@dataclass(slots=True)
class FakeOrder:
    perm_id: int
    client_id: int
    order_id: int
    account: str
    symbol: str
    con_id: int
    action: str  # BUY | SELL
    qty: Decimal
    order_type: str  # MKT | LMT | STP | STP LMT
    lmt_price: Decimal | None
    aux_price: Decimal | None
    tif: str
    order_ref: str
    outside_rth: bool
    status: str = "Submitted"
    filled: Decimal = ZERO
    notional: Decimal = ZERO
    triggered: bool = False  # a stop that has been hit
    held: bool = False  # placed while acknowledgements are held back
    completed_time: str = ""
    completed_status: str = ""

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.filled

    @property
    def avg_price(self) -> Decimal:
        return self.notional / self.filled if self.filled else ZERO

    def fields(self) -> OrderFields:
        return OrderFields(
            order_id=self.order_id, client_id=self.client_id, perm_id=self.perm_id,
            con_id=self.con_id, symbol=self.symbol, action=self.action, qty=self.qty,
            order_type=self.order_type, lmt_price=self.lmt_price, aux_price=self.aux_price,
            tif=self.tif, account=self.account, order_ref=self.order_ref,
            outside_rth=self.outside_rth, status=self.status, filled=self.filled,
            completed_time=self.completed_time, completed_status=self.completed_status)


@dataclass(frozen=True, slots=True)
class FakeExecution:
    exec_id: str
    order: FakeOrder
    shares: Decimal
    price: Decimal
    cum_qty: Decimal
    avg_price: Decimal
    commission: Decimal
    time: datetime

    def fields(self) -> ExecFields:
        o = self.order
        return ExecFields(
            exec_id=self.exec_id, order_id=o.order_id, client_id=o.client_id,
            perm_id=o.perm_id, con_id=o.con_id, symbol=o.symbol, time=ib_time(self.time),
            account=o.account, side="BOT" if o.action == "BUY" else "SLD",
            shares=self.shares, price=self.price, cum_qty=self.cum_qty,
            avg_price=self.avg_price, order_ref=o.order_ref)


@dataclass(slots=True)
class Holding:
    qty: Decimal = ZERO
    cost: Decimal = ZERO  # what the open position cost, commissions included

    @property
    def avg_cost(self) -> Decimal:
        return self.cost / self.qty if self.qty else ZERO


def ib_time(ts: datetime) -> str:
    """Execution times as TWS writes them: exchange-local with the zone name."""
    return f"{ts.astimezone(NEW_YORK):%Y%m%d %H:%M:%S} America/New_York"


@dataclass(slots=True)
class Books:
    """Accounts, orders and executions of the fake."""

    accounts: tuple[str, ...]
    cash: dict[str, Decimal]
    commission_per_share: Decimal = Decimal("0.0035")
    min_commission: Decimal = Decimal("0.35")
    prices: dict[str, Decimal] = field(default_factory=dict)
    orders: dict[int, FakeOrder] = field(default_factory=dict)  # by permId
    executions: list[FakeExecution] = field(default_factory=list)
    holdings: dict[tuple[str, str], Holding] = field(default_factory=dict)
    exec_prefix: str = "0000e0d5"
    _perm: itertools.count[int] = field(default_factory=lambda: itertools.count(1_000_001))
    _exec_seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_perm_id(self) -> int:
        return next(self._perm)

    def con_id(self, symbol: str) -> int:
        return 100_000 + sum(ord(c) * 31 ** i for i, c in enumerate(symbol)) % 900_000

    def commission(self, shares: Decimal) -> Decimal:
        return max(self.min_commission, shares * self.commission_per_share)

    def execute(self, order: FakeOrder, shares: Decimal, price: Decimal,
                now: datetime) -> FakeExecution:
        """Book one execution: the order, the position, the cash."""
        commission = self.commission(shares)
        order.filled += shares
        order.notional += shares * price
        signed = shares if order.action == "BUY" else -shares
        self.cash[order.account] -= signed * price + commission
        self._hold(order.account, order.symbol, signed, price, commission)
        ex = FakeExecution(
            exec_id=f"{self.exec_prefix}.{next(self._exec_seq):08x}.01.01", order=order,
            shares=shares, price=price, cum_qty=order.filled, avg_price=order.avg_price,
            commission=commission, time=now)
        self.executions.append(ex)
        return ex

    def _hold(self, account: str, symbol: str, signed: Decimal, price: Decimal,
              commission: Decimal) -> None:
        h = self.holdings.setdefault((account, symbol), Holding())
        if h.qty == 0 or (h.qty > 0) == (signed > 0):
            # IB folds commissions into the cost: a long's rises, a short's falls.
            h.cost += signed * price + commission
            h.qty += signed
            return
        closing = min(abs(signed), abs(h.qty)) * (1 if signed > 0 else -1)
        h.cost -= h.avg_cost * -closing  # the closed part leaves at its average cost
        h.qty += closing
        rest = signed - closing
        if rest:  # crossed through zero: the remainder opens at this price
            h.cost = rest * price + commission
            h.qty = rest
        elif h.qty == 0:
            h.cost = ZERO

    def net_liquidation(self, account: str) -> Decimal:
        value = sum((h.qty * self.prices.get(sym, ZERO)
                     for (acct, sym), h in self.holdings.items() if acct == account), ZERO)
        return self.cash[account] + value

    def positions(self, account: str) -> dict[str, Holding]:
        return {sym: h for (acct, sym), h in self.holdings.items() if acct == account and h.qty}

    def snapshot(self) -> dict[str, Any]:
        """Everything, as JSON-ready text (the control channel's ``snapshot``)."""
        account = self.accounts[0]
        return {
            "accounts": list(self.accounts),
            "cash": {a: str(c) for a, c in self.cash.items()},
            "account": {"cash": str(self.cash[account]),
                        "net_liquidation": str(self.net_liquidation(account))},
            "orders": [{"order_ref": o.order_ref, "perm_id": o.perm_id, "order_id": o.order_id,
                        "client_id": o.client_id, "symbol": o.symbol, "action": o.action,
                        "qty": str(o.qty), "filled": str(o.filled), "status": o.status,
                        "order_type": o.order_type, "account": o.account}
                       for o in self.orders.values()],
            "executions": [{"exec_id": e.exec_id, "order_ref": e.order.order_ref,
                            "perm_id": e.order.perm_id, "symbol": e.order.symbol,
                            "side": e.order.action, "shares": str(e.shares),
                            "price": str(e.price), "cum_qty": str(e.cum_qty),
                            "commission": str(e.commission)} for e in self.executions],
            "positions": {sym: {"qty": str(h.qty), "avg_cost": str(h.avg_cost)}
                          for sym, h in self.positions(account).items()},
            "prices": {s: str(p) for s, p in self.prices.items()},
        }

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)


__all__ = ["Books", "FakeExecution", "FakeOrder", "Holding", "ib_time"]
