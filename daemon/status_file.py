"""The last known status the daemon writes (``status.json`` in the state directory), and
its reader for ``tradingd status`` when no daemon answers. Apart from ``daemon.app`` so
that reading it imports nothing of the trading system."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def read_status(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / STATUS_FILE
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


__all__ = ["STATUS_FILE", "read_status"]
