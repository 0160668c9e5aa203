"""Bar replay: CSV (or gzipped CSV) to one aligned BarBatch per timestamp, and pacing."""

from __future__ import annotations

import asyncio
import gzip
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from structlog.testing import capture_logs

from engine.feed import BarTape, Pacer
from kernel.errors import ConfigError

# Deliberately out of order, by time and by symbol.
ROWS = """timestamp,symbol,open,high,low,close,volume
2024-03-05T14:31:00Z,MSFT,401.0,402.0,400.5,401.5,2000
2024-03-05T14:30:00Z,MSFT,400.0,401.0,399.0,400.5,1000
2024-03-05T14:30:00Z,AAPL,170.0,171.0,169.5,170.5,3000
2024-03-05T14:32:00Z,AAPL,171.5,172.0,171.0,171.8,1500
2024-03-05T14:31:00Z,AAPL,170.5,171.5,170.0,171.2,2500
2024-03-05T14:30:00Z,IBM,190.0,190.5,189.0,190.2,500
"""


def rows_of(batch: object) -> dict[str, tuple[float, ...]]:
    b = batch
    return {s: (b.open[i], b.high[i], b.low[i], b.close[i], b.volume[i])  # type: ignore[attr-defined]
            for i, s in enumerate(b.symbols)}  # type: ignore[attr-defined]


class TestBarTape:
    def test_from_csv_when_unsorted_then_one_sorted_batch_per_timestamp(
        self, tmp_path: Path
    ) -> None:
        # Arrange
        path = tmp_path / "bars.csv"
        path.write_text(ROWS)

        # Act
        tape = BarTape.from_csv(path)
        batches = list(tape.batches())

        # Assert
        assert len(tape) == 3
        assert tape.rows == 6
        assert tape.symbols == ["AAPL", "IBM", "MSFT"]
        t = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
        assert [b.ts for b in batches] == [t, t + timedelta(minutes=1), t + timedelta(minutes=2)]
        assert [b.symbols for b in batches] == [("AAPL", "IBM", "MSFT"), ("AAPL", "MSFT"),
                                                ("AAPL",)]

    def test_batches_when_read_then_columns_aligned_with_symbols(self, tmp_path: Path) -> None:
        path = tmp_path / "bars.csv"
        path.write_text(ROWS)

        first, second, _ = BarTape.from_csv(path).batches()

        assert rows_of(first) == {
            "AAPL": (170.0, 171.0, 169.5, 170.5, 3000.0),
            "IBM": (190.0, 190.5, 189.0, 190.2, 500.0),
            "MSFT": (400.0, 401.0, 399.0, 400.5, 1000.0),
        }
        assert rows_of(second) == {
            "AAPL": (170.5, 171.5, 170.0, 171.2, 2500.0),
            "MSFT": (401.0, 402.0, 400.5, 401.5, 2000.0),
        }

    def test_from_csv_when_gzipped_then_same_batches(self, tmp_path: Path) -> None:
        plain, packed = tmp_path / "bars.csv", tmp_path / "bars.csv.gz"
        plain.write_text(ROWS)
        packed.write_bytes(gzip.compress(ROWS.encode()))

        a, b = list(BarTape.from_csv(plain).batches()), list(BarTape.from_csv(packed).batches())

        assert [x.ts for x in a] == [x.ts for x in b]
        assert [rows_of(x) for x in a] == [rows_of(x) for x in b]

    def test_from_csv_when_offset_timestamps_then_converted_to_utc(self, tmp_path: Path) -> None:
        path = tmp_path / "bars.csv"
        path.write_text("timestamp,symbol,open,high,low,close,volume\n"
                        "2024-03-05T09:30:00-05:00,AAPL,1,1,1,1,1\n")

        (batch,) = BarTape.from_csv(path).batches()

        assert batch.ts == datetime(2024, 3, 5, 14, 30, tzinfo=UTC)

    def test_init_when_column_missing_then_config_error(self) -> None:
        frame = pd.DataFrame({"timestamp": ["2024-03-05T14:30:00Z"], "symbol": ["AAPL"],
                              "open": [1.0], "high": [1.0], "low": [1.0], "close": [1.0]})

        with pytest.raises(ConfigError) as info:
            BarTape(frame)

        assert info.value.key == "feed.replay"
        assert "volume" in info.value.expected

    def test_from_csv_when_file_missing_then_config_error(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError) as info:
            BarTape.from_csv(tmp_path / "missing.csv")

        assert "missing.csv" in str(info.value)


