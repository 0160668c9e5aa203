"""The fake TWS as a separate process, with its loopback HTTP control channel."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.data import REPO


class FakeTwsProcess:
    """``python -m tests.fake_tws`` on a free port; ``call`` drives its faults and prices,
    ``snapshot`` reads its books. Close it (or use ``with``)."""

    def __init__(self, prices: dict[str, str], log: Path, *extra: str) -> None:
        args = [sys.executable, "-m", "tests.fake_tws", "--port", "0", *extra]
        for symbol, price in prices.items():
            args += ["--price", f"{symbol}={price}"]
        self._log = log.open("w")
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True,
                                     stderr=self._log)
        assert self.proc.stdout is not None
        found = re.search(r"127\.0\.0\.1:(\d+) control http://127\.0\.0\.1:(\d+)",
                          self.proc.stdout.readline())
        assert found is not None, "the fake TWS did not start"
        self.port, self._control = int(found.group(1)), f"http://127.0.0.1:{found.group(2)}"

    def __enter__(self) -> FakeTwsProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, name: str, **kwargs: Any) -> Any:
        req = urllib.request.Request(f"{self._control}/_control/{name}",
                                     data=json.dumps(kwargs).encode(), method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())["result"]

    def snapshot(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self._control}/_control/snapshot", timeout=10) as r:
            data: dict[str, Any] = json.loads(r.read())
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._log.close()


__all__ = ["FakeTwsProcess"]
