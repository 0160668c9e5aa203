"""The operator surface around one trading system: HTTP server, metrics, event stream and
alerts, built from the ``http`` and ``alerts`` settings and entered around the daemon::

    code = await run_operated(Daemon(settings))

``Operations`` is an async context manager that owns the HTTP server (when enabled: on
by default in a live session, off in a replay) and the alerts (when webhooks are
configured). It talks to the daemon only through ``TradingSurface``. Leaving it after the
daemon has stopped raises the ``daemon.stopped`` alert and gives queued alerts
``alerts.stop_flush_secs`` to go out.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING

import structlog
from prometheus_client.core import Metric

from config.settings import Settings
from daemon.alerts import Alerts
from daemon.http import HttpServer, overview
from daemon.http_events import EventHub
from daemon.journal_views import JournalViews
from daemon.metrics import MAX_SYMBOL_LABELS, Metrics
from daemon.surface import DaemonSurface, TradingSurface
from kernel import logging as dlog

if TYPE_CHECKING:
    from daemon.app import Daemon

log = structlog.get_logger("daemon.operations")


class Operations:
    """HTTP, metrics and alerts for ``surface`` (see the module doc)."""

    def __init__(self, settings: Settings, surface: TradingSurface) -> None:
        self.settings = settings
        self.surface = surface
        replay = settings.feed.source == "replay"
        labels = {"broker": settings.broker.kind, "mode": settings.daemon.mode}
        self.alerts = Alerts(settings.alerts, surface, labels=labels)
        self.http: HttpServer | None = None
        self._stack = contextlib.AsyncExitStack()
        self._stopped_reported = False
        cfg = settings.http
        if not cfg.is_enabled(replay=replay):
            return
        if cfg.token is not None:
            dlog.register_secret(cfg.token.get_secret_value())
        hub = EventHub(surface, queue_size=cfg.sse_queue, max_clients=cfg.sse_clients,
                       overview=functools.partial(overview, surface),
                       push_secs=cfg.status_push_secs)
        metrics = Metrics(surface, labels=labels, symbols=_symbol_labels(settings),
                          extras=(hub.metrics, self.alerts.metrics, self._http_samples))
        self.http = HttpServer(cfg, surface, metrics=metrics, hub=hub,
                               journal=JournalViews(surface.journal_path))

    def _http_samples(self) -> Iterable[Metric]:
        return self.http.metrics_samples() if self.http is not None else ()

    async def __aenter__(self) -> Operations:
        await self._stack.enter_async_context(self.alerts)
        if self.http is not None:
            await self._stack.enter_async_context(self.http)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self._stopped_reported:
            self.stopped(1 if e is not None else 0)
        await self._stack.aclose()

    def stopped(self, code: int) -> None:
        """Report that the daemon stopped with exit ``code`` (alerts it once)."""
        self._stopped_reported = True
        self.alerts.stopped(self.surface.stop_reason(), code)


def _symbol_labels(settings: Settings) -> tuple[str, ...]:
    if not settings.http.symbol_metrics:
        return ()
    universe = tuple(sorted(settings.risk.symbols))
    if not universe or len(universe) > MAX_SYMBOL_LABELS:
        log.warning("metrics.symbol_labels_off", symbols=len(universe),
                    why=f"needs a configured universe of 1..{MAX_SYMBOL_LABELS} risk.symbols")
        return ()
    return universe


def operations_for(daemon: Daemon) -> Operations:
    """``Operations`` over today's single-account ``Daemon``."""
    surface = DaemonSurface(daemon, feed_stale_secs=daemon.settings.http.feed_stale_secs)
    return Operations(daemon.settings, surface)


async def run_operated(daemon: Daemon) -> int:
    """Run ``daemon`` inside its operator surface; returns the daemon's exit code."""
    async with operations_for(daemon) as ops:
        code = await daemon.run()
        ops.stopped(code)
    return code


__all__ = ["Operations", "operations_for", "run_operated"]
