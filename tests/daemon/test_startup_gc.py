"""``daemon.startup``: the collector held back during start-up and settled before READY.

The collector's state is the process's: each case runs in a fresh interpreter.
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
