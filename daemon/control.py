"""The operator's line into a running daemon: a Unix socket in the state directory.

One JSON request per connection (``{"cmd": "halt", "args": {...}}``), one JSON reply
(``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``). The socket file is created
with mode 0600: only the daemon's user can halt, resume or liquidate. Commands are
registered by the components that own them.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import structlog

log = structlog.get_logger("daemon.control")

ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
SOCKET_NAME = "control.sock"
MAX_REQUEST = 64 * 1024


class ControlServer:
    """Serves registered commands on ``<state_dir>/control.sock``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SOCKET_NAME
        self._handlers: dict[str, ControlHandler] = {}
        self._server: asyncio.AbstractServer | None = None

    def register(self, name: str, handler: ControlHandler) -> None:
        self._handlers[name] = handler

    async def __aenter__(self) -> Self:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            self.path.unlink()
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        finally:
            os.umask(old)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            raw = await asyncio.wait_for(reader.readline(), 5)
            reply = await self._dispatch(raw[:MAX_REQUEST])
        except TimeoutError:
            reply = {"ok": False, "error": "timeout reading request"}
        writer.write(json.dumps(reply, default=str).encode() + b"\n")
        try:
            await writer.drain()
        finally:
            writer.close()

    async def _dispatch(self, raw: bytes) -> dict[str, Any]:
        try:
            req = json.loads(raw)
            cmd, args = str(req["cmd"]), dict(req.get("args") or {})
        except (ValueError, KeyError, TypeError):
            return {"ok": False, "error": "bad request: expected {\"cmd\": ..., \"args\": {}}"}
        handler = self._handlers.get(cmd)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}",
                    "commands": sorted(self._handlers)}
        log.info("control.command", cmd=cmd, args=args)
        try:
            return {"ok": True, **await handler(args)}
        except Exception as exc:  # reply with the failure; the daemon keeps running
            log.error("control.failed", cmd=cmd, error=repr(exc))
            return {"ok": False, "error": repr(exc)}


async def request(state_dir: Path, cmd: str, args: dict[str, Any] | None = None,
                  timeout: float = 30.0) -> dict[str, Any]:
    """Send one command to the daemon serving ``state_dir``.

    Raises:
        ConnectionError: no daemon is listening there.
    """
    path = state_dir / SOCKET_NAME
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise ConnectionError(f"no daemon is running with state dir {state_dir}") from exc
    try:
        writer.write(json.dumps({"cmd": cmd, "args": args or {}}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    finally:
        writer.close()
    reply: dict[str, Any] = json.loads(line)
    return reply
