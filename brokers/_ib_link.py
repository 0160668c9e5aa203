"""Keeping the TWS session: reconnects, a heartbeat, and asking again for what is missing.

ib_async never reconnects by itself, and TWS sends nothing on an idle connection, so a
hung Gateway looks like a quiet one. ``LinkKeeper`` runs two named tasks for the
adapter: ``ib.connection`` reconnects after a loss (exponential backoff with jitter;
a client id still in use is retried at the slowest pace, never fought), and
``ib.housekeeping`` probes a silent connection with ``reqCurrentTime`` (no answer: the
socket is cut and the connection task takes over), asks TWS again for executions it
counted but never sent and for overdue commission reports, and prunes the SDK's caches.

No ``ib_async`` import: everything that talks to TWS is a ``LinkHooks`` callable.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import TracebackType
from typing import Self

import structlog

from brokers._ib_map import IbExecution
from brokers._ib_track import IbTracker
from brokers.config import IbConfig
from kernel.errors import BrokerAuthError, BrokerError
from kernel.events import BrokerStatus

log = structlog.get_logger("brokers.ib")

_TICK_SECS = 0.25
_PRUNE_EVERY_SECS = 30.0
_ASK_MAX_INTERVAL_SECS = 60.0


class LinkState(enum.StrEnum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    SYNCING = "syncing"
    READY = "ready"


@dataclass(frozen=True, slots=True)
class LinkHooks:
    """What the keeper asks of the adapter."""

    connect: Callable[[], Awaitable[None]]  # connect and synchronize, or raise
    probe: Callable[[], Awaitable[None]]  # one round trip, or raise
    cut: Callable[[], None]  # drop the socket now
    executions: Callable[[datetime | None], Awaitable[object]]  # ask for executions
    prune: Callable[[], None]
    status: Callable[[BrokerStatus, str], None]  # publish BrokerStatusChanged
    commission_missing: Callable[[IbExecution], None]


class LinkKeeper:
    """Owns the tasks that keep the session (an async context manager)."""

    def __init__(self, cfg: IbConfig, tracker: IbTracker, hooks: LinkHooks) -> None:
        self._cfg = cfg
        self._tracker = tracker
        self._hooks = hooks
        self._lost = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.state = LinkState.DISCONNECTED
        self.servers_up = True  # TWS <-> IB (1100 lost, 1101/1102 restored)
        self.last_data = time.monotonic()
        self._gap_since: float | None = None
        self._last_ask = 0.0
        self._ask_interval = max(cfg.gap_grace_secs, 1.0)

    async def __aenter__(self) -> Self:
        self.spawn(self._supervise(), "ib.connection")
        self.spawn(self._housekeeping(), "ib.housekeeping")
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    def spawn(self, coro: Awaitable[None], name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ib.task_failed", task=task.get_name(), error=repr(task.exception()))

    @property
    def ready(self) -> bool:
        return self.state is LinkState.READY and self.servers_up

    def lost(self) -> None:
        """The socket is gone: reconnect (unless a connect is already under way)."""
        if self.state in (LinkState.CONNECTING, LinkState.SYNCING):
            return
        self.state = LinkState.DISCONNECTED
        self._hooks.status(BrokerStatus.DISCONNECTED, "connection to TWS lost")
        self._lost.set()

    def servers_lost(self, code: int) -> None:
        self.servers_up = False
        self._hooks.status(BrokerStatus.DISCONNECTED, f"TWS lost IB's servers ({code})")

    def servers_restored(self, catch_up: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            try:
                await catch_up()
            except BrokerError as exc:
                log.warning("ib.catch_up_failed", error=str(exc))
                return
            self.servers_up = True
            self._caught_up("TWS connectivity restored: caught up")

        self.spawn(run(), "ib.catch_up")

    def touch(self) -> None:
        self.last_data = time.monotonic()

    def _caught_up(self, detail: str) -> None:
        # The reconciler runs a gated pass and alone says when the books are confirmed.
        self._hooks.status(BrokerStatus.RECOVERING, detail)

    # -- reconnecting --------------------------------------------------------------------

    async def _supervise(self) -> None:
        while True:
            await self._lost.wait()
            self._lost.clear()
            await self._reconnect()

    async def _reconnect(self) -> None:
        attempt = 0
        while True:
            attempt += 1
            await asyncio.sleep(self.backoff(attempt))
            try:
                await self._hooks.connect()
            except BrokerAuthError as exc:
                # A session still holds our client id (often the Gateway not yet having
                # noticed the old socket): wait at the slowest pace, never fight it.
                log.error("ib.client_id_in_use", client_id=self._cfg.client_id, error=str(exc))
                attempt = max(attempt, 64)
                continue
            except BrokerError as exc:
                log.warning("ib.reconnect_failed", attempt=attempt, error=str(exc))
                continue
            break
        log.info("ib.reconnected", attempts=attempt, open_orders=len(self._tracker.open_cids()))
        self._caught_up("reconnected: caught up on completed orders and executions")

    def backoff(self, attempt: int) -> float:
        """Exponential, capped, with jitter over the upper half (no thundering herd)."""
        cfg = self._cfg
        base = min(cfg.reconnect_backoff_max_secs,
                   cfg.reconnect_backoff_secs * 2 ** min(attempt - 1, 30))
        return float(base / 2 + random.uniform(0, base / 2))

    # -- housekeeping --------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        last_prune = time.monotonic()
        while True:
            await asyncio.sleep(_TICK_SECS)
            if self.state is not LinkState.READY:
                continue
            try:
                await self._probe_if_silent()
                await self._ask_for_missing()
            except BrokerError as exc:
                log.warning("ib.housekeeping_failed", error=str(exc))
            if time.monotonic() - last_prune >= _PRUNE_EVERY_SECS:
                last_prune = time.monotonic()
                self._hooks.prune()

    async def _probe_if_silent(self) -> None:
        silent = time.monotonic() - self.last_data
        if silent < self._cfg.heartbeat_secs:
            return
        try:
            await self._hooks.probe()
        except BrokerError as exc:
            log.warning("ib.connection_silent", silent_secs=round(silent, 1), error=str(exc))
            self._hooks.cut()  # the socket's loss brings the connection task in
            return
        self.touch()

    async def _ask_for_missing(self) -> None:
        """Executions TWS has counted but not sent us, and commissions overdue: ask for
        the executions again (TWS re-sends their commission reports too)."""
        ask, released = self._tracker.expire()
        for ex in released:
            self._hooks.commission_missing(ex)
        now = time.monotonic()
        missing = self._tracker.missing_executions()
        if not missing:
            self._gap_since, self._ask_interval = None, max(self._cfg.gap_grace_secs, 1.0)
        elif self._gap_since is None:
            self._gap_since = now
        gap_due = self._gap_since is not None and now - self._gap_since >= self._cfg.gap_grace_secs
        if not ask and not (gap_due and now - self._last_ask >= self._ask_interval):
            return
        self._last_ask = now
        if gap_due:  # a gap that asking did not close: ask less and less often
            self._ask_interval = min(self._ask_interval * 2, _ASK_MAX_INTERVAL_SECS)
        starts = [o.created_ts for o in missing]
        starts += [self._tracker.orders[e.client_order_id].created_ts for e in ask
                   if e.client_order_id in self._tracker.orders]
        log.info("ib.asking_executions", missing=len(missing), commissions=len(ask))
        await self._hooks.executions(min(starts) - timedelta(minutes=1) if starts else None)


__all__ = ["LinkHooks", "LinkKeeper", "LinkState"]
