"""Processes for the live-session tests: output read in threads, log lines awaited.

``Proc`` starts a process with stdout and stderr merged, reads its lines in a thread (so a
full pipe can never stall it) and lets the test wait for a line or a structured event
instead of sleeping.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.data import REPO

Event = dict[str, Any]


class Proc:
    """A child process whose output lines are collected as they come."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                with self._cond:
                    self.lines.append(line)
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and for its last lines to be read; its exit code."""
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout)
        return code

    def events(self) -> list[Event]:
        with self._cond:
            lines = list(self.lines)
        return [json.loads(ln) for ln in lines if ln.startswith("{")]

    def wait_line(self, pattern: str, timeout: float, *, start: int = 0) -> tuple[int, str]:
        """The first line from index ``start`` matching ``pattern`` (regex), and its index."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = start
        with self._cond:
            while True:
                while i < len(self.lines):
                    if rx.search(self.lines[i]):
                        return i, self.lines[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    tail = "".join(self.lines[-30:])
                    raise AssertionError(f"no line matching {pattern!r} in {timeout}s "
                                         f"(exit {self.proc.poll()}); last lines:\n{tail}")
                self._cond.wait(min(left, 0.5))

    def wait_event(self, name: str, timeout: float, *, where: Callable[[Event], bool]
                   = lambda e: True, start: int = 0) -> tuple[int, Event]:
        """The first structured event ``name`` from line ``start`` that ``where`` accepts."""
        i = start
        deadline = time.monotonic() + timeout
        while True:
            i, line = self.wait_line(f'"event": ?"{re.escape(name)}"',
                                     max(0.1, deadline - time.monotonic()), start=i)
            event: Event = json.loads(line)
            if where(event):
                return i, event
            i += 1

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


__all__ = ["Event", "Proc"]
