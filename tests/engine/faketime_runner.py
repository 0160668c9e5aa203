"""A process that runs the real ``SessionRunner`` on the wall clock and ``asyncio.sleep``
under uvloop, printing one JSON line per phase change; the faketime test drives its wall
clock with libfaketime (see ``test_lifecycle_faketime``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

import uvloop

from engine.config import SessionConfig
from engine.lifecycle import SessionHooks, SessionRunner
from engine.session import PhaseAt, TradingCalendar
from kernel.clock import WallClock
from kernel.events import Event, SessionPhaseChanged


def _print(event: Event) -> None:
    assert isinstance(event, SessionPhaseChanged)
    print(json.dumps({"phase": str(event.phase), "session": event.session.isoformat(),
                      "ts": event.ts.isoformat()}), flush=True)


async def _close(at: PhaseAt) -> Mapping[str, Any]:
    print(json.dumps({"hook": "on_close", "session": at.session.date.isoformat()}), flush=True)
    return {}


async def main() -> None:
    runner = SessionRunner(TradingCalendar(SessionConfig(max_sleep_secs=0.2, repeat="once")),
                           clock=WallClock(), publish=_print,
                           hooks=SessionHooks(on_close=_close))
    async with runner:
        await runner.finished.wait()
    print(json.dumps({"finished": True}), flush=True)


if __name__ == "__main__":
    uvloop.run(main())
    sys.exit(0)
