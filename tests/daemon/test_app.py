"""End-to-end: the whole daemon on real bars and the real paper broker."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from brokers.paper import PaperBroker
from config.settings import load_settings
from daemon.app import Daemon, read_status
from kernel.events import BarBatch, OrderFilled
from kernel.model import to_price
from tests.data import SAMPLE_CSV, require


def _settings(tmp_path: Path, replay: Path, **risk: object) -> object:
    return load_settings(overrides={
        "daemon": {"state_dir": str(tmp_path / "state")},
        "feed": {"source": "replay", "replay": str(replay), "speed": "max"},
        "risk": risk,
    })


class TestReplayEndToEnd:
    async def test_replay_when_real_sample_bars_then_books_match_broker_at_every_batch(
        self, tmp_path: Path
    ) -> None:
        # Arrange
        settings = _settings(tmp_path, require(SAMPLE_CSV))
        daemon = Daemon(settings)  # type: ignore[arg-type]
        broker = daemon.system.broker
        assert isinstance(broker, PaperBroker)
        fills_by_symbol: dict[str, int] = defaultdict(int)
        last_close: dict[str, float] = {}
        checked = 0

        def on_fill(e: OrderFilled) -> None:
            fills_by_symbol[e.fill.symbol] += e.fill.signed_qty

        def on_bars(b: BarBatch) -> None:
            last_close.update(zip(b.symbols, b.close.tolist(), strict=True))

        daemon.system.bus.subscribe(OrderFilled, on_fill)
        daemon.system.bus.subscribe(BarBatch, on_bars)

        async def check(batch: BarBatch) -> None:
            nonlocal checked
            book = daemon.system.portfolio
            account = await broker.account()
            held = {p.symbol: p.qty for p in await broker.positions()}
            # every position equals the sum of its fills, on both sides
            ours = {s: p.qty for s, p in book.positions.items() if p.qty}
            assert ours == {s: q for s, q in fills_by_symbol.items() if q}
            assert ours == held
            # cash + market value of positions == equity, marked independently here
            marked = sum((q * to_price(last_close[s]) for s, q in ours.items()), Decimal(0))
            assert book.cash + marked == book.equity()
            assert book.cash == account.cash
            assert book.equity() == account.equity
            checked += 1

        daemon.after_batch.append(check)

        # Act
        with capture_logs() as logs:
            code = await daemon.run()

        # Assert
        assert code == 0
        assert checked == daemon.system.stats.bar_batches > 1000
        assert daemon.system.stats.orders > 0 and daemon.system.stats.fills > 0
        summary = [e for e in logs if e["event"] == "daemon.session_summary"]
        assert len(summary) == 1 and summary[0]["fills"] == daemon.system.stats.fills
        status = read_status(tmp_path / "state")
        assert status is not None and status["cash"] == str(daemon.system.portfolio.cash.quantize(
            Decimal("0.0001")))

    async def test_replay_when_signal_would_exceed_cap_then_order_is_capped(
        self, tmp_path: Path
    ) -> None:
        settings = _settings(tmp_path, require(SAMPLE_CSV), max_order_notional=1000,
                             max_position_pct=0.5)
        daemon = Daemon(settings)  # type: ignore[arg-type]
        with capture_logs() as logs:
            assert await daemon.run() == 0
        capped = [e for e in logs if e["event"] == "sizing.capped"]
        assert capped, "a 50% position on $100k must hit the $1,000 order cap"
        for order in daemon.system.orders.orders.values():
            assert order.reference_price is not None
            assert order.reference_price * order.qty <= 1000


@pytest.mark.parametrize("bad", ["max", "0", "-3", "fast"])
def test_speed_validation_when_bad_then_config_error(bad: str, tmp_path: Path) -> None:
    from kernel.errors import ConfigError

    if bad == "max":
        load_settings(overrides={"feed": {"speed": bad}})
        return
    with pytest.raises(ConfigError, match=r"feed\.speed"):
        load_settings(overrides={"feed": {"speed": bad}})
