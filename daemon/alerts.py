"""Webhook alerts: what an on-call person must hear about, delivered off the hot path.

Alerts (``name``: when; the *cause* is part of the dedupe key):

=======================  ===================================================================
``trading.halted``       the trading state became HALTED; cause: the event's ``why``
``trading.reducing``     the trading state became REDUCING; cause: the event's ``why``
``reconcile.drift``      reconciliation found unexplained drift (``AlertRaised``)
``broker.disconnected``  the broker has been disconnected for more than ``disconnect_secs``
``gate.reject_storm``    ``storm_denials`` gate denials within ``storm_window_secs``
``daemon.stopped``       the daemon stopped (reason and exit code)
any critical alert       ``AlertRaised`` with severity critical (risk breaches, overfills)
=======================  ===================================================================

Each webhook gets one JSON POST per alert: ``{"text": <a Slack-compatible line>, "alert",
"severity", "cause", "ts", "detail", "daemon": {"broker", "mode", "host"}}``.

Policy: the bus handlers only decide and enqueue (no I/O, no await). The same
(name, cause) is sent once per ``dedupe_secs``; at most ``max_per_minute`` alerts are
queued a minute; the queue holds ``queue_size`` and refuses more. Refusals are counted
(``tradingd_alerts_total{result}``) and logged. One task (``alerts.sender``) POSTs them,
retrying transient failures (connection errors, timeouts, 429, 5xx) with tenacity's
jittered exponential backoff; a 4xx is a definite refusal and is not retried. A stopping
daemon waits ``stop_flush_secs`` at most for queued alerts. Webhook URLs can carry
secrets (Slack's do): they are registered with the log scrubber and never logged; log
lines name a webhook by its index.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
import tenacity
from prometheus_client.core import CounterMetricFamily, Metric

from config.operations import AlertsConfig
from daemon.surface import TradingSurface
from kernel import logging as dlog
from kernel.events import AlertRaised, BrokerStatusChanged, TradingStateChanged

log = structlog.get_logger("daemon.alerts")

WATCH_SECS = 1.0
DEDUPE_MEMORY = 1024
_ICON = {"critical": ":rotating_light:", "warning": ":warning:", "info": ":information_source:"}


@dataclass(frozen=True, slots=True)
class Alert:
    name: str
    severity: str
    cause: str
    ts: str
    detail: Mapping[str, Any] = field(default_factory=dict)


class WebhookStatus(Exception):
    """The webhook answered with an HTTP error status."""

    def __init__(self, status: int) -> None:
        self.status = status
        super().__init__(f"HTTP {status}")


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, WebhookStatus):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, aiohttp.ClientError | TimeoutError)


class Alerts:
    """Raises, dedupes, rate-limits and delivers alerts (see the module doc). Enter it
    (``async with``) to run its tasks ``alerts.sender`` and ``alerts.watch``."""

    def __init__(self, cfg: AlertsConfig, surface: TradingSurface, *,
                 labels: Mapping[str, str], monotonic: Callable[[], float] = time.monotonic
                 ) -> None:
        self._cfg = cfg
        self._surface = surface
        self._labels = {**labels, "host": socket.gethostname()}
        self._mono = monotonic
        self._urls = [u.get_secret_value() for u in cfg.webhooks]
        for url in self._urls:
            dlog.register_secret(url)
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(cfg.queue_size)
        self._seen: dict[tuple[str, str], float] = {}
        self._recent: deque[float] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._down_since: float | None = None
        self._down_alerted = False
        self._denials: deque[tuple[float, int]] = deque()
        self.counts: Counter[str] = Counter()
        surface.subscribe(TradingStateChanged, self.on_state)
        surface.subscribe(AlertRaised, self.on_alert)
        surface.subscribe(BrokerStatusChanged, self.on_broker)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Alerts:
        if self._urls:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._cfg.timeout_secs))
            self._tasks.append(asyncio.create_task(self._send_loop(), name="alerts.sender"))
        self._tasks.append(asyncio.create_task(self._watch(), name="alerts.watch"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._urls and self._cfg.stop_flush_secs > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), self._cfg.stop_flush_secs)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if not self._queue.empty():
            self.counts["unsent_at_exit"] += self._queue.qsize()
            log.warning("alert.unsent_at_exit", alerts=self._queue.qsize())
        if self._session is not None:
            await self._session.close()

    # -- bus handlers: decide and enqueue, never await ------------------------------------

    def on_state(self, event: TradingStateChanged) -> None:
        if event.new in ("HALTED", "REDUCING") and event.old != event.new:
            self.raise_alert(f"trading.{event.new.lower()}",
                             "critical" if event.new == "HALTED" else "warning", event.why,
                             {"old": event.old, "new": event.new, "who": event.who})
        elif event.new in ("HALTED", "REDUCING") and event.who.startswith("kill_switch:"):
            self.raise_alert("trading.halted", "critical", event.why, {"who": event.who})

    def on_alert(self, event: AlertRaised) -> None:
        if event.name == "reconcile.drift":
            self.raise_alert("reconcile.drift", "critical",
                             str(event.detail.get("why", "unexplained drift")),
                             {"state": event.detail.get("state")})
        elif event.severity == "critical":
            self.raise_alert(event.name, "critical", _cause(event.detail), dict(event.detail))

    def on_broker(self, event: BrokerStatusChanged) -> None:
        if event.broker.endswith(":reconcile"):
            return  # the reconciler's readiness, not the connection
        if event.status == "disconnected":
            if self._down_since is None:
                self._down_since, self._down_alerted = self._mono(), False
        elif event.status in ("connected", "ready", "recovering"):
            self._down_since = None

    def stopped(self, reason: str, code: int) -> None:
        """The daemon has stopped: alert before the process exits (never rate limited:
        it is the last word)."""
        self.raise_alert("daemon.stopped", "warning" if code == 0 else "critical",
                         reason or "stopped", {"exit_code": code}, limited=False)

    def raise_alert(self, name: str, severity: str, cause: str,
                    detail: Mapping[str, Any] | None = None, *, limited: bool = True) -> bool:
        """Queue an alert unless deduplicated, rate limited or the queue is full."""
        now = self._mono()
        key = (name, cause)
        last = self._seen.get(key)
        if last is not None and now - last < self._cfg.dedupe_secs:
            self.counts["deduplicated"] += 1
            return False
        while self._recent and now - self._recent[0] >= 60.0:
            self._recent.popleft()
        if limited and len(self._recent) >= self._cfg.max_per_minute:
            return self._refuse("rate_limited", name)
        alert = Alert(name, severity, cause, self._surface.now().isoformat(), dict(detail or {}))
        if not self._urls:
            self.counts["no_webhook"] += 1
            log.warning("alert.raised", alert=name, severity=severity, cause=cause,
                        delivered=False)
            self._remember(key, now)
            return False
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            return self._refuse("queue_full", name)
        self._remember(key, now)
        self._recent.append(now)
        self.counts["queued"] += 1
        log.warning("alert.raised", alert=name, severity=severity, cause=cause)
        return True

    def _refuse(self, result: str, name: str) -> bool:
        self.counts[result] += 1
        log.warning("alert.refused", alert=name, result=result)
        return False

    def _remember(self, key: tuple[str, str], now: float) -> None:
        self._seen[key] = now
        if len(self._seen) > DEDUPE_MEMORY:
            cutoff = now - self._cfg.dedupe_secs
            self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
            while len(self._seen) > DEDUPE_MEMORY:
                del self._seen[next(iter(self._seen))]

    # -- watchers: broker outage and reject storms (read counters, not events) ------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECS)
            self.check()

    def check(self) -> None:
        """One look at the broker outage and the denial rate."""
        now = self._mono()
        if (self._down_since is not None and not self._down_alerted
                and now - self._down_since > self._cfg.disconnect_secs):
            self._down_alerted = True
            secs = round(now - self._down_since)
            self.raise_alert("broker.disconnected", "critical",
                             f"broker disconnected for more than {self._cfg.disconnect_secs:g}s",
                             {"down_secs": secs})
        denials = self._surface.figures().denials
        total = sum(denials.values())
        window = self._denials
        window.append((now, total))
        while len(window) > 1 and now - window[0][0] > self._cfg.storm_window_secs:
            window.popleft()
        burst = total - window[0][1]
        if burst >= self._cfg.storm_denials:
            top = ", ".join(f"{r} {n}" for r, n in Counter(denials).most_common(3))
            self.raise_alert("gate.reject_storm", "warning", "reject storm",
                             {"denials": burst, "window_secs": self._cfg.storm_window_secs,
                              "top_reasons_session": top})

    # -- delivery ------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            alert = await self._queue.get()
            try:
                for i in range(len(self._urls)):
                    await self._deliver(alert, i)
            finally:
                self._queue.task_done()

    async def _deliver(self, alert: Alert, index: int) -> None:
        body = self.payload(alert)
        attempts = 0
        try:
            async for attempt in tenacity.AsyncRetrying(
                    stop=tenacity.stop_after_attempt(self._cfg.attempts),
                    wait=tenacity.wait_exponential(multiplier=self._cfg.backoff_secs,
                                                   max=self._cfg.backoff_max_secs)
                    + tenacity.wait_random(0, self._cfg.backoff_secs),
                    retry=tenacity.retry_if_exception(_retryable), reraise=True):
                with attempt:
                    attempts += 1
                    await self._post(index, body)
        except (aiohttp.ClientError, TimeoutError, WebhookStatus) as exc:
            self.counts["failed"] += 1
            # The exception text can hold the URL: log its type and status only.
            log.error("alert.failed", alert=alert.name, webhook=index, attempts=attempts,
                      error=type(exc).__name__, status=getattr(exc, "status", None))
            return
        self.counts["sent"] += 1
        log.info("alert.sent", alert=alert.name, webhook=index, attempts=attempts)

    async def _post(self, index: int, body: dict[str, Any]) -> None:
        assert self._session is not None
        async with self._session.post(self._urls[index], json=body) as resp:
            if resp.status >= 400:
                raise WebhookStatus(resp.status)

    def payload(self, alert: Alert) -> dict[str, Any]:
        """The JSON every webhook receives (``text`` is what Slack shows)."""
        icon = _ICON.get(alert.severity, "")
        where = "/".join(v for v in (self._labels.get("broker"), self._labels.get("mode")) if v)
        text = f"{icon} tradingd {alert.name}: {alert.cause} [{where} on {self._labels['host']}]"
        return {"text": text.strip(), "alert": alert.name, "severity": alert.severity,
                "cause": alert.cause, "ts": alert.ts, "detail": dict(alert.detail),
                "daemon": dict(self._labels)}

    def metrics(self) -> Iterable[Metric]:
        family = CounterMetricFamily("tradingd_alerts", "Webhook alerts by result",
                                     labels=["result"])
        for result in ("queued", "sent", "failed", "deduplicated", "rate_limited",
                       "queue_full", "no_webhook", "unsent_at_exit"):
            family.add_metric([result], self.counts.get(result, 0))
        yield family


def _cause(detail: Mapping[str, Any]) -> str:
    for key in ("why", "rule", "reason", "client_order_id"):
        if key in detail:
            return str(detail[key])[:200]
    return ", ".join(f"{k}={v}" for k, v in sorted(detail.items()))[:200] or "-"


__all__ = ["Alert", "Alerts", "WebhookStatus"]
