"""Structured logging: JSON lines with ``event`` and ``level``, secrets scrubbed from
whatever reaches the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from kernel import logging as dlog

SECRET = "canary-secret-value-123456"


@pytest.fixture
def stream(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """Logging configured to a StringIO; the global structlog, stdlib root logger and
    registered secrets are put back afterwards."""
    monkeypatch.setattr(dlog, "_SECRETS", set())
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = io.StringIO()
    dlog.configure(level="debug", stream=out, json=True)
    yield out
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


class TestJsonLines:
    def test_log_when_json_then_one_valid_object_per_line_with_event_and_level(
        self, stream: io.StringIO
    ) -> None:
        log = structlog.get_logger("test")

        log.info("order.submitted", client_order_id="td-1", qty=5)
        log.warning("order.rejected", reason="no money")

        records = lines(stream)
        assert [(r["event"], r["level"]) for r in records] == [
            ("order.submitted", "info"), ("order.rejected", "warning")]
        assert records[0]["qty"] == 5
        assert all("timestamp" in r for r in records)

    def test_log_when_below_level_then_filtered(self, stream: io.StringIO) -> None:
        dlog.configure(level="warning", stream=stream, json=True)

        structlog.get_logger("test").info("quiet")
        structlog.get_logger("test").error("loud")

        assert [r["event"] for r in lines(stream)] == ["loud"]


class TestSecretScrubbing:
    def test_log_when_secret_in_value_then_scrubbed(self, stream: io.StringIO) -> None:
        dlog.register_secret(SECRET)

        structlog.get_logger("test").info("alpaca.request",
                                          url=f"https://x/?key={SECRET}", event_note=SECRET)

        out = stream.getvalue()
        assert SECRET not in out
        assert lines(stream)[0]["url"] == "https://x/?key=***"

    def test_log_when_secret_in_exception_then_scrubbed(self, stream: io.StringIO) -> None:
        dlog.register_secret(SECRET)
        log = structlog.get_logger("test")

        try:
            raise RuntimeError(f"401 for key {SECRET}")
        except RuntimeError as exc:
            log.error("broker.failed", error=exc, exc_info=True)

        out = stream.getvalue()
        assert SECRET not in out
        assert "401 for key ***" in out

    def test_log_when_secret_nested_in_dict_or_list_then_scrubbed(
        self, stream: io.StringIO
    ) -> None:
        dlog.register_secret(SECRET)

        structlog.get_logger("test").info(
            "alpaca.request", headers={"APCA-API-SECRET-KEY": SECRET}, args=["x", SECRET])

        assert SECRET not in stream.getvalue()
        record = lines(stream)[0]
        assert record["headers"] == {"APCA-API-SECRET-KEY": "***"}
        assert record["args"] == ["x", "***"]

    def test_log_when_stdlib_library_logs_secret_then_scrubbed(
        self, stream: io.StringIO
    ) -> None:
        dlog.register_secret(SECRET)

        logging.getLogger("websockets").warning("connect failed with %s", SECRET)

        assert SECRET not in stream.getvalue()
        assert "connect failed with ***" in stream.getvalue()

    def test_register_secret_when_short_then_ignored(self, stream: io.StringIO) -> None:
        dlog.register_secret("abc")
        dlog.register_secret(None)

        structlog.get_logger("test").info("x", note="abc")

        assert lines(stream)[0]["note"] == "abc"


class TestConcurrentWriters:
    def test_log_when_sdk_threads_and_loop_write_at_once_then_every_line_is_whole_json(
        self,
    ) -> None:
        import io
        import json
        import logging
        import threading
        import time

        import structlog

        from kernel import logging as dlog

        class SlowStream(io.StringIO):
            # write in two halves and let other threads run in between: any writer that
            # does not hold one lock across a whole line gets interleaved here
            def write(self, s: str) -> int:
                half = len(s) // 2
                super().write(s[:half])
                time.sleep(0)
                return super().write(s[half:]) + half

        stream = SlowStream()
        dlog.configure("info", stream=stream, json=True)
        try:
            sdk = logging.getLogger("alpaca.trading.stream")

            def sdk_thread() -> None:
                for i in range(300):
                    sdk.warning("websocket error %d", i)

            threads = [threading.Thread(target=sdk_thread) for _ in range(3)]
            for t in threads:
                t.start()
            log = structlog.get_logger("test")
            for i in range(900):
                log.info("order.filled", n=i)
            for t in threads:
                t.join()
        finally:
            structlog.reset_defaults()
            logging.getLogger().handlers[:] = []
        lines = stream.getvalue().splitlines()
        assert len(lines) == 1800
        parsed = [json.loads(line) for line in lines]  # raises on any interleaved line
        assert sum(1 for p in parsed if p["event"] == "order.filled") == 900


class CountingStream(io.StringIO):
    """A stream that counts its writes (each is a write syscall on a real stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingStream]:
    monkeypatch.setattr(dlog, "_SECRETS", set())
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    out = CountingStream()
    dlog.configure(level="info", stream=out, json=True)
    yield out
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


class TestBufferedLines:
    async def test_lines_of_one_loop_turn_when_loop_turns_then_written_once_in_order(
        self, counting: CountingStream
    ) -> None:
        import asyncio

        log = structlog.get_logger("test")

        for n in range(50):
            log.info("gate.pass", n=n)
        before_turn = counting.getvalue()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

        assert before_turn == ""
        assert [r["n"] for r in lines(counting)] == list(range(50))
        assert counting.writes == 1

    async def test_line_when_oldest_buffered_is_100ms_old_then_written_without_a_turn(
        self, counting: CountingStream
    ) -> None:
        import time

        log = structlog.get_logger("test")

        log.info("first")
        time.sleep(dlog.FLUSH_AFTER_SECS + 0.02)  # noqa: ASYNC251  (a busy loop: no turn)
        log.info("second")

        assert [r["event"] for r in lines(counting)] == ["first", "second"]

    def test_line_when_no_running_loop_then_written_at_once(
        self, counting: CountingStream
    ) -> None:
        structlog.get_logger("test").warning("tool.says")

        assert [r["event"] for r in lines(counting)] == ["tool.says"]

    async def test_flush_when_lines_buffered_then_written_now(
        self, counting: CountingStream
    ) -> None:
        structlog.get_logger("test").info("a")
        logging.getLogger("sdk").warning("from %s", "stdlib")  # same writer, same loop

        dlog.flush()

        assert [r["event"] for r in lines(counting)] == ["a", "from stdlib"]

    def test_lines_when_process_exits_before_the_loop_turns_then_written_at_exit(
        self, tmp_path: Any
    ) -> None:
        import subprocess
        import sys
        from pathlib import Path

        script = tmp_path / "exits.py"
        script.write_text(
            "import asyncio, sys, structlog\n"
            "from kernel import logging as dlog\n"
            "dlog.configure('info', json=True)\n"
            "async def main():\n"
            "    structlog.get_logger('x').info('daemon.last_words', n=1)\n"
            "    sys.exit(3)\n"
            "asyncio.run(main())\n")
        repo = Path(__file__).resolve().parents[2]

        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                              cwd=repo, env={"PYTHONPATH": str(repo)}, timeout=60,
                              check=False)

        assert done.returncode == 3
        assert [json.loads(x)["event"] for x in done.stdout.splitlines()] == [
            "daemon.last_words"]
