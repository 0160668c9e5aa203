"""The queue between aiomqtt and the bridge: every message read from the broker is
dispatched by the bridge, or refused ``QUEUE_FULL``, or (at stop) counted in the log;
never lost on the way.

aiomqtt hands each message from paho's ``on_message`` to ``put_nowait`` of the queue it
was given (``queue_type``), and its message iterator waits for the next one with
``get()``. paho has acknowledged the message to the broker by then (QoS 1 is acknowledged
when ``on_message`` returns), so the broker will not send it again. With an
``asyncio.Queue`` a message can still be lost: the iterator runs ``get()`` in a task of
its own, and when the iterator is cancelled (a failed publish ends the connection's task
group; the daemon stops) after that task took a message but before the iterator returned
it, the message goes with the task.

So here ``get()`` waits for a message and returns the oldest *without removing it*; the
bridge removes each message as it dispatches it (``take``). What is still queued when a
connection ends is dispatched then (``MqttBridge._take_leftovers``), and at stop it is
counted in the log (``mqtt.ingress_unprocessed``). aiomqtt uses only ``put_nowait``,
``get`` and ``qsize``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import aiomqtt


class IngressQueue:
    """Bounded FIFO of received messages, single consumer (see the module doc).

    Args:
        maxsize: at most this many queued (``put_nowait`` refuses the rest).
        on_read: called with every message handed over, queued or not.
        on_overflow: called with each message refused because the queue is full.
    """

    def __init__(self, maxsize: int, *, on_read: Callable[[aiomqtt.Message], None],
                 on_overflow: Callable[[aiomqtt.Message], None]) -> None:
        self.maxsize = maxsize
        self._items: deque[aiomqtt.Message] = deque()
        self._readable = asyncio.Event()
        self._on_read = on_read
        self._on_overflow = on_overflow

    def qsize(self) -> int:
        return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def put_nowait(self, item: aiomqtt.Message) -> None:
        """Queue ``item``; when full, report it to ``on_overflow`` and raise
        ``asyncio.QueueFull`` (which aiomqtt expects, and logs at warning)."""
        self._on_read(item)
        if len(self._items) >= self.maxsize:
            self._on_overflow(item)
            raise asyncio.QueueFull
        self._items.append(item)
        self._readable.set()

    async def get(self) -> aiomqtt.Message:
        """The oldest message once there is one, *left in the queue*: cancelling this
        (or the task running it) can never lose a message."""
        while not self._items:
            self._readable.clear()
            await self._readable.wait()
        return self._items[0]

    def take(self) -> aiomqtt.Message | None:
        """Remove and return the oldest message, or None when empty."""
        return self._items.popleft() if self._items else None


__all__ = ["IngressQueue"]
