"""``daemon.startup``: the collector held back during start-up and settled before READY
(the collector's state is the process's: each case runs in a fresh interpreter), and
start-up work on a thread.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.data import REPO

_CASE = """
import gc, json, weakref
from daemon import startup

class Node:
    pass

default = gc.get_threshold()
if {hold}:
    startup.hold_gc()
held = gc.get_threshold()
built = [Node() for _ in range(1000)]       # what start-up builds and keeps
startup.freeze_built()
frozen = gc.get_freeze_count()
cycle = Node(); cycle.me = cycle            # garbage made after the freeze
dead = weakref.ref(cycle)
del cycle
startup.settle_gc()
print(json.dumps({{"default": default, "held": held, "frozen_built": frozen,
                   "after": gc.get_threshold(), "frozen_after": gc.get_freeze_count(),
                   "cycle_collected": dead() is None}}))
"""


def _run(*, hold: bool) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _CASE.format(hold=hold)], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=True)
    out: dict[str, Any] = json.loads(done.stdout)
    return out


class TestStartupGc:
    def test_held_then_settled_then_thresholds_back_built_frozen_later_garbage_collected(
            self) -> None:
        from daemon.startup import STARTUP_GEN0

        r = _run(hold=True)
        assert r["held"] == [STARTUP_GEN0, *r["default"][1:]]
        assert r["frozen_built"] >= 1000  # the kept objects were moved out of the way
        assert r["cycle_collected"]  # settle_gc still collects what came after
        assert r["after"] == r["default"]
        assert r["frozen_after"] >= r["frozen_built"]

    def test_settle_when_never_held_then_collect_and_freeze_only(self) -> None:
        r = _run(hold=False)
        assert r["held"] == r["default"] == r["after"]
        assert r["frozen_built"] == 0  # nothing frozen early without a hold
        assert r["cycle_collected"] and r["frozen_after"] > 0


class TestInThread:
    async def test_in_thread_when_awaited_then_work_done_on_another_thread(self) -> None:
        import threading

        from daemon.startup import in_thread

        ran_on: list[int] = []
        future = in_thread(lambda: ran_on.append(threading.get_ident()))
        await future
        assert ran_on and ran_on[0] != threading.get_ident()

    async def test_in_thread_when_failing_and_never_awaited_then_nothing_reported(
            self) -> None:
        import asyncio
        import gc

        from daemon.startup import in_thread

        loop = asyncio.get_running_loop()
        reported: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))

        def fail() -> None:
            raise RuntimeError("calendar unavailable")

        future = in_thread(fail)
        # a start that stopped early: nobody awaits it (wait() retrieves no outcome)
        await asyncio.wait([future])
        await asyncio.sleep(0)  # the done callbacks run
        del future
        gc.collect()
        assert reported == []

    async def test_in_thread_when_failing_and_awaited_then_raises(self) -> None:
        import pytest

        from daemon.startup import in_thread

        def fail() -> None:
            raise RuntimeError("calendar unavailable")

        with pytest.raises(RuntimeError, match="calendar unavailable"):
            await in_thread(fail)
