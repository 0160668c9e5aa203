"""Session counters for the summary logged at shutdown and for ``tradingd status``."""

from __future__ import annotations

from collections import Counter
from typing import Any

from kernel.bus import Bus
from kernel.events import (
    OrderDenied,
    OrderFilled,
    OrderRejected,
    OrderSubmitted,
    SignalBatch,
    SignalRejected,
)


class SessionStats:
    """Counts what happened this session; subscribe it to the bus with ``attach``."""

    def __init__(self) -> None:
        self.signals = 0
        self.signal_batches = 0
        self.bar_batches = 0
        self.bar_rows = 0
        self.orders = 0
        self.fills = 0
        self.filled_shares = 0
        self.denied: Counter[str] = Counter()
        self.rejected = 0
        self.signal_rejects: Counter[str] = Counter()

    def attach(self, bus: Bus) -> None:
        bus.subscribe(SignalBatch, self._on_signals)
        bus.subscribe(OrderSubmitted, self._on_submitted)
        bus.subscribe(OrderFilled, self._on_fill)
        bus.subscribe(OrderDenied, self._on_denied)
        bus.subscribe(OrderRejected, self._on_rejected)
        bus.subscribe(SignalRejected, self._on_signal_rejected)

    def _on_signals(self, e: SignalBatch) -> None:
        self.signal_batches += 1
        self.signals += len(e.signals)

    def _on_submitted(self, e: OrderSubmitted) -> None:
        self.orders += 1

    def _on_fill(self, e: OrderFilled) -> None:
        self.fills += 1
        self.filled_shares += e.fill.qty

    def _on_denied(self, e: OrderDenied) -> None:
        self.denied[e.reason] += 1

    def _on_rejected(self, e: OrderRejected) -> None:
        self.rejected += 1

    def _on_signal_rejected(self, e: SignalRejected) -> None:
        self.signal_rejects[e.reason] += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "bar_batches": self.bar_batches,
            "signals": self.signals,
            "orders": self.orders,
            "fills": self.fills,
            "filled_shares": self.filled_shares,
            "broker_rejects": self.rejected,
            "rejects_by_reason": dict(sorted(self.denied.items())),
            "signal_rejects_by_reason": dict(sorted(self.signal_rejects.items())),
        }
