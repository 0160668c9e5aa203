"""The Alpaca emulator as a separate process, with its ``/_control`` API."""

from __future__ import annotations

from pathlib import Path

from tests.control_process import ControlProcess


class EmulatorProcess(ControlProcess):
    """``python -m tests.alpaca_emulator`` on a free port (``base`` is its URL); ``call``
    drives it (``advance`` publishes the next minute of its bars), ``snapshot`` reads its
    books. Close it (or use ``with``)."""

    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        super().__init__("tests.alpaca_emulator", list(args), log, r"127\.0\.0\.1:(\d+)",
                         env=env)
        self.base = self.control = f"http://127.0.0.1:{self.started.group(1)}"


__all__ = ["EmulatorProcess"]
