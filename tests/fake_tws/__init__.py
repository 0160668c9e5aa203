"""A protocol-level fake TWS / IB Gateway for tests and local runs (test support, not
product). ``FakeTws`` is the asyncio server (use it on the test's loop);
``FakeTwsThread`` serves one from its own loop in a background thread and marshals calls
onto it, so a benchmark or a synchronous test can drive it; ``python -m tests.fake_tws``
runs it as a process with a loopback HTTP control channel.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tests.fake_tws.server import FakeTws

__all__ = ["FakeTws", "FakeTwsThread"]

T = TypeVar("T")


class FakeTwsThread:
    """A ``FakeTws`` served from a daemon thread. Use as a context manager.

    Public methods of ``FakeTws`` are reachable as attributes and run on the fake's loop
    (``tws.reject_next()``); ``call(fn)`` runs any function of the fake there.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fake-tws", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.fake: FakeTws | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.fake = FakeTws(**self._kwargs)
            self._loop.run_until_complete(self.fake.start())
        except BaseException as exc:  # surfaced to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.fake.stop())
        self._loop.close()

    def start(self) -> FakeTwsThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> FakeTwsThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self.fake is not None
        return self.fake.port

    def call(self, fn: Callable[[FakeTws], T]) -> T:
        async def run() -> T:
            assert self.fake is not None
            return fn(self.fake)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def __getattr__(self, name: str) -> Any:
        def proxy(*args: Any, **kwargs: Any) -> Any:
            return self.call(lambda fake: getattr(fake, name)(*args, **kwargs))

        return proxy
