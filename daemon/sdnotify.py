"""systemd notification protocol (sd_notify), without a C dependency.

When ``NOTIFY_SOCKET`` is set (``Type=notify`` units), the daemon sends ``READY=1`` once
it is trading, ``WATCHDOG=1`` keep-alives from the event loop at half ``WATCHDOG_USEC``
(so a stuck loop gets the unit restarted), ``STATUS=...`` lines, and ``STOPPING=1``.
"""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

log = structlog.get_logger("daemon.sdnotify")


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
        """Send WATCHDOG=1 from the event loop itself, so it stops if the loop stalls."""
        if self.watchdog_interval is None or self._sock is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self.watchdog_interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
