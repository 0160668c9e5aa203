"""Processes on a wall clock the test drives: libfaketime with a timestamp file.

``faketime_env(path, at)`` is the environment for a child process whose wall clock reads
``at`` and runs on in real time from there; ``jump(path, at)`` moves every process that
shares ``path`` to ``at`` within ``CACHE_SECS`` (libfaketime re-reads the file at most that
often). Monotonic time stays real, so asyncio's timers and timeouts are unaffected.

The library is the one the PyPI package ``libfaketime`` ships (a test extra): Debian
bookworm's 0.9.10 makes Python 3.11's ``time.sleep`` fail with EINVAL
(wolfcw/libfaketime#426). A speed factor is never used.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

CACHE_SECS = 1


def libfaketime() -> str:
    """Path of the shipped ``libfaketime.so.1``."""
    import libfaketime as pkg

    lib = Path(pkg.__file__).parent / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    assert lib.is_file(), f"libfaketime's library is missing at {lib}: pip install libfaketime"
    return str(lib)


def stamp(at: datetime) -> str:
    """The timestamp file's text for ``at`` (aware): absolute, UTC."""
    return "@" + at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "\n"


def jump(path: Path, at: datetime) -> None:
    """Move every process reading ``path`` to ``at`` (written whole: no torn reads)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(stamp(at))
    tmp.replace(path)


def faketime_env(path: Path, at: datetime) -> dict[str, str]:
    """Variables that put a child process on the clock of ``path``, starting at ``at``."""
    jump(path, at)
    return {"LD_PRELOAD": libfaketime(), "FAKETIME_TIMESTAMP_FILE": str(path),
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_CACHE_DURATION": str(CACHE_SECS),
            "TZ": "UTC"}


__all__ = ["CACHE_SECS", "faketime_env", "jump", "libfaketime", "stamp"]
