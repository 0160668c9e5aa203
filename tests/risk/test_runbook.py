"""The seed runbook's first-session checks, end to end from a signal batch."""

from __future__ import annotations

from datetime import timedelta

from structlog.testing import capture_logs

from kernel.events import SignalBatch
from kernel.model import Signal
from risk.sizing import Sizer
from tests.risk.harness import Harness


def _sizer(h: Harness) -> Sizer:
    return Sizer(h.cfg, equity=h.portfolio.equity,
                 holding=lambda s: h.portfolio.qty(s) + h.orders.working_qty(s),
                 send=h.bus.send)


class TestRunbook:
    def test_signal_when_aapl_015_at_150_then_one_buy_of_5_shares(self) -> None:
        # Arrange: $100,000 equity
        h = Harness()
        sig = Signal(id="rb-1", symbol="AAPL", strength=0.15, price=150.0,
                     ts=h.clock.now(), source="runbook")
        # Act
        with capture_logs() as logs:
            _sizer(h).on_signals(SignalBatch(ts=sig.ts, source="runbook", signals=(sig,)))
        # Assert: 0.15 x 5% x 100,000 = $750 = 5 shares
        assert [(i.symbol, str(i.side), i.qty) for i in h.sink.submitted] == [("AAPL", "buy", 5)]
        (p,) = [e for e in logs if e["event"] == "gate.pass"]
        assert p["notional"] == "750.0" and p["signal_id"] == "rb-1"

    def test_signal_when_130_seconds_old_then_stale_signal_and_no_order(self) -> None:
        # Arrange
        h = Harness()
        sig = Signal(id="rb-2", symbol="AAPL", strength=0.15, price=150.0,
                     ts=h.clock.now() - timedelta(seconds=130), source="runbook")
        # Act
        with capture_logs() as logs:
            _sizer(h).on_signals(SignalBatch(ts=sig.ts, source="runbook", signals=(sig,)))
        # Assert
        (r,) = [e for e in logs if e["event"] == "gate.reject"]
        assert (r["reason"], r["limit"], r["observed"]) == ("STALE_SIGNAL", 120.0, 130.0)
        assert h.sink.submitted == []
