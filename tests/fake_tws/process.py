"""The fake TWS as a separate process, with its loopback HTTP control channel."""

from __future__ import annotations

from pathlib import Path

from tests.control_process import ControlProcess


class FakeTwsProcess(ControlProcess):
    """``python -m tests.fake_tws`` on a free port; ``call`` drives its faults and prices,
    ``snapshot`` reads its books. Close it (or use ``with``)."""

    def __init__(self, prices: dict[str, str], log: Path, *extra: str) -> None:
        args = list(extra)
        for symbol, price in prices.items():
            args += ["--price", f"{symbol}={price}"]
        super().__init__("tests.fake_tws", args, log,
                         r"127\.0\.0\.1:(\d+) control http://127\.0\.0\.1:(\d+)")
        self.port = int(self.started.group(1))
        self.control = f"http://127.0.0.1:{self.started.group(2)}"


__all__ = ["FakeTwsProcess"]
