"""A daemon that fails before its books are confirmed with the broker writes none:
the next start must recover the books of the last good session, never the paper
defaults of a session that never got going."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

from config.settings import load_settings
from daemon.app import Daemon
from engine.journal import JOURNAL_FILE, Journal
from kernel.errors import BrokerUnavailable
from tests.kit import FakeBroker

BARS = """timestamp,symbol,open,high,low,close,volume
2024-03-05T14:30:00Z,AAPL,100.0,100.5,99.5,100.0,1000
"""


class UnreachableBroker(FakeBroker):
    async def __aenter__(self) -> UnreachableBroker:
        raise BrokerUnavailable("account: HTTP 429: rate limit exceeded")


def _daemon(tmp_path: Path, broker: FakeBroker, **daemon: Any) -> Daemon:
    csv = tmp_path / "bars.csv"
    csv.write_text(BARS)
    settings: Any = load_settings(overrides={
        "daemon": {"state_dir": str(tmp_path / "state"), **daemon},
        "feed": {"source": "replay", "replay": str(csv), "speed": "max"},
        "signals": {"demo": {"enabled": False}}})
    d = Daemon(settings, broker=broker.connect)
    return d


class TestFailedStartWritesNoBooks:
    async def test_start_when_broker_fails_then_last_good_books_kept(
            self, tmp_path: Path) -> None:
        # Arrange: a good session on an account of 50,000 with 10 AAPL
        broker = FakeBroker(cash=Decimal(50_000))
        broker.set_position("AAPL", 10, Decimal("90"))
        assert await _daemon(tmp_path, broker).run() == 0
        # Act: the next start cannot reach the broker, and gives up at once
        code = await _daemon(tmp_path, UnreachableBroker(), connect_attempts=1).run()
        # Assert
        assert code == 1
        journal = Journal(tmp_path / "state" / JOURNAL_FILE).open()
        books = journal.last("BooksSnapshot")
        mark = journal.last("EquityMark")
        journal.close()
        assert books is not None and books.payload["cash"] == "50000"
        assert books.payload["positions"]["AAPL"]["qty"] == 10
        assert mark is not None and Decimal(mark.payload["equity"]) == Decimal(51_000)
