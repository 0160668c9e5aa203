"""systemd notification protocol (sd_notify), without a C dependency.

When ``NOTIFY_SOCKET`` is set (``Type=notify`` units), the daemon sends ``READY=1`` once
it is trading, ``WATCHDOG=1`` keep-alives from the event loop at half ``WATCHDOG_USEC``
(so a stuck loop gets the unit restarted), ``STATUS=...`` lines, and ``STOPPING=1``.

The watchdog task beats from the event loop whether or not systemd asks for keep-alives
(at least every ``BEAT_SECS``); ``beat_age()`` is that signal, and ``GET /healthz``
answers from it: one notion of "the loop is responsive" for systemd and for probes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import structlog

log = structlog.get_logger("daemon.sdnotify")

BEAT_SECS = 0.5


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self._addr = addr
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 else None
        self._sock: socket.socket | None = None
        self.last_beat: float | None = None  # time.monotonic() of the last watchdog beat
        if addr:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *lines: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError as exc:
            log.warning("sdnotify.failed", error=repr(exc))
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *( [f"STATUS={status}"] if status else []))

    def waiting(self, status: str, extend_secs: float) -> bool:
        """Still starting (e.g. waiting for the broker): say why, and extend systemd's
        start timeout by ``extend_secs`` so a long wait is not taken for a hang."""
        return self.notify(f"STATUS={status}", f"EXTEND_TIMEOUT_USEC={int(extend_secs * 1e6)}")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    async def watchdog(self) -> None:
        """Beat from the event loop itself, and send WATCHDOG=1 every half
        ``WATCHDOG_USEC`` when systemd asks: both stop if the loop stalls."""
        keepalive = self.watchdog_interval if self._sock is not None else None
        sent = float("-inf")
        while True:
            now = self.last_beat = time.monotonic()
            if keepalive is not None and now - sent >= keepalive:
                self.notify("WATCHDOG=1")
                sent = now
            await asyncio.sleep(min(BEAT_SECS, keepalive or BEAT_SECS))

    def beat_age(self) -> float | None:
        """Seconds since the watchdog last beat; None before its task has started."""
        return None if self.last_beat is None else time.monotonic() - self.last_beat

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
