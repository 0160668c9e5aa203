"""Bounded ingress from producers that live outside the bus (feeds, broker streams, MQTT).

Overflow policy, by kind of message (``Inbox.put`` decides from the message type):

* ``BarBatch`` from a live feed: *coalesced*. When the inbox is full, the new batch is
  merged into the newest queued batch (first open, max high, min low, last close, summed
  volume per symbol), so the bus sees fewer, wider bars but never a gap. Replay feeds use
  ``put_wait`` instead and are simply slowed down (lossless backpressure).
* Order and fill events (and every other event): *never dropped*. ``put_wait`` waits for
  room; ``put_threadsafe`` (for SDK threads) blocks its thread until there is room.
* ``SignalBatch`` from external producers: ``offer`` refuses when full, and the caller
  rejects the signal with reason ``QUEUE_FULL`` (counted and logged), never silently.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque

from kernel.events import BarBatch, Message


class Inbox:
    """A bounded FIFO of messages for the bus pump. Single consumer, many producers."""

    def __init__(self, maxsize: int = 1024) -> None:
        self.maxsize = maxsize
        self._q: deque[Message] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self.coalesced = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._q)

    @property
    def full(self) -> bool:
        return len(self._q) >= self.maxsize

    def _push(self, msg: Message) -> None:
        self._q.append(msg)
        self._readable.set()
        if self.full:
            self._writable.clear()

    async def put_wait(self, msg: Message) -> None:
        """Enqueue, waiting for room: lossless backpressure."""
        while self.full:
            await self._writable.wait()
        self._push(msg)

    def put_bars(self, batch: BarBatch) -> None:
        """Enqueue a live bar batch; when full, coalesce it into the newest queued batch."""
        if self.full:
            for i in range(len(self._q) - 1, -1, -1):
                queued = self._q[i]
                if isinstance(queued, BarBatch):
                    self._q[i] = BarBatch.merge(queued, batch)
                    self.coalesced += 1
                    return
        self._push(batch)

    def offer(self, msg: Message) -> bool:
        """Enqueue if there is room; False (and counted) when full."""
        if self.full:
            self.refused += 1
            return False
        self._push(msg)
        return True

    def put_threadsafe(
        self, loop: asyncio.AbstractEventLoop, msg: Message, timeout: float | None = None
    ) -> None:
        """From a foreign thread: enqueue on ``loop``, blocking this thread while full.

        Raises:
            TimeoutError: no room within ``timeout``; the pending put is cancelled, so a
                message the caller was told failed is not enqueued later behind its back.
        """
        fut: concurrent.futures.Future[None] = asyncio.run_coroutine_threadsafe(
            self.put_wait(msg), loop
        )
        try:
            fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    async def get(self) -> Message:
        while not self._q:
            self._readable.clear()
            await self._readable.wait()
        msg = self._q.popleft()
        if not self.full:
            self._writable.set()
        return msg

    def get_nowait(self) -> Message | None:
        if not self._q:
            return None
        msg = self._q.popleft()
        if not self.full:
            self._writable.set()
        return msg
