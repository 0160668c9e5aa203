"""sd_notify against a real AF_UNIX datagram socket, as systemd provides it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.sdnotify import BEAT_SECS, Notifier


class Receiver:
    """The systemd side: a bound datagram socket that collects what was sent."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(1.0)

    def recv(self) -> str:
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        out = []
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                out.append(self.recv())
        self.sock.settimeout(1.0)
        return out


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[Receiver, str]]:
    path = str(tmp_path / "notify.sock")
    r = Receiver(path)
    yield r, path
    r.sock.close()


class TestNotifier:
    def test_ready_and_stopping_when_socket_set_then_received(
        self, receiver: tuple[Receiver, str]
    ) -> None:
        # Arrange
        r, path = receiver
        notifier = Notifier({"NOTIFY_SOCKET": path})

        # Act
        ready = notifier.ready("trading paper")
        first = r.recv()
        stopping = notifier.stopping()
        second = r.recv()
        notifier.close()

        # Assert
        assert notifier.enabled is False
        assert (ready, stopping) == (True, True)
        assert first == "READY=1\nSTATUS=trading paper"
        assert second == "STOPPING=1"

    async def test_watchdog_when_usec_set_then_keepalives_at_half_interval(
        self, receiver: tuple[Receiver, str]
    ) -> None:
        # Arrange: WATCHDOG_USEC 40 ms -> a keep-alive every 20 ms
        r, path = receiver
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"})

        # Act
        task = asyncio.create_task(notifier.watchdog())
        await asyncio.sleep(0.15)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        notifier.close()

        # Assert: about 7 in 150 ms; bounds are loose so a busy machine does not flake
        received = r.drain()
        assert notifier.watchdog_interval == pytest.approx(0.02)
        assert set(received) == {"WATCHDOG=1"}
        assert 2 <= len(received) <= 10

    async def test_watchdog_when_no_usec_then_beats_but_sends_nothing(
        self, receiver: tuple[Receiver, str]
    ) -> None:
        # Arrange: systemd did not ask for keep-alives; /healthz still reads the beat
        r, path = receiver
        notifier = Notifier({"NOTIFY_SOCKET": path})
        assert notifier.beat_age() is None

        # Act
        task = asyncio.create_task(notifier.watchdog())
        await asyncio.sleep(0.05)
        age = notifier.beat_age()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

        # Assert
        assert age is not None and 0 <= age < BEAT_SECS
        assert r.drain() == []
        notifier.close()

    async def test_beat_age_when_loop_blocked_then_grows(self) -> None:
        # Arrange
        notifier = Notifier({})
        task = asyncio.create_task(notifier.watchdog())
        await asyncio.sleep(0)

        # Act: the loop is blocked; the beat cannot happen
        time.sleep(0.3)  # noqa: ASYNC251 (blocking the loop is the point)
        age = notifier.beat_age()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

        # Assert
        assert age is not None and age >= 0.3

    def test_abstract_namespace_address_when_at_prefix_then_works(self) -> None:
        # Arrange
        name = f"tradingd-test-{os.getpid()}-{id(self)}"
        r = Receiver("\0" + name)
        try:
            notifier = Notifier({"NOTIFY_SOCKET": "@" + name})

            # Act
            sent = notifier.ready()

            # Assert
            assert sent is True
            assert r.recv() == "READY=1"
        finally:
            r.sock.close()

    def test_notify_when_no_socket_then_disabled_and_false(self) -> None:
        notifier = Notifier({})

        assert notifier.enabled is False
        assert notifier.ready() is False

    def test_notify_when_nobody_listens_then_false_not_raise(self, tmp_path: Path) -> None:
        from structlog.testing import capture_logs

        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})

        with capture_logs() as logs:
            assert notifier.ready() is False

        assert [e["event"] for e in logs] == ["sdnotify.failed"]
