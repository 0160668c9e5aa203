"""Test kit for the MQTT tests: producers, a topic collector, replay bars."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt

from signals.config import MqttConfig
from tests.signals.mosquitto import Mosquitto

NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def mqtt_config(broker: Mosquitto, **overrides: Any) -> MqttConfig:
    base: dict[str, Any] = {"enabled": True, "url": broker.url, "heartbeat_secs": 0.2,
                            "reconnect_min_secs": 0.05, "reconnect_max_secs": 0.5}
    base.update(overrides)
    return MqttConfig(**base)


@contextlib.asynccontextmanager
async def client(broker: Mosquitto, identifier: str | None = None,
                 **kw: Any) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(broker.host, broker.port, identifier=identifier,
                              socket_options=NODELAY, **kw) as c:
        c.pending_calls_threshold = 1_000  # producers pipeline publishes (publish_all)
        yield c


async def publish_all(c: aiomqtt.Client, topic: str, payloads: Iterable[bytes], *,
                      qos: int = 1, window: int = 64) -> int:
    """Publish with up to ``window`` publishes in flight (QoS 1 acks are pipelined)."""
    n = 0
    pending: list[asyncio.Task[None]] = []
    for p in payloads:
        pending.append(asyncio.create_task(c.publish(topic, p, qos=qos)))
        n += 1
        if len(pending) >= window:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return n


@dataclass
class Collector:
    """Subscribes to ``topics`` and keeps every message as (topic, decoded JSON)."""

    broker: Mosquitto
    topics: tuple[str, ...]
    username: str | None = None
    password: str | None = None
    messages: list[tuple[str, Any]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _client: aiomqtt.Client | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="test.collector")
        await asyncio.wait_for(self._ready.wait(), 5)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        async with client(self.broker, username=self.username, password=self.password) as c:
            for t in self.topics:
                await c.subscribe(t, qos=1)
            self._ready.set()
            async for m in c.messages:
                raw = m.payload if isinstance(m.payload, bytes) else b""
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw
                self.messages.append((m.topic.value, body))
                self._changed.set()

    def on(self, topic: str) -> list[Any]:
        return [b for t, b in self.messages if t == topic]

    async def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not pred():
                self._changed.clear()
                await self._changed.wait()


async def eventually(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``pred``: counters and queues under test have no event to wait on."""
    async with asyncio.timeout(timeout):
        while not pred():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


def write_bars(path: Path, start: datetime, minutes: int,
               prices: dict[str, float]) -> Path:
    """A replay CSV with one flat bar per symbol per minute (open = close = price)."""
    rows = ["timestamp,symbol,open,high,low,close,volume"]
    for i in range(minutes):
        ts = (start + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
        rows += [f"{ts},{s},{p},{p},{p},{p},100000" for s, p in sorted(prices.items())]
    path.write_text("\n".join(rows) + "\n")
    return path