class TestBarTapeStreaming:
    def test_from_csv_when_time_ordered_then_streamed_in_chunks_same_batches(
        self, tmp_path: Path
    ) -> None:
        # Arrange: 40 minutes x 5 symbols in time order (symbols shuffled within a
        # minute), read 7 rows at a time so minutes straddle chunks.
        rows = ["timestamp,symbol,open,high,low,close,volume"]
        t = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
        for m in range(40):
            for s in ("MSFT", "AAPL", "IBM", "ZZZ", "BBB")[m % 5:] + ("MSFT", "AAPL", "IBM",
                                                                     "ZZZ", "BBB")[:m % 5]:
                px = 100 + m + len(s)
                rows.append(f"{(t + timedelta(minutes=m)).isoformat()},{s},{px},{px + 1},"
                            f"{px - 1},{px},{m * 10}")
        path = tmp_path / "bars.csv"
        path.write_text("\n".join(rows) + "\n")
        whole = BarTape(pd.read_csv(path, dtype={"symbol": str}))

        # Act
        tape = BarTape.from_csv(path, chunk_rows=7)
        streamed = list(tape.batches())

        # Assert
        assert tape._rows is None  # streamed, not held
        assert (len(tape), tape.rows, tape.symbols) == (40, 200, ["AAPL", "BBB", "IBM", "MSFT",
                                                                  "ZZZ"])
        expected = list(whole.batches())
        assert [b.ts for b in streamed] == [b.ts for b in expected]
        assert [rows_of(b) for b in streamed] == [rows_of(b) for b in expected]
        assert all(b.symbols == tuple(sorted(b.symbols)) for b in streamed)

    def test_from_csv_when_out_of_time_order_then_loaded_whole_and_logged(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "bars.csv"
        path.write_text(ROWS)

        with capture_logs() as logs:
            tape = BarTape.from_csv(path, chunk_rows=2)

        assert tape._rows is not None
        assert [e["event"] for e in logs] == ["feed.replay_unsorted"]
        assert len(list(tape.batches())) == 3


class TestPacer:
    async def test_wait_for_when_max_speed_then_never_sleeps(self) -> None:
        pacer = Pacer("max")
        t = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)

        start = time.monotonic()
        for n in range(50):
            await pacer.wait_for(t + timedelta(hours=n))

        assert time.monotonic() - start < 0.1

    async def test_wait_for_when_speed_n_then_bar_time_runs_n_times_faster(self) -> None:
        # Arrange: 600 x real time -> a minute of bars every 0.1 s
        pacer = Pacer("600")
        t = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)

        # Act
        start = time.monotonic()
        await pacer.wait_for(t)  # the first bar sets the origin
        after_first = time.monotonic() - start
        for n in (1, 2, 3):
            await pacer.wait_for(t + timedelta(minutes=n))
        elapsed = time.monotonic() - start

        # Assert: 3 minutes / 600 = 0.3 s; never early, generous upper bound
        assert after_first < 0.05
        assert 0.29 <= elapsed < 0.8

    async def test_wait_for_when_behind_schedule_then_does_not_sleep(self) -> None:
        pacer = Pacer("1000")
        t = datetime(2024, 3, 5, 14, 30, tzinfo=UTC)
        await pacer.wait_for(t)
        await asyncio.sleep(0.1)  # the consumer was slow: 100 s of bar time is already due

        start = time.monotonic()
        await pacer.wait_for(t + timedelta(seconds=60))

        assert time.monotonic() - start < 0.05
