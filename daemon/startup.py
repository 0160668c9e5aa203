"""Start-up of ``tradingd run``: without the cyclic garbage collector's repeated passes,
and with the exchange calendar built on a thread while the broker connects (``in_thread``).

Start-up imports some 1,500 modules and builds the trading system: a few hundred
thousand container objects, nearly all of which live as long as the process. With the
default thresholds (700, 10, 10) the collector ran about 340 young, 30 middle and
several full collections over them while they were created, and found next to nothing
(30 unreachable objects after all of a model-enabled Alpaca start's imports); then the
full collection before READY walked all of it once more.

So ``tradingd run`` holds the collector back while it starts (``hold_gc``: the young
generation's threshold raised, so it still runs, rarely, and memory stays bounded if the
start takes long, e.g. while the broker cannot be reached), moves what it has built out
of the collector's way once it is built (``freeze_built``), and just before READY
collects once over what came after, freezes what survived and restores the thresholds
(``settle_gc``). The daemon then runs with the default thresholds, over only what it
allocates from then on, as before.

Measured (``benchmarks/startup.py``'s start under ``valgrind --tool=callgrind``): the
collector's instructions from spawn to exit 263 M -> 102 M of about 5.8 G; the gap
between the last start-up step and ``daemon.ready`` (the collection) 0.25 s -> 0.003 s
of wall time on the shared two-core machine.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

# Young-generation threshold while starting: a collection per this many net
# allocations of container objects (a few MB at most between collections).
STARTUP_GEN0 = 100_000

# The thresholds to restore, while held (a list: module state without ``global``).
_held: list[tuple[int, int, int]] = []


def hold_gc() -> None:
    """Raise the young generation's threshold until ``settle_gc``."""
    if not _held:
        _held.append(gc.get_threshold())
        gc.set_threshold(STARTUP_GEN0, *_held[0][1:])


def freeze_built() -> None:
    """Move every object built so far (modules, classes, the trading system) out of the
    collector's way without a collection: start-up builds next to no garbage, and a full
    collection over all of it is the most expensive step left before READY."""
    if _held:
        gc.freeze()


def settle_gc() -> None:
    """Collect once, freeze what survived (it lives all day) and restore the thresholds.

    Called just before READY; also where no ``hold_gc`` came first (tests, benchmarks):
    then it is a collection and a freeze, as the daemon always did.
    """
    gc.collect()
    gc.freeze()
    if _held:
        gc.set_threshold(*_held.pop())


def in_thread(work: Callable[[], None]) -> asyncio.Future[None]:
    """Start ``work`` on the loop's default executor thread and return its future, which
    the caller awaits before anything depends on the work.

    For start-up work that shares nothing with what the loop does meanwhile: the
    exchange calendar builds (~0.2 s of pandas) while the broker connects and reconciles,
    which is mostly waiting on the network. Only the GIL is shared, so on a loopback
    broker it gains little; against a remote one it hides the calendar behind the round
    trips. A start that stops early never awaits the future: its outcome is retrieved
    here so it is not reported as never retrieved.
    """
    future = asyncio.get_running_loop().run_in_executor(None, work)
    future.add_done_callback(_retrieve)
    return future


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


__all__ = ["STARTUP_GEN0", "freeze_built", "hold_gc", "in_thread", "settle_gc"]
