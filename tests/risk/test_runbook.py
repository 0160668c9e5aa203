"""The seed runbook's first-session checks, end to end from a signal batch."""

from __future__ import annotations

from datetime import timedelta

from structlog.testing import capture_logs

from kernel.events import SignalBatch
from kernel.model import Signal
from tests.risk.conftest import MakeHarness


class TestRunbook:
    async def test_signal_when_aapl_015_at_150_then_one_buy_of_5_shares(
            self, harness: MakeHarness) -> None:
        # Arrange: $100,000 equity
        h = await harness()
        sig = Signal(id="rb-1", symbol="AAPL", strength=0.15, price=150.0,
                     ts=h.clock.now(), source="runbook")
        # Act: the batch reaches the account as the daemon routes it (sizing, then the gate)
        with capture_logs() as logs:
            h.system.on_signals(SignalBatch(ts=sig.ts, source="runbook", signals=(sig,)))
        # Assert: 0.15 x 5% x 100,000 = $750 = 5 shares
        assert [(i.symbol, str(i.side), i.qty) for i in h.submitted] == [("AAPL", "buy", 5)]
        (p,) = [e for e in logs if e["event"] == "gate.pass"]
        assert p["notional"] == "750.0" and p["signal_id"] == "rb-1"

    async def test_signal_when_130_seconds_old_then_stale_signal_and_no_order(
            self, harness: MakeHarness) -> None:
        # Arrange
        h = await harness()
        sig = Signal(id="rb-2", symbol="AAPL", strength=0.15, price=150.0,
                     ts=h.clock.now() - timedelta(seconds=130), source="runbook")
        # Act
        with capture_logs() as logs:
            h.system.on_signals(SignalBatch(ts=sig.ts, source="runbook", signals=(sig,)))
        # Assert
        (r,) = [e for e in logs if e["event"] == "gate.reject"]
        assert (r["reason"], r["limit"], r["observed"]) == ("STALE_SIGNAL", 120.0, 130.0)
        assert h.submitted == []
