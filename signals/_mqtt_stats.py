"""Counters of the MQTT bridge, and the limiter that keeps a storm of rejects readable
in the log (every reject is counted; at most ``per_sec`` lines per reason are logged)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kernel.clock import monotonic_ns


@dataclass(slots=True)
class BridgeStats:
    """Counters of one bridge, for heartbeats, tests and the session summary.

    ``read``: messages the MQTT client read from the broker (each acknowledged as it was
    read); ``received``: signal messages validated (accepted or refused). Once the bridge
    is idle, ``read`` is ``received`` plus the control messages."""

    read: int = 0
    received: int = 0
    accepted_batches: int = 0
    accepted_signals: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    published: int = 0
    control_accepted: int = 0
    control_refused: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    disconnects: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def as_dict(self) -> dict[str, Any]:
        return {"read": self.read, "received": self.received,
                "accepted_batches": self.accepted_batches,
                "accepted_signals": self.accepted_signals, "duplicates": self.duplicates,
                "rejected": dict(self.rejected), "published": self.published,
                "control_accepted": self.control_accepted,
                "control_refused": dict(self.control_refused), "connects": self.connects,
                "disconnects": self.disconnects}


class LogLimiter:
    """At most ``per_sec`` log lines per key and second; the rest are counted and the
    count rides on the next line that is logged (``suppressed=n``)."""

    def __init__(self, per_sec: int = 50) -> None:
        self._per_sec = per_sec
        self._window: dict[str, tuple[int, int, int]] = {}  # key -> (second, logged, held)

    def allow(self, key: str) -> int | None:
        now = monotonic_ns() // 1_000_000_000
        sec, logged, held = self._window.get(key, (now, 0, 0))
        if sec != now:
            sec, logged = now, 0
        if logged >= self._per_sec:
            self._window[key] = (sec, logged, held + 1)
            return None
        self._window[key] = (sec, logged + 1, 0)
        return held
