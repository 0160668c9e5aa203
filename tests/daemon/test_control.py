"""The control socket: registered commands answer over a 0600 Unix socket."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.control import SOCKET_NAME, ControlServer, request


class Recorder:
    """A control handler that records its arguments and answers with them."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, args: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(args)
        return {"echo": args}


async def raw_exchange(state_dir: Path, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(state_dir / SOCKET_NAME))
    writer.write(payload)
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 2)
    writer.close()
    return line


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    # AF_UNIX paths are limited to ~107 bytes; tmp_path is short enough on Linux.
    return tmp_path / "state"


@pytest.fixture
def stale_state_dir(state_dir: Path) -> Path:
    state_dir.mkdir()
    (state_dir / SOCKET_NAME).write_text("left over by a crash")
    return state_dir


class TestControlServer:
    async def test_request_when_registered_command_then_handler_answers(
        self, state_dir: Path
    ) -> None:
        # Arrange
        server = ControlServer(state_dir)
        halt = Recorder()
        server.register("halt", halt)

        # Act
        async with server:
            with capture_logs() as logs:
                reply = await request(state_dir, "halt", {"why": "test"}, timeout=2)

        # Assert
        assert reply == {"ok": True, "echo": {"why": "test"}}
        assert halt.calls == [{"why": "test"}]
        assert [(e["event"], e["cmd"]) for e in logs] == [("control.command", "halt")]

    async def test_request_when_unknown_command_then_lists_commands(
        self, state_dir: Path
    ) -> None:
        server = ControlServer(state_dir)
        server.register("status", Recorder())
        server.register("halt", Recorder())

        async with server:
            reply = await request(state_dir, "liquidate", timeout=2)

        assert reply["ok"] is False
        assert "liquidate" in reply["error"]
        assert reply["commands"] == ["halt", "status"]

    async def test_enter_then_socket_file_is_owner_only(self, state_dir: Path) -> None:
        async with ControlServer(state_dir) as server:
            mode = stat.S_IMODE(server.path.stat().st_mode)
            is_socket = stat.S_ISSOCK(server.path.stat().st_mode)

        assert is_socket
        assert mode == 0o600
        assert not server.path.exists()  # removed on exit

    async def test_enter_when_stale_socket_file_then_replaced(self, stale_state_dir: Path) -> None:
        state_dir = stale_state_dir
        server = ControlServer(state_dir)
        server.register("status", Recorder())

        async with server:
            reply = await request(state_dir, "status", timeout=2)

        assert reply["ok"] is True

    async def test_request_when_handler_raises_then_error_reply_and_server_lives(
        self, state_dir: Path
    ) -> None:
        server = ControlServer(state_dir)

        async def broken(args: dict[str, Any]) -> dict[str, Any]:
            raise RuntimeError("nope")

        server.register("broken", broken)
        server.register("status", Recorder())

        async with server:
            with capture_logs():
                failed = await request(state_dir, "broken", timeout=2)
            ok = await request(state_dir, "status", timeout=2)

        assert failed == {"ok": False, "error": "RuntimeError('nope')"}
        assert ok["ok"] is True

    @pytest.mark.parametrize("payload", [b"not json\n", b"[1, 2]\n", b'{"args": {}}\n',
                                         b'{"cmd": "status", "args": "x"}\n'])
    async def test_request_when_malformed_then_bad_request(
        self, state_dir: Path, payload: bytes
    ) -> None:
        server = ControlServer(state_dir)
        server.register("status", Recorder())

        async with server:
            line = await raw_exchange(state_dir, payload)

        assert b'"ok": false' in line
        assert b"bad request" in line

    async def test_request_when_no_daemon_then_connection_error(self, state_dir: Path) -> None:
        with pytest.raises(ConnectionError, match="no daemon"):
            await request(state_dir, "status", timeout=1)
