"""One daemon per state directory: an exclusive ``flock`` on ``<state_dir>/daemon.lock``.

``tradingd run`` takes the lock before anything else touches the state directory (the
journal, the paper account, the control socket) and holds it for the life of the
process; the kernel releases it when the process ends, however it ends (a SIGKILL
leaves no stale lock). A second daemon on the same directory is refused at once with
the holder's pid. The read-only commands (``status``, ``audit``, ``report``) never take
it, so they work beside a running daemon.

The lock file holds the holder's pid (for the message); the lock itself is the flock,
never the file's existence or content.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from kernel.errors import TradingdError

LOCK_FILE = "daemon.lock"


class StateDirLocked(TradingdError):
    """Another process holds the state directory."""

    def __init__(self, state_dir: Path, holder: int | None) -> None:
        self.state_dir = state_dir
        self.holder = holder
        who = f"pid {holder}" if holder else "another process"
        super().__init__(f"state directory {state_dir} is in use by a running tradingd "
                         f"({who}); stop it first, or use another --state-dir")


class StateDirLock:
    """The exclusive lock of one state directory. ``acquire()`` or ``with``."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> Self:
        """Take the lock without waiting.

        Raises:
            StateDirLocked: another process holds it (names its pid).
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StateDirLocked(self.state_dir, holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


__all__ = ["LOCK_FILE", "StateDirLock", "StateDirLocked"]
