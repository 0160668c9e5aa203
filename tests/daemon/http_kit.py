"""Test support for the operator surface: a replayed daemon inside its ``Operations``
(real HTTP server on a free loopback port), and a loopback webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from config.settings import Settings, load_settings
from daemon.app import Daemon
from daemon.operations import Operations, operations_for
from signals import demodata

TOKEN = "operator-token-0123456789"


def replay_settings(tmp_path: Path, *, speed: str = "max", http: dict[str, Any] | None = None,
                    alerts: dict[str, Any] | None = None, n_symbols: int = 20,
                    **risk: Any) -> Settings:
    """A one-day demo replay with HTTP on (free port, ``TOKEN``) unless overridden."""
    csv = tmp_path / "day.csv"
    if not csv.exists():
        demodata.write(csv, days=1, n_symbols=n_symbols, seed=3)
    return load_settings(overrides={
        "daemon": {"state_dir": str(tmp_path / "state")},
        "feed": {"source": "replay", "replay": str(csv), "speed": speed},
        "http": {"enabled": True, "listen": "127.0.0.1:0", "token": TOKEN, **(http or {})},
        "alerts": alerts or {},
        "risk": risk,
    }, environ={})


@contextlib.asynccontextmanager
async def operated(settings: Settings, environ: dict[str, str] | None = None
                   ) -> AsyncIterator[tuple[Daemon, Operations, str]]:
    """The daemon (not yet running) and its entered surface; yields the base URL."""
    daemon = Daemon(settings, environ=environ or {})
    ops = operations_for(daemon)
    async with ops:
        port = ops.http.port if ops.http is not None else None
        yield daemon, ops, f"http://127.0.0.1:{port}"


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Receiver:
    """A webhook endpoint on loopback that records every POST body. ``fail_first`` makes
    the first N requests answer ``fail_status``."""

    fail_first: int = 0
    fail_status: int = 500
    bodies: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    url: str = ""
    got: asyncio.Event = field(default_factory=asyncio.Event)

    async def _hook(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests <= self.fail_first:
            return web.Response(status=self.fail_status)
        self.bodies.append(json.loads(await request.read()))
        self.got.set()
        return web.Response(text="ok")

    def named(self, name: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["alert"] == name]


@contextlib.asynccontextmanager
async def receiver(path: str = "/services/T000/B000/s3cr3t-hook-path", **kw: Any
                   ) -> AsyncIterator[Receiver]:
    rec = Receiver(**kw)
    app = web.Application()
    app.router.add_post(path, rec._hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    rec.url = f"http://127.0.0.1:{port}{path}"
    try:
        yield rec
    finally:
        await runner.cleanup()
