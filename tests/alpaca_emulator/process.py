"""The Alpaca emulator as a separate process, with its ``/_control`` API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.data import REPO


class EmulatorProcess:
    """``python -m tests.alpaca_emulator`` on a free port (``base`` is its URL); ``call``
    drives it (``advance`` publishes the next minute of its bars), ``snapshot`` reads its
    books. Close it (or use ``with``)."""

    def __init__(self, log: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.alpaca_emulator", "--port", "0", *args], cwd=REPO,
            env=env, stdout=subprocess.PIPE, stderr=self._log, text=True)
        assert self.proc.stdout is not None
        found = re.search(r"127\.0\.0\.1:(\d+)", self.proc.stdout.readline())
        assert found is not None, "the emulator did not start"
        self.base = f"http://127.0.0.1:{found.group(1)}"

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, name: str, **kwargs: Any) -> Any:
        req = urllib.request.Request(f"{self.base}/_control/{name}",
                                     data=json.dumps(kwargs).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["result"]

    def snapshot(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.base}/_control/snapshot", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()


__all__ = ["EmulatorProcess"]
