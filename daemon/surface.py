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
from collections.abc import Awaitable, Callable, Mapping
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
        """``regular``, ``pre-market``, ``after-hours`` or ``closed``."""
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
    """``TradingSurface`` over today's ``Daemon`` (the lead re-points this adapter)."""

    def __init__(self, daemon: Daemon, *, feed_stale_secs: float = 180.0) -> None:
        self._d = daemon
        self._stale = feed_stale_secs
        self.link = BrokerLink(daemon.broker.name)
        self.feed = FeedWatch()
        daemon.bus.subscribe(BrokerStatusChanged, self.link.on_status)
        daemon.bus.subscribe(BarBatch, self.feed.on_bars)

    @property
    def control(self) -> Mapping[str, ControlHandler]:
        return self._d.control.handlers

    @property
    def journal_path(self) -> Path | None:
        return self._d.journal.path if self._d.journal is not None else None

    @property
    def state_dir(self) -> Path:
        return Path(self._d.state_dir)

    def status(self) -> dict[str, Any]:
        # Exactly what the control socket's "status" command answers (minus "ok").
        return {"running": True, **self._d.status()}

    def broker_connected(self) -> bool:
        return self._connected()

    def orders(self, *, limit: int) -> dict[str, Any]:
        om = self._d.orders
        today = trading_day(self._d.clock.now())
        day = [o for o in om.orders.values() if trading_day(o.created_ts) == today]
        day.sort(key=lambda o: o.created_ts, reverse=True)
        limit = max(0, min(limit, _DAY_ORDERS_MAX))
        return {"day": today, "open": [order_json(o) for o in om.open_orders()],
                "today": [order_json(o) for o in day[:limit]], "today_total": len(day)}

    def readiness(self) -> list[str]:
        reasons = []
        if not self._d.reconciler.ready:
            reasons.append("reconciling: books not yet confirmed with the broker")
        if not self._connected():
            down = time.monotonic() - self.link.since
            reasons.append(f"broker: {self.link.status or 'not connected'} "
                           f"for {down:.0f}s")
        feed = self._feed_reason()
        if feed:
            reasons.append(feed)
        return reasons

    def _feed_reason(self) -> str | None:
        if self.session_phase() != "regular":
            return None  # no bars are expected outside the regular session
        age = self.feed.age()
        if age is None:
            return "feed: no bar received yet"
        if age > self._stale:
            return f"feed: last bar {age:.0f}s ago (stale after {self._stale:.0f}s)"
        return None

    def _connected(self) -> bool:
        return self.link.connected(reconciled=self._d.reconciler.runs > 0)

    def figures(self) -> Figures:
        d = self._d
        p, st = d.portfolio, d.stats
        return Figures(
            orders_submitted=st.orders, fills=st.fills, broker_rejects=st.rejected,
            signals=st.signals, denials=Counter(st.denied), equity=p.equity(), cash=p.cash,
            gross_exposure=p.gross_exposure(), realized_pnl=p.realized_pnl(),
            unrealized_pnl=p.unrealized_pnl(), start_of_day_equity=d.marks.start_of_day,
            open_orders=len(d.orders.open_orders()), trading_state=str(d.risk_state.state),
            broker_connected=self._connected(), ready=d.reconciler.ready,
            positions={s: pos.qty for s, pos in p.positions.items() if pos.qty})

    def loop_beat_age(self) -> float | None:
        return self._d.notifier.beat_age()

    def session_phase(self) -> str:
        return market_phase(self._d.market, self._d.clock.now())

    def order(self, client_order_id: str) -> dict[str, Any] | None:
        o = self._d.orders.orders.get(client_order_id)
        return order_json(o) if o is not None else None

    def now(self) -> datetime:
        return self._d.clock.now()

    def stop_reason(self) -> str:
        return self._d._stop_reason

    def subscribe(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        self._d.bus.subscribe(event_type, handler)


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
