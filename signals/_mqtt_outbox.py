"""Outgoing MQTT messages: which bus events go where, how they are encoded, and the
bounded buffer between the bus (which never awaits) and the publish task.

Topics, under ``<prefix>/events/<kind>``:

==============  ===========================================================  =====  =====
kind            events                                                       QoS    class
==============  ===========================================================  =====  =====
``orders``      ``OrderSubmitted``, ``OrderApproved`` and every broker         1      keep
                order event except fills (accepted, new, canceled, ...)
``fills``       ``OrderFilled``                                              1      keep
``state``       ``TradingStateChanged``                                      1      keep
``alerts``      ``AlertRaised``                                              1      keep
``broker``      ``BrokerStatusChanged``                                      1      keep
``control``     the outcome of each control message                          1      keep
``rejects``     ``OrderDenied`` from the gate (reason, limit, observed)      0      lossy
``positions``   ``PositionChanged``                                          0      lossy
``heartbeat``   the bridge's heartbeat (and bus ``Heartbeat`` events)        0      lossy
==============  ===========================================================  =====  =====

Gate denials are lossy on purpose: a flood of refused signals (thousands a second) must
never push an order or a fill out of the buffer, and each denial is also logged
(``gate.reject``) and journaled, so the MQTT copy is a live view, not the record.

Besides: ``<prefix>/rejects`` (ingress rejects, lossy, QoS 0) and the retained
``<prefix>/status`` (keep, QoS 1).

Overflow policy of ``Outbox`` (bounded at ``maxsize``): when full, the *oldest lossy*
message is dropped to make room (a newer position or heartbeat supersedes it anyway). A
lossy message never evicts a keep message: if only keep messages are queued, the new
lossy one is dropped. A keep message arriving when only keep messages are queued evicts
the oldest of them (the buffer must stay bounded and the bus must never wait): counted
and logged ``mqtt.outbox_overflow``. Every drop is counted per kind in ``dropped``.
Within the buffer, messages leave in the order they arrived.

Lossy kinds are also rate limited, ``lossy_per_sec`` per kind (token bucket, default
500/s): a storm of refused signals costs the daemon a counter increment per message
(``throttled``), not an MQTT publish, and does not flood the broker. The counts ride on
every heartbeat.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from typing import Any

import orjson
import structlog

from kernel.events import (
    AlertRaised,
    BrokerStatusChanged,
    Event,
    Heartbeat,
    OrderApproved,
    OrderDenied,
    OrderEvent,
    OrderFilled,
    PositionChanged,
    TradingStateChanged,
)

log = structlog.get_logger("signals.mqtt")

LOSSY_KINDS = frozenset({"rejects", "positions", "heartbeat", "ingress_rejects"})
# The event types the bridge subscribes to (subclasses included, e.g. every OrderEvent).
PUBLISHED_EVENTS: tuple[type[Event], ...] = (
    OrderEvent, OrderApproved, OrderDenied, TradingStateChanged, PositionChanged, Heartbeat,
    AlertRaised, BrokerStatusChanged,
)


def kind_of(event: Event) -> str | None:
    """The events topic an event goes to, or None when it is not published."""
    if isinstance(event, OrderFilled):
        return "fills"
    if isinstance(event, OrderEvent | OrderApproved):
        return "orders"
    if isinstance(event, OrderDenied):
        return "rejects"
    if isinstance(event, TradingStateChanged):
        return "state"
    if isinstance(event, PositionChanged):
        return "positions"
    if isinstance(event, Heartbeat):
        return "heartbeat"
    if isinstance(event, AlertRaised):
        return "alerts"
    if isinstance(event, BrokerStatusChanged):
        return "broker"
    return None


def _default(value: Any) -> Any:
    # Decimals as strings keep money exact; anything else unknown is shown, not fatal.
    return str(value)


def encode_event(event: Event, extra: Mapping[str, Any] | None = None) -> bytes:
    """``{"type": "<EventName>", <fields>..., <extra>...}`` as JSON bytes. orjson walks
    the (slotted) dataclasses natively: times ISO-8601, enums by value, NaN as null."""
    raw = orjson.dumps(event, default=_default)
    head = b'{"type":"' + type(event).__name__.encode() + b'"'
    body = raw[1:-1]
    tail = b"," + orjson.dumps(extra, default=_default)[1:-1] if extra else b""
    return head + (b"," + body if body else b"") + tail + b"}"


def dumps(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body, default=_default)


@dataclasses.dataclass(slots=True)
class Outgoing:
    """One message waiting to be published. ``body`` is encoded by the publish task, so
    the bus handler that queued it only pays for an append."""

    kind: str
    topic: str
    body: Event | Mapping[str, Any]
    qos: int = 1
    retain: bool = False
    seq: int = 0

    @property
    def lossy(self) -> bool:
        return self.kind in LOSSY_KINDS


class Outbox:
    """The bounded, never-blocking buffer of outgoing messages (policy in the module doc).

    Single consumer (the publish task); producers are bus handlers and the bridge.
    """

    def __init__(self, maxsize: int, *, lossy_per_sec: float = 500.0,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.maxsize = maxsize
        self._rate = lossy_per_sec
        self._now = now  # rate limiting only (wall time), never a domain timestamp
        self._buckets: dict[str, tuple[float, float]] = {}  # kind -> (tokens, at)
        self.throttled: Counter[str] = Counter()
        self._keep: deque[Outgoing] = deque()
        self._lossy: deque[Outgoing] = deque()
        self._seq = 0
        self._ready = asyncio.Event()
        self._no_keep = asyncio.Event()
        self._no_keep.set()
        self.dropped: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._keep) + len(self._lossy)

    def put(self, msg: Outgoing) -> None:
        """Queue ``msg``; never waits (drops by the overflow policy when full)."""
        if msg.lossy and not self._take_token(msg.kind):
            self.throttled[msg.kind] += 1
            return
        if len(self) >= self.maxsize and not self._make_room(msg):
            return
        self._seq += 1
        msg.seq = self._seq
        (self._lossy if msg.lossy else self._keep).append(msg)
        self._ready.set()
        if not msg.lossy:
            self._no_keep.clear()

    def _take_token(self, kind: str) -> bool:
        """Token bucket per lossy kind: ``lossy_per_sec`` a second, bursts of as many."""
        now = self._now()
        tokens, at = self._buckets.get(kind, (self._rate, now))
        tokens = min(self._rate, tokens + (now - at) * self._rate)
        if tokens < 1:
            self._buckets[kind] = (tokens, now)
            return False
        self._buckets[kind] = (tokens - 1, now)
        return True

    def _make_room(self, msg: Outgoing) -> bool:
        if self._lossy:
            self.dropped[self._lossy.popleft().kind] += 1
            return True
        if msg.lossy:
            self.dropped[msg.kind] += 1
            return False
        victim = self._keep.popleft()
        self.dropped[victim.kind] += 1
        total = sum(c for k, c in self.dropped.items() if k not in LOSSY_KINDS)
        if total == 1 or total % 1000 == 0:  # first, then every 1000th: a storm stays readable
            log.warning("mqtt.outbox_overflow", dropped_kind=victim.kind, dropped_keep=total,
                        maxsize=self.maxsize)
        return True

    def requeue(self, msg: Outgoing) -> None:
        """Put back a message whose publish failed (the connection dropped), in its
        original place: several pipelined publishes may fail together, in any order."""
        queue = self._lossy if msg.lossy else self._keep
        at = next((i for i, m in enumerate(queue) if m.seq > msg.seq), len(queue))
        queue.insert(at, msg)
        self._ready.set()
        if not msg.lossy:
            self._no_keep.clear()

    def pop(self) -> Outgoing | None:
        keep, lossy = self._keep, self._lossy
        if keep and (not lossy or keep[0].seq < lossy[0].seq):
            msg = keep.popleft()
            if not keep:
                self._no_keep.set()
            return msg
        if lossy:
            return lossy.popleft()
        return None

    async def get(self) -> Outgoing:
        while True:
            msg = self.pop()
            if msg is not None:
                return msg
            self._ready.clear()
            await self._ready.wait()

    async def keep_taken(self) -> None:
        """Wait until every keep message has been taken by the publish task."""
        await self._no_keep.wait()
