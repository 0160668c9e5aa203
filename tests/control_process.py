"""A test double run as its own process with a loopback ``/_control`` HTTP API: the
Alpaca emulator (``tests.alpaca_emulator.process``) and the fake TWS
(``tests.fake_tws.process``) both start this way and are driven the same way."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Self

from tests.data import REPO


class ControlProcess:
    """``python -m <module> --port 0 ...`` whose first stdout line names its ports
    (``started`` matches it); ``call`` drives it, ``snapshot`` reads its books. Close it
    (or use ``with``)."""

    def __init__(self, module: str, args: list[str], log: Path, started: str, *,
                 env: dict[str, str] | None = None) -> None:
        self._log = log.open("w")
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--port", "0", *args],
                                     cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        assert self.proc.stdout is not None
        found = re.search(started, self.proc.stdout.readline())
        assert found is not None, f"{module} did not start"
        self.started = found
        self.control = ""  # set by the subclass from ``started``

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, name: str, **kwargs: Any) -> Any:
        req = urllib.request.Request(f"{self.control}/_control/{name}",
                                     data=json.dumps(kwargs).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["result"]

    def snapshot(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.control}/_control/snapshot", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()
