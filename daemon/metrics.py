"""Prometheus metrics, exposed at ``GET /metrics`` with ``prometheus_client``'s aiohttp handler.

The hot path (bar batch -> signals -> gate -> order) pays nothing for them: counters,
gauges and the trading state are read at scrape time from the session's own counters
and books (``TradingSurface.figures()``) by a custom collector. Only the two histograms
observe as things happen, once per signal batch and once per order, never per denial.

========================================  =========  ===============================================
name                                      type       what
========================================  =========  ===============================================
``tradingd_orders_submitted_total``       counter    orders handed to the broker this session
``tradingd_fills_total``                  counter    executions booked this session
``tradingd_gate_denials_total{reason}``   counter    pre-trade gate denials by reason code
``tradingd_broker_rejects_total``         counter    orders the broker refused
``tradingd_signals_total``                counter    signals received (model, rules, MQTT)
``tradingd_reconcile_drift_total``        counter    unexplained reconciliation drift found
``tradingd_equity_dollars``               gauge      cash + marked positions
``tradingd_cash_dollars``                 gauge      cash
``tradingd_gross_exposure_dollars``       gauge      sum of |market value| of positions
``tradingd_pnl_today_dollars``            gauge      equity - start-of-day equity
``tradingd_realized_pnl_dollars``         gauge      realized P&L of the books
``tradingd_unrealized_pnl_dollars``       gauge      unrealized P&L of open positions
``tradingd_open_orders``                  gauge      orders working at the broker
``tradingd_trading_state{state}``         gauge      1 for the current state, else 0
``tradingd_broker_connected``             gauge      1 while the broker is connected
``tradingd_ready``                        gauge      1 when /readyz would answer 200
``tradingd_loop_beat_age_seconds``        gauge      since the event loop's watchdog beat
``tradingd_events_stream_clients``        gauge      open /api/events streams
``tradingd_events_stream_dropped_total``  counter    events dropped for slow stream clients
``tradingd_alerts_total{result}``         counter    webhook alerts: sent, failed, deduped, ...
``tradingd_http_refused_total{reason}``   counter    HTTP requests refused (host, token)
``tradingd_bar_to_order_seconds``         histogram  bar batch (or signal message) in to order out
``tradingd_signal_age_seconds``           histogram  signal batch age when it reached sizing
``tradingd_build_info{version,...}``      gauge      1, with the version in labels
``tradingd_position_shares{symbol}``      gauge      only with ``http.symbol_metrics`` and a small
                                                     configured universe
========================================  =========  ===============================================
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon.surface import Figures, TradingSurface
from kernel.events import AlertRaised, OrderSubmitted, SignalBatch
from risk.reasons import ReasonCode
from risk.state import TradingState

MAX_SYMBOL_LABELS = 100
BAR_TO_ORDER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                        1.0, 2.5)
SIGNAL_AGE_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 90.0, 120.0, 300.0, 900.0)

# Extra samples other components (the event stream hub, the alerts) expose.
Extra = Callable[[], Iterable[Metric]]


def _version() -> str:
    try:
        return metadata.version("tradingd")
    except metadata.PackageNotFoundError:
        return "unknown"


class SurfaceCollector(Collector):
    """Builds every counter and gauge from ``surface.figures()`` at scrape time."""

    def __init__(self, surface: TradingSurface, *, labels: Mapping[str, str],
                 symbols: tuple[str, ...] = (), extras: tuple[Extra, ...] = ()) -> None:
        self._surface = surface
        self._labels = dict(labels)
        self._symbols = symbols
        self._extras = extras
        self.drift = 0  # reconcile.drift alerts seen (rare: counted as they happen)

    def on_alert(self, event: AlertRaised) -> None:
        if event.name == "reconcile.drift":
            self.drift += 1

    def collect(self) -> Iterable[Metric]:
        f = self._surface.figures()
        yield from self._counters(f)
        yield from self._money(f)
        yield from self._state(f)
        for extra in self._extras:
            yield from extra()
        info = GaugeMetricFamily("tradingd_build_info", "tradingd build and run labels",
                                 labels=sorted(self._labels))
        info.add_metric([self._labels[k] for k in sorted(self._labels)], 1)
        yield info

    def _counters(self, f: Figures) -> Iterable[Metric]:
        for name, doc, value in (
            ("tradingd_orders_submitted", "Orders handed to the broker this session",
             f.orders_submitted),
            ("tradingd_fills", "Executions booked this session", f.fills),
            ("tradingd_broker_rejects", "Orders the broker refused this session",
             f.broker_rejects),
            ("tradingd_signals", "Signals received this session", f.signals),
            ("tradingd_reconcile_drift", "Unexplained reconciliation drift found",
             self.drift),
        ):
            yield CounterMetricFamily(name, doc, value=value)
        denials = CounterMetricFamily("tradingd_gate_denials",
                                      "Pre-trade gate denials by reason code",
                                      labels=["reason"])
        # Every stable code is exported (at 0 until it happens), so rate() works at once.
        for reason in sorted({*ReasonCode, *f.denials}):
            denials.add_metric([str(reason)], f.denials.get(reason, 0))
        yield denials

    def _money(self, f: Figures) -> Iterable[Metric]:
        pnl_today = f.equity - f.start_of_day_equity if f.start_of_day_equity else None
        for name, doc, value in (
            ("tradingd_equity_dollars", "Cash plus marked positions", f.equity),
            ("tradingd_cash_dollars", "Cash", f.cash),
            ("tradingd_gross_exposure_dollars", "Sum of |market value| of positions",
             f.gross_exposure),
            ("tradingd_realized_pnl_dollars", "Realized P&L of the books", f.realized_pnl),
            ("tradingd_unrealized_pnl_dollars", "Unrealized P&L of open positions",
             f.unrealized_pnl),
            ("tradingd_pnl_today_dollars", "Equity minus start-of-day equity", pnl_today),
        ):
            if value is not None:
                yield GaugeMetricFamily(name, doc, value=float(value))
        if self._symbols:
            pos = GaugeMetricFamily("tradingd_position_shares", "Signed shares held",
                                    labels=["symbol"])
            for sym in self._symbols:
                pos.add_metric([sym], f.positions.get(sym, 0))
            yield pos

    def _state(self, f: Figures) -> Iterable[Metric]:
        state = GaugeMetricFamily("tradingd_trading_state", "1 for the current trading state",
                                  labels=["state"])
        for s in TradingState:
            state.add_metric([str(s)], 1 if f.trading_state == s else 0)
        yield state
        yield GaugeMetricFamily("tradingd_broker_connected", "1 while the broker is connected",
                                value=int(f.broker_connected))
        yield GaugeMetricFamily("tradingd_ready", "1 when ready to trade (see /readyz)",
                                value=int(f.ready))
        yield GaugeMetricFamily("tradingd_open_orders", "Orders working at the broker",
                                value=f.open_orders)
        age = self._surface.loop_beat_age()
        if age is not None:
            yield GaugeMetricFamily("tradingd_loop_beat_age_seconds",
                                    "Seconds since the event loop's watchdog beat", value=age)


class LatencyObserver:
    """The two histograms. ``on_signals`` runs once per signal batch, ``on_submitted``
    once per order; both are O(batch size) at most."""

    def __init__(self, surface: TradingSurface, registry: CollectorRegistry) -> None:
        self._surface = surface
        self._batch: SignalBatch | None = None
        self.bar_to_order = Histogram(
            "tradingd_bar_to_order_seconds",
            "From a bar batch (or an external signal message) entering the daemon to the "
            "order manager taking one of its orders", buckets=BAR_TO_ORDER_BUCKETS,
            registry=registry)
        self.signal_age = Histogram(
            "tradingd_signal_age_seconds",
            "Age of a signal batch (clock minus its timestamp) when it reached sizing",
            buckets=SIGNAL_AGE_BUCKETS, registry=registry)

    def on_signals(self, batch: SignalBatch) -> None:
        self._batch = batch
        age = (self._surface.now() - batch.ts).total_seconds()
        self.signal_age.observe(max(0.0, age))

    def on_submitted(self, event: OrderSubmitted) -> None:
        batch = self._batch
        if batch is None or not batch.received_ns:
            return
        order = self._surface.order(event.client_order_id)
        sid = order["signal_id"] if order is not None else None
        # Only orders of the batch just dispatched (liquidations and risk exits have no
        # signal; an approved order's signal belongs to an older batch).
        if sid is not None and any(s.id == sid for s in batch.signals):
            self.bar_to_order.observe((time.perf_counter_ns() - batch.received_ns) / 1e9)


class Metrics:
    """The registry served at ``/metrics``: the surface collector and the histograms."""

    def __init__(self, surface: TradingSurface, *,
                 labels: Mapping[str, str], symbols: tuple[str, ...] = (),
                 extras: tuple[Extra, ...] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        build = {"version": _version(), "python": platform.python_version(), **labels}
        self.collector = SurfaceCollector(surface, labels=build,
                                          symbols=symbols[:MAX_SYMBOL_LABELS], extras=extras)
        self.registry.register(self.collector)
        self.latency = LatencyObserver(surface, self.registry)
        surface.subscribe(SignalBatch, self.latency.on_signals)
        surface.subscribe(OrderSubmitted, self.latency.on_submitted)
        surface.subscribe(AlertRaised, self.collector.on_alert)


__all__ = ["Extra", "LatencyObserver", "Metrics", "SurfaceCollector"]
