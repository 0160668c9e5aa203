"""A loopback Alpaca emulator for tests and local runs (test support, not product).

``Emulator`` is the aiohttp service; ``EmulatorThread`` runs one on its own event loop
in a background thread and marshals control calls onto that loop, so a test (or a
benchmark) can drive faults synchronously while the real alpaca-py clients talk to it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from tests.alpaca_emulator.server import Emulator

__all__ = ["Emulator", "EmulatorThread"]

T = TypeVar("T")


class EmulatorThread:
    """An ``Emulator`` served from a daemon thread. Use as a context manager.

    Every public method of ``Emulator`` is reachable as an attribute and runs on the
    emulator's loop (``emu.fail_next(1, status=504)``); ``call(fn)`` runs any function
    of the emulator there and returns its result.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.emulator = Emulator(**kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="alpaca-emulator", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self.emulator.start())
        except BaseException as exc:  # surfaced to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self.emulator.stop())
        self._loop.close()

    def start(self) -> EmulatorThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def __enter__(self) -> EmulatorThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return self.emulator.base_url

    @property
    def port(self) -> int:
        return self.emulator.port

    def call(self, fn: Callable[[Emulator], T]) -> T:
        async def run() -> T:
            return fn(self.emulator)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.emulator, name)
        if not callable(target):
            return target

        def proxy(*args: Any, **kwargs: Any) -> Any:
            return self.call(lambda emu: getattr(emu, name)(*args, **kwargs))

        return proxy
