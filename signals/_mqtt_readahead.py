"""Read-ahead for the MQTT client's socket: every packet that one read brings in is
handled in one event-loop callback, instead of one packet per loop iteration.

Why: paho reads a packet with three ``recv`` calls (type byte, remaining length, body),
and aiomqtt's reader callback calls paho's ``loop_read`` once per readiness event, which
handles one packet (paho 2.x ignores ``loop_read``'s ``max_packets`` and reads
``max(1, in-flight QoS>0 messages)`` packets). At thousands of messages a second each
message then costs a loop iteration, three system calls, and its own PUBACK write
wake-up: about 83 µs of CPU a message for MQTT ingest alone on the project's 2-core
machine, against 38 µs with read-ahead (and far fewer context switches for Mosquitto).

How: ``ReadAhead`` stands in for paho's socket. ``recv`` serves from one read of up to
64 KiB; ``pending()`` says how much is left, which aiomqtt's reader already asks after
each ``loop_read`` (for TLS sockets, paho issue 131) and loops on. So every packet in the
read is handled in that one callback, and their PUBACKs are written together on the next
loop iteration. At most one socket read per loop iteration: a flood cannot keep the
callback, and with it the daemon's loop, busy for longer than one read's worth of
packets; the rest waits for the next readiness event (polling is level-triggered). A
TLS socket could hold decrypted bytes that the file descriptor no longer signals (not
after a 64 KiB read, records being at most 16 KiB, but should it): those are read on.

What it relies on: aiomqtt's ``Client._client`` (its paho client) and paho's
``Client._sock``, both private. ``install`` checks them and returns False if a release
changes them (the bridge then logs ``mqtt.read_ahead_unavailable`` and works as before,
only slower); ``tests/signals/test_mqtt_readahead.py`` fails in that case, so an upgrade
cannot lose it silently. It does not parse MQTT: paho still does all of that.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from typing import Any

import aiomqtt

READ_SIZE = 64 * 1024


class ReadAhead:
    """A socket for paho whose ``recv`` is served from one larger read (see module doc)."""

    __slots__ = ("_data", "_loop", "_next_iteration", "_pos", "_read_this_iteration",
                 "_sock", "_tls", "fileno", "send")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sock = sock
        self._loop = loop
        self._tls = sock if isinstance(sock, ssl.SSLSocket) else None
        self._data = b""
        self._pos = 0
        self._read_this_iteration = False
        self._next_iteration = self._allow_read
        self.send = sock.send
        self.fileno = sock.fileno

    def _allow_read(self) -> None:
        self._read_this_iteration = False

    def recv(self, bufsize: int) -> bytes:
        """Up to ``bufsize`` bytes; raises ``BlockingIOError`` as a non-blocking socket does
        when nothing is buffered and this loop iteration has had its socket read."""
        data, pos = self._data, self._pos
        if pos >= len(data):
            if self._read_this_iteration and not (self._tls and self._tls.pending()):
                raise BlockingIOError
            data = self._sock.recv(READ_SIZE)  # errors and EOF reach paho unchanged
            if not self._read_this_iteration:
                self._read_this_iteration = True
                self._loop.call_soon(self._next_iteration)
            if len(data) <= bufsize:
                self._data, self._pos = b"", 0
                return data
            self._data, pos = data, 0
        end = pos + bufsize
        self._pos = end
        return data[pos:end]

    def pending(self) -> int:
        """Bytes readable without waiting: buffered here (and decrypted, for TLS)."""
        left = len(self._data) - self._pos
        return left + self._tls.pending() if self._tls else left

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def __repr__(self) -> str:
        return f"ReadAhead({self._sock!r}, buffered={len(self._data) - self._pos})"


def install(client: aiomqtt.Client) -> bool:
    """Put a ``ReadAhead`` between ``client``'s paho client and its (connected) socket.
    False, and nothing changed, if the client does not look as expected."""
    paho = getattr(client, "_client", None)
    sock = getattr(paho, "_sock", None)
    if isinstance(sock, ReadAhead):
        return True
    if not isinstance(sock, socket.socket) or not callable(getattr(paho, "loop_read", None)):
        return False
    paho._sock = ReadAhead(sock, asyncio.get_running_loop())  # type: ignore[union-attr]
    return True


__all__ = ["READ_SIZE", "ReadAhead", "install"]
