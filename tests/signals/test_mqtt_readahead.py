"""The read-ahead between paho and its socket (signals/_mqtt_readahead.py): the bytes paho
reads are exactly the bytes that arrived, one socket read per loop iteration, installed
on the bridge's real aiomqtt client (plain and TLS) against a real Mosquitto."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from signals._mqtt_readahead import READ_SIZE, ReadAhead
from tests.signals.helpers import client, eventually, publish_all
from tests.signals.mosquitto import Mosquitto
from tests.signals.test_mqtt_bridge import Harness, single


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    return a, b


def drain(ra: ReadAhead, sizes: list[int]) -> bytes:
    """recv with the given sizes (cycled) until the socket would block."""
    out, i = bytearray(), 0
    while True:
        try:
            chunk = ra.recv(sizes[i % len(sizes)])
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk
        i += 1


class TestReadAhead:
    async def test_bytes_buffered_when_drained_then_second_read_waits_for_next_iteration(
        self,
    ) -> None:
        # Arrange: one packet's worth in the socket
        ours, theirs = pair()
        ra = ReadAhead(ours, asyncio.get_running_loop())
        theirs.sendall(b"\x30\x05hello")
        # Act / Assert: paho's three reads are served from one socket read
        assert (ra.recv(1), ra.pending()) == (b"\x30", 6)
        assert (ra.recv(1), ra.recv(5), ra.pending()) == (b"\x05", b"hello", 0)
        # more arrives in the same loop iteration: it waits (the loop gets its turn)
        theirs.sendall(b"\x40\x02\x00\x01")
        with pytest.raises(BlockingIOError):
            ra.recv(1)
        await asyncio.sleep(0)  # the next iteration
        assert ra.recv(4) == b"\x40\x02\x00\x01"
        # the peer closes: EOF reaches paho as an empty read
        theirs.close()
        await asyncio.sleep(0)
        assert ra.recv(1) == b""
        ours.close()

    async def test_read_larger_than_asked_when_peer_wrote_more_then_one_read_size_at_most(
        self,
    ) -> None:
        ours, theirs = pair()
        theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * READ_SIZE)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * READ_SIZE)
        ra = ReadAhead(ours, asyncio.get_running_loop())
        theirs.sendall(b"x" * (2 * READ_SIZE))
        # Act: as much as one iteration gives
        got = drain(ra, [1000])
        # Assert: one read's worth, the rest left in the socket for the next iteration
        assert 0 < len(got) <= READ_SIZE
        await asyncio.sleep(0)
        assert len(got) + len(drain(ra, [1000])) > READ_SIZE
        ours.close()
        theirs.close()

    @settings(max_examples=200, deadline=None)
    @given(chunks=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=12),
           sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=5))
    def test_any_chunking_when_read_in_any_sizes_then_same_bytes_in_order(
        self, chunks: list[bytes], sizes: list[int]
    ) -> None:
        async def run() -> bytes:
            ours, theirs = pair()
            ra = ReadAhead(ours, asyncio.get_running_loop())
            got = bytearray()
            for chunk in chunks:
                theirs.sendall(chunk)
                got += drain(ra, sizes)
                await asyncio.sleep(0)
            theirs.close()
            for _ in range(len(chunks) + 2):  # whatever is left, then EOF
                await asyncio.sleep(0)
                got += drain(ra, sizes)
            ours.close()
            return bytes(got)

        assert asyncio.run(run()) == b"".join(chunks)


def make_tls(dirpath: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with the openssl command."""
    ca_key, ca, key, csr, cert = (dirpath / n for n in
                                  ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt"))
    ext = dirpath / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "2", "-subj", "/CN=tradingd test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return ca, cert, key


async def burst_through_bridge(broker: Mosquitto, n: int) -> Harness:
    """``n`` single signals from a producer to a bridge; returns once all are counted."""
    h = Harness(broker, inbox_size=2 * n)
    async with h.bridge:
        await h.bridge.wait_connected()
        paho = h.bridge._client._client  # type: ignore[union-attr]
        assert isinstance(paho._sock, ReadAhead)  # what an aiomqtt/paho upgrade may break
        async with client(broker) as producer:
            await publish_all(producer, "tradingd/signals", [single(i) for i in range(n)])
        await eventually(lambda: h.bridge.stats.received == n)
    return h


@pytest.mark.mqtt
class TestBridgeReadsAhead:
    async def test_burst_when_bridge_connected_then_read_ahead_installed_and_all_taken(
        self, mosquitto: Mosquitto
    ) -> None:
        with capture_logs() as logs:
            h = await burst_through_bridge(mosquitto, 2000)
        ids = [s.id for b in h.batches() for s in b.signals]
        assert ids == [f"s-{i}" for i in range(2000)]
        assert "mqtt.read_ahead_unavailable" not in [e["event"] for e in logs]

    async def test_burst_over_tls_when_bridge_connected_then_all_taken_in_order(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Arrange: Mosquitto with a TLS listener only; the bridge trusts the test CA the
        # way a deployment would (the default context reads SSL_CERT_FILE)
        ca, cert, key = make_tls(tmp_path)
        conf = tmp_path / "tls.conf"
        conf.write_text(f"listener 1883 127.0.0.1\ncafile {ca}\ncertfile {cert}\n"
                        f"keyfile {key}\nallow_anonymous true\n")
        monkeypatch.setenv("SSL_CERT_FILE", str(ca))
        with Mosquitto(tmp_path / "broker", template=conf) as broker:
            url = f"mqtts://{broker.host}:{broker.port}"
            trusted = ssl.create_default_context(cafile=str(ca))  # the test producer's
            h = Harness(broker, inbox_size=4000, url=url)
            async with h.bridge:
                await h.bridge.wait_connected()
                paho = h.bridge._client._client  # type: ignore[union-attr]
                assert isinstance(paho._sock, ReadAhead)
                async with client(broker, tls_context=trusted) as producer:
                    await publish_all(producer, "tradingd/signals",
                                      [single(i) for i in range(2000)])
                await eventually(lambda: h.bridge.stats.received == 2000)
        # Assert
        assert [s.id for b in h.batches() for s in b.signals] == [
            f"s-{i}" for i in range(2000)]
