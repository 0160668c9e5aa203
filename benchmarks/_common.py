"""Shared helpers for benchmarks: repo on sys.path, data location, RSS, table printing."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
MARKET_DIR = (REPO / ".." / "shared" / "data" / "market").resolve()


def peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def print_table(title: str, rows: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in rows)
    print(title)
    print("-" * (width + 20))
    for key, value in rows:
        shown = f"{value:,.2f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown:>16}")
    print("-" * (width + 20))


def print_json(figures: dict[str, Any]) -> None:
    """The last line of every benchmark: one JSON object with the figures."""
    print(json.dumps(figures, sort_keys=True))
