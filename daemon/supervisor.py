"""The task supervisor: named tasks, OS signals and systemd notifications for one process.

* Every long-running task is started with ``start(coro, name)``. A task that fails is
  never silent: it is logged (``daemon.task_failed``) and the daemon stops in order with
  a non-zero exit (``fatal``). So is a component that reports a failure (``fail``).
* SIGINT and SIGTERM ask for an orderly stop (``request_stop``); SIGUSR1 calls the
  handler given to ``install_signals`` (the kill switch of every account).
* sd_notify: ``READY=1`` once trading, ``WATCHDOG=1`` from the event loop, ``STOPPING=1``
  on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog

from daemon.sdnotify import Notifier

log = structlog.get_logger("daemon.supervisor")


class Supervisor:
    """Owns the process-level tasks and signals; ``stopped`` is set once a stop is asked."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.notifier = Notifier(dict(environ))
        self.stopped = asyncio.Event()
        self.stop_reason = ""
        self.fatal: BaseException | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- stopping ------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self.stopped.is_set():
            self.stop_reason = reason
            log.info("daemon.stopping", reason=reason)
            self.stopped.set()

    def fail(self, exc: BaseException) -> None:
        """A component failed: remember the first failure and stop in order."""
        if self.fatal is None:
            self.fatal = exc
        self.request_stop(f"component failed: {exc!r}")

    # -- tasks ---------------------------------------------------------------------------

    def start(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self.watch(task)
        self._tasks.append(task)
        return task

    def watch(self, task: asyncio.Task[Any]) -> None:
        """Stop the daemon if ``task`` (owned elsewhere) fails."""
        task.add_done_callback(self._on_task_done)

    def _on_task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("daemon.task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)
            if self.fatal is None:
                self.fatal = exc
            self.request_stop(f"task {task.get_name()} failed")

    def cancel(self, name: str) -> None:
        for t in self._tasks:
            if t.get_name() == name:
                t.cancel()

    async def cancel_all(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    # -- signals and systemd -------------------------------------------------------------

    def install_signals(self, on_usr1: Callable[[], None]) -> None:
        loop = self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGUSR1, on_usr1)

    def remove_signals(self) -> None:
        if self._loop is None:
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                self._loop.remove_signal_handler(sig)

    def ready(self, status: str) -> None:
        self.notifier.ready(status)

    def close(self) -> None:
        self.notifier.stopping()
        self.notifier.close()
        self.remove_signals()


__all__ = ["Supervisor"]
