"""Several accounts in one daemon: routing signals to them, and their totals.

``Accounts`` holds the daemon's trading systems in their configured order.

Routing (``route``) splits a signal batch into one batch per account, symbol by symbol:

1. A symbol an account holds or works (position or open order) stays with that account,
   so a position is never split or doubled across brokers; if that account cannot trade
   now, the signal is refused (``ROUTE_UNAVAILABLE``), since another account opening the
   same target would double it.
2. A flat symbol goes to the account whose ``symbols`` list has it, else to the preferred
   account. If that one cannot trade now (broker disconnected, reconciling, halted):
   with ``failover`` the first account of the failover order that can takes it; without,
   the signal is refused.

A refusal is a ``SignalRejected(reason="ROUTE_UNAVAILABLE")`` on the bus of the account
the signal was meant for (so it is journaled and counted there) and a ``route.refused``
log line. Each account then sizes and gates its share on its own books and limits.

Totals (``others``, ``total``) feed the global limits of every account's gate and the
``total`` block of ``tradingd status``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from decimal import Decimal
from typing import Any

import structlog

from engine.config import AccountConfig, RoutingConfig
from engine.system import TradingSystem
from kernel.events import SignalBatch, SignalRejected
from kernel.model import CENT, Signal

log = structlog.get_logger("engine.routing")

ROUTE_UNAVAILABLE = "ROUTE_UNAVAILABLE"
ZERO = Decimal(0)


class Accounts:
    """The daemon's accounts, their routing table and their totals."""

    def __init__(self, routing: RoutingConfig, accounts: Sequence[AccountConfig] = ()) -> None:
        self._routing = routing
        self._configs = list(accounts)
        self.systems: list[TradingSystem] = []
        self._by_name: dict[str, TradingSystem] = {}
        self._table: dict[str, str] = {s: a.name for a in accounts for s in a.symbols}
        self.refused: Counter[str] = Counter()
        self.routed: Counter[str] = Counter()

    def add(self, system: TradingSystem) -> None:
        self.systems.append(system)
        self._by_name[system.name] = system

    def __iter__(self) -> Iterator[TradingSystem]:
        return iter(self.systems)

    def __len__(self) -> int:
        return len(self.systems)

    def get(self, name: str) -> TradingSystem | None:
        return self._by_name.get(name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.systems]

    # -- routing -------------------------------------------------------------------------

    def route(self, batch: SignalBatch) -> list[tuple[TradingSystem, SignalBatch]]:
        """Split ``batch`` by account (see the module doc)."""
        if len(self.systems) == 1:
            only = self.systems[0]
            self.routed[only.name] += len(batch.signals)
            return [(only, batch)]
        shares: dict[str, list[Signal]] = {}
        for sig in batch.signals:
            target = self._account_for(sig)
            if target is not None:
                shares.setdefault(target.name, []).append(sig)
        out = []
        for name, sigs in shares.items():
            self.routed[name] += len(sigs)
            out.append((self._by_name[name], SignalBatch(ts=batch.ts, source=batch.source,
                                                         signals=tuple(sigs),
                                                         received_ns=batch.received_ns)))
        return out

    def _account_for(self, sig: Signal) -> TradingSystem | None:
        holder = self._holder(sig.symbol)
        if holder is not None:
            if holder.available:
                return holder
            self._refuse(sig, holder, f"its position is at {holder.name}, "
                                      "which cannot trade now")
            return None
        home = self._home(sig.symbol)
        if home.available:
            return home
        if self._routing.failover:
            for name in self._failover_order():
                candidate = self._by_name[name]
                if candidate is not home and candidate.available:
                    log.info("route.failover", symbol=sig.symbol, signal_id=sig.id,
                             preferred=home.name, to=candidate.name)
                    return candidate
        self._refuse(sig, home, f"{home.name} cannot trade now"
                     + (" and no other account can" if self._routing.failover else ""))
        return None

    def _holder(self, symbol: str) -> TradingSystem | None:
        best, size = None, 0
        for s in self.systems:
            held = abs(s.portfolio.qty(symbol)) + abs(s.orders.working_qty(symbol))
            if held > size:
                best, size = s, held
        return best

    def _home(self, symbol: str) -> TradingSystem:
        name = self._table.get(symbol) or self._routing.preferred or self.systems[0].name
        return self._by_name[name]

    def _failover_order(self) -> list[str]:
        return self._routing.order or self.names

    def _refuse(self, sig: Signal, at: TradingSystem, why: str) -> None:
        self.refused[at.name] += 1
        log.warning("route.refused", reason=ROUTE_UNAVAILABLE, symbol=sig.symbol,
                    signal_id=sig.id, account=at.name, detail=why,
                    connected=at.connected, ready=at.ready,
                    trading_state=str(at.risk_state.state))
        at.bus.publish(SignalRejected(ts=sig.ts, source=sig.source, reason=ROUTE_UNAVAILABLE,
                                      detail=why, signal_id=sig.id))

    # -- totals --------------------------------------------------------------------------

    def others(self, account: str) -> tuple[Decimal, Decimal]:
        """(equity, gross exposure with working orders) of every account but ``account``."""
        equity = gross = ZERO
        for s in self.systems:
            if s.name != account:
                e, g = s.gate.exposure()
                equity += e
                gross += g
        return equity, gross

    def total(self) -> dict[str, Any]:
        """Sums over every account, for ``tradingd status`` and the summary."""
        cash = equity = gross = realized = unrealized = ZERO
        positions: dict[str, int] = {}
        for s in self.systems:
            p = s.portfolio
            cash += p.cash
            equity += p.equity()
            gross += p.gross_exposure()
            realized += p.realized_pnl()
            unrealized += p.unrealized_pnl()
            for v in p.views():
                positions[v.symbol] = positions.get(v.symbol, 0) + v.qty
        return {"cash": str(cash.quantize(CENT)), "equity": str(equity.quantize(CENT)),
                "gross_exposure": str(gross.quantize(CENT)),
                "realized_pnl": str(realized.quantize(CENT)),
                "unrealized_pnl": str(unrealized.quantize(CENT)),
                "positions": {k: v for k, v in sorted(positions.items()) if v},
                "orders": sum(s.stats.orders for s in self.systems),
                "fills": sum(s.stats.fills for s in self.systems)}


__all__ = ["ROUTE_UNAVAILABLE", "Accounts"]
