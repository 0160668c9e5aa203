"""What the operator surface (HTTP, metrics, alerts) needs from a running trading system.

``TradingSurface`` is the one seam between the two: the HTTP server, the Prometheus
collector and the alerts only ever talk to it. ``DaemonSurface`` makes today's single
``daemon.app.Daemon`` satisfy it in a few lines; when the daemon becomes a supervisor of
one ``TradingSystem`` per broker account, this adapter is what gets re-pointed (and the
status document keeps its single-account shape).

Readiness (``GET /readyz``) is the conjunction of three facts, each with a reason when
false: the books are reconciled with the broker, the broker is connected, and the feed is
fresh (a bar within ``feed_stale_secs`` of wall time while the market is open).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from kernel.events import BarBatch, BrokerStatusChanged, Event
from kernel.orders import Order
from kernel.time import NEW_YORK, trading_day

if TYPE_CHECKING:
    from daemon.app import Daemon
    from engine.system import TradingSystem

ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
E = TypeVar("E", bound=Event)

# Broker statuses (``BrokerStatusChanged.status``) under which the broker is reachable.
_CONNECTED = frozenset({"connected", "ready", "recovering"})
_DAY_ORDERS_MAX = 1000


@dataclass(frozen=True, slots=True)
class Figures:
    """The numbers ``/metrics`` exposes, read at scrape time (nothing is counted twice:
    these are the session's own counters and books)."""

    orders_submitted: int
    fills: int
    broker_rejects: int
    signals: int
    denials: Mapping[str, int]
    equity: Decimal
    cash: Decimal
    gross_exposure: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    start_of_day_equity: Decimal | None
    open_orders: int
    trading_state: str
    broker_connected: bool
    ready: bool
    positions: Mapping[str, int] = field(default_factory=dict)


class TradingSurface(Protocol):
    """One trading system as the operator surface sees it (see the module doc)."""

    @property
    def control(self) -> Mapping[str, ControlHandler]:
        """Command name -> the same async handler the CLI's control socket runs."""
        ...

    @property
    def journal_path(self) -> Path | None:
        """The journal file, read read-only for rejects and the equity curve."""
        ...

    def status(self) -> dict[str, Any]:
        """The ``tradingd status --json`` document of the running system."""
        ...

    def orders(self, *, limit: int) -> dict[str, Any]:
        """Open orders and (newest first, at most ``limit``) the day's orders."""
        ...

    def readiness(self) -> list[str]:
        """Why the system is not ready to trade; empty when it is."""
        ...

    def figures(self) -> Figures: ...

    def broker_connected(self) -> bool: ...

    def loop_beat_age(self) -> float | None:
        """Seconds since the event loop's watchdog beat (None: not started yet)."""
        ...

    def session_phase(self) -> str:
        """Where the trading day stands: in a live session the lifecycle's phase
        (``preflight``, ``warmup``, ``open``, ``closing``, ``closed``, ``holiday``); in a
        replay the market's (``regular``, ``pre-market``, ``after-hours``, ``closed``)."""
        ...

    def order(self, client_order_id: str) -> dict[str, Any] | None:
        """One order of the session as JSON (``order_json``), if known."""
        ...

    def now(self) -> datetime:
        """The system's clock (bar time in a replay)."""
        ...

    def stop_reason(self) -> str: ...

    def subscribe(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        """Call ``handler`` for every event of ``event_type`` on the system's bus. The
        handler runs inside the bus dispatch: it must only do O(1) work and never await."""
        ...


class BrokerLink:
    """Whether the broker is connected, from its ``BrokerStatusChanged`` reports.

    A broker that never reports (the in-process paper broker) counts as connected once
    the books have been reconciled with it, which proves it answers.
    """

    def __init__(self, broker_name: str) -> None:
        self._name = broker_name
        self.status: str | None = None
        self.since = time.monotonic()

    def on_status(self, event: BrokerStatusChanged) -> None:
        if event.broker != self._name:
            return  # the reconciler's own ":reconcile" readiness is not the connection
        if (event.status in _CONNECTED) != (self.status in _CONNECTED):
            self.since = time.monotonic()
        self.status = event.status

    def connected(self, *, reconciled: bool) -> bool:
        return self.status in _CONNECTED if self.status is not None else reconciled


class FeedWatch:
    """Wall time of the last bar batch (one ``time.monotonic()`` per batch)."""

    def __init__(self) -> None:
        self.last: float | None = None

    def on_bars(self, _batch: BarBatch) -> None:
        self.last = time.monotonic()

    def age(self) -> float | None:
        return None if self.last is None else time.monotonic() - self.last


def order_json(o: Order) -> dict[str, Any]:
    avg = o.avg_fill_price
    return {
        "client_order_id": o.client_order_id, "symbol": o.symbol, "side": str(o.side),
        "qty": o.qty, "filled_qty": o.filled_qty, "status": str(o.status),
        "type": str(o.order_type), "time_in_force": str(o.time_in_force),
        "limit_price": _s(o.limit_price), "reference_price": _s(o.reference_price),
        "avg_fill_price": None if avg is None else str(avg.quantize(Decimal("0.0001"))),
        "created": o.created_ts.isoformat(), "signal_id": o.signal_id,
    }


def _s(v: Decimal | None) -> str | None:
    return None if v is None else str(v)


class DaemonSurface:
    """``TradingSurface`` over the ``Daemon``: one account, or the sum of several.

    Figures and status add up every account (each order names its account); readiness
    lists every account that is not reconciled or not connected; events come from every
    account's bus, market data from the daemon's own bus (so it is seen once).
    """

    def __init__(self, daemon: Daemon, *, feed_stale_secs: float = 180.0) -> None:
        self._d = daemon
        self._stale = feed_stale_secs
        self.links = {s.name: BrokerLink(s.broker.name) for s in daemon.systems}
        self.feed = FeedWatch()
        for s in daemon.systems:
            s.bus.subscribe(BrokerStatusChanged, self.links[s.name].on_status)
        daemon.bus.subscribe(BarBatch, self.feed.on_bars)

    @property
    def control(self) -> Mapping[str, ControlHandler]:
        return self._d.control.handlers

    @property
    def journal_path(self) -> Path | None:
        """The first account's journal (rejects and the equity curve of ``/api``)."""
        journal = self._d.system.journal
        return journal.path if journal is not None else None

    @property
    def state_dir(self) -> Path:
        return Path(self._d.state_dir)

    def status(self) -> dict[str, Any]:
        # Exactly what the control socket's "status" command answers (minus "ok").
        return {"running": True, **self._d.status()}

    def broker_connected(self) -> bool:
        return all(self._connected(s) for s in self._d.systems)

    def orders(self, *, limit: int) -> dict[str, Any]:
        today = trading_day(self._d.clock.now())
        many = len(self._d.systems) > 1
        open_: list[dict[str, Any]] = []
        day: list[tuple[Order, str]] = []
        for s in self._d.systems:
            om = s.orders
            for o in om.open_orders():
                open_.append(_with_account(order_json(o), s.name, many))
            day.extend((o, s.name) for o in om.orders.values()
                       if trading_day(o.created_ts) == today)
        day.sort(key=lambda pair: pair[0].created_ts, reverse=True)
        limit = max(0, min(limit, _DAY_ORDERS_MAX))
        return {"day": today, "open": open_,
                "today": [_with_account(order_json(o), name, many) for o, name in day[:limit]],
                "today_total": len(day)}

    def readiness(self) -> list[str]:
        reasons = []
        for s in self._d.systems:
            who = f" ({s.name})" if len(self._d.systems) > 1 else ""
            if not s.ready:
                reasons.append(f"reconciling{who}: books not yet confirmed with the broker")
            if not self._connected(s):
                link = self.links[s.name]
                down = time.monotonic() - link.since
                reasons.append(f"broker{who}: {link.status or 'not connected'} "
                               f"for {down:.0f}s")
        feed = self._feed_reason()
        if feed:
            reasons.append(feed)
        return reasons

    def _feed_reason(self) -> str | None:
        if market_phase(self._d.market, self._d.clock.now()) != "regular":
            return None  # no bars are expected outside the regular session
        age = self.feed.age()
        if age is None:
            return "feed: no bar received yet"
        if age > self._stale:
            return f"feed: last bar {age:.0f}s ago (stale after {self._stale:.0f}s)"
        return None

    def _connected(self, s: TradingSystem) -> bool:
        return s.connected and self.links[s.name].connected(reconciled=s.reconciler.runs > 0)

    def figures(self) -> Figures:
        systems = self._d.systems
        denials: Counter[str] = Counter()
        positions: Counter[str] = Counter()
        for s in systems:
            denials.update(s.stats.denied)
            positions.update({sym: p.qty for sym, p in s.portfolio.positions.items() if p.qty})
        starts = [s.marks.start_of_day for s in systems]
        rank = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}
        return Figures(
            orders_submitted=sum(s.stats.orders for s in systems),
            fills=sum(s.stats.fills for s in systems),
            broker_rejects=sum(s.stats.rejected for s in systems),
            signals=sum(s.stats.signals for s in systems), denials=denials,
            equity=_total(s.portfolio.equity() for s in systems),
            cash=_total(s.portfolio.cash for s in systems),
            gross_exposure=_total(s.portfolio.gross_exposure() for s in systems),
            realized_pnl=_total(s.portfolio.realized_pnl() for s in systems),
            unrealized_pnl=_total(s.portfolio.unrealized_pnl() for s in systems),
            start_of_day_equity=(None if any(v is None for v in starts)
                                 else _total(v for v in starts if v is not None)),
            open_orders=sum(len(s.orders.open_orders()) for s in systems),
            trading_state=max((str(s.risk_state.state) for s in systems),
                              key=lambda x: rank.get(x, 0)),
            broker_connected=self.broker_connected(), ready=self._d.ready,
            positions={k: v for k, v in positions.items() if v})

    def loop_beat_age(self) -> float | None:
        return self._d.supervisor.notifier.beat_age()

    def session_phase(self) -> str:
        return self._d.session_phase or market_phase(self._d.market, self._d.clock.now())

    def order(self, client_order_id: str) -> dict[str, Any] | None:
        for s in self._d.systems:
            o = s.orders.orders.get(client_order_id)
            if o is not None:
                return _with_account(order_json(o), s.name, len(self._d.systems) > 1)
        return None

    def now(self) -> datetime:
        return self._d.clock.now()

    def stop_reason(self) -> str:
        return self._d.supervisor.stop_reason

    def subscribe(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        """Bar batches from the daemon's bus (seen once); everything else, signal batches
        included (each account's routed share, dispatched with its orders), from every
        account's bus."""
        if issubclass(event_type, BarBatch):
            self._d.bus.subscribe(event_type, handler)
            return
        for s in self._d.systems:
            s.bus.subscribe(event_type, handler)


def _with_account(doc: dict[str, Any], account: str, many: bool) -> dict[str, Any]:
    return {**doc, "account": account} if many else doc


def _total(values: Iterable[Decimal]) -> Decimal:
    return sum(values, Decimal(0))


class _Hours(Protocol):
    def is_open(self, now: datetime, *, extended: bool = False) -> bool: ...


def market_phase(market: _Hours, now: datetime) -> str:
    """The session phase of ``now``: regular, pre-market, after-hours or closed."""
    if market.is_open(now):
        return "regular"
    if market.is_open(now, extended=True):
        noon = now.astimezone(NEW_YORK).replace(hour=12, minute=0)
        return "pre-market" if now < noon else "after-hours"
    return "closed"

__all__ = ["BrokerLink", "DaemonSurface", "FeedWatch", "Figures", "TradingSurface",
           "market_phase", "order_json"]
