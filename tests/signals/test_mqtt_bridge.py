"""The MQTT bridge against a real Mosquitto: ingress, egress, status, crosstalk, outages."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from kernel.bus import Bus
from kernel.clock import ReplayClock
from kernel.events import (
    OrderDenied,
    OrderIntent,
    OrderSubmitted,
    PositionChanged,
    SignalBatch,
    SignalRejected,
    TradingStateChanged,
)
from kernel.inbox import Inbox
from kernel.model import OrderSide, OrderType, TimeInForce
from signals.mqtt import MqttBridge
from tests.signals.helpers import Collector, client, eventually, mqtt_config, publish_all
from tests.signals.mosquitto import Mosquitto

pytestmark = pytest.mark.mqtt

T0 = datetime(2024, 3, 4, 15, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def seed_batch(**extra: Any) -> bytes:
    """The seed runbook's first trade: {'AAPL': 0.15} at 150.00."""
    body = {"ts": T0.isoformat(), "source": "runbook", "signals": {"AAPL": 0.15},
            "prices": {"AAPL": 150.0}, **extra}
    return json.dumps(body).encode()


def single(i: int, **extra: Any) -> bytes:
    body = {"id": f"s-{i}", "symbol": "MSFT", "strength": 0.25, "price": 300.0,
            "ts": T0.timestamp(), "source": "producer", **extra}
    return json.dumps(body).encode()


class Harness:
    """A bridge on a real bus and inbox, with what reached them recorded."""

    def __init__(self, broker: Mosquitto, *, prefix: str = "tradingd", inbox_size: int = 4096,
                 **cfg: Any) -> None:
        self.bus = Bus()
        self.inbox = Inbox(inbox_size)
        self.rejected: list[SignalRejected] = []
        self.failures: list[BaseException] = []
        self.bus.subscribe(SignalRejected, self.rejected.append)
        self.bridge = MqttBridge(mqtt_config(broker, prefix=prefix, **cfg),
                                 clock=ReplayClock(T0), bus=self.bus, inbox=self.inbox,
                                 on_failure=self.failures.append)

    def batches(self) -> list[SignalBatch]:
        out = []
        while (msg := self.inbox.get_nowait()) is not None:
            assert isinstance(msg, SignalBatch)
            out.append(msg)
        return out


def intent(cid: str = "td-1") -> OrderIntent:
    return OrderIntent(client_order_id=cid, symbol="AAPL", side=OrderSide.BUY, qty=5,
                       order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY, ts=T0,
                       reference_price=Decimal("150.0"))


class TestIngress:
    async def test_seed_batch_when_published_then_one_signal_batch_enters_inbox(
        self, mosquitto: Mosquitto
    ) -> None:
        # Arrange
        h = Harness(mosquitto)
        async with h.bridge, client(mosquitto) as producer:
            await h.bridge.wait_connected()
            # Act
            await producer.publish("tradingd/signals", seed_batch(), qos=1)
            await eventually(lambda: len(h.inbox) == 1)
        # Assert
        (batch,) = h.batches()
        (sig,) = batch.signals
        assert (sig.symbol, sig.strength, sig.price) == ("AAPL", 0.15, 150.0)
        assert sig.id == f"runbook:{T0.isoformat()}:AAPL"
        assert batch.source == sig.source == "mqtt:runbook"
        assert h.bridge.stats.accepted_signals == 1 and not h.failures

    async def test_repeated_id_when_received_then_ignored_and_logged_duplicate(
        self, mosquitto: Mosquitto
    ) -> None:
        h = Harness(mosquitto)
        with capture_logs() as logs:
            async with h.bridge, client(mosquitto) as producer:
                await h.bridge.wait_connected()
                await publish_all(producer, "tradingd/signals", [single(1), single(1), single(2)])
                await eventually(lambda: h.bridge.stats.received == 3)
        assert [b.signals[0].id for b in h.batches()] == ["s-1", "s-2"]
        assert h.bridge.stats.duplicates == 1
        assert [e["signal_id"] for e in logs if e["event"] == "signal.duplicate"] == ["s-1"]

    async def test_invalid_payload_when_received_then_rejected_on_bus_topic_and_log(
        self, mosquitto: Mosquitto
    ) -> None:
        # Arrange
        h = Harness(mosquitto)
        bad = single(7, strength=1.5)
        with capture_logs() as logs:
            async with h.bridge, Collector(mosquitto, ("tradingd/rejects",)) as seen, \
                    client(mosquitto) as producer:
                await h.bridge.wait_connected()
                # Act
                await producer.publish("tradingd/signals", bad, qos=1)
                await seen.wait_for(lambda: len(seen.messages) == 1)
        # Assert
        (report,) = seen.on("tradingd/rejects")
        assert report["reason"] == "OUT_OF_RANGE" and report["signal_id"] == "s-7"
        assert report["excerpt"].startswith('{"id": "s-7"') and report["size"] == len(bad)
        (event,) = h.rejected
        assert (event.reason, event.signal_id, event.source) == ("OUT_OF_RANGE", "s-7",
                                                                 "mqtt:producer")
        (line,) = [e for e in logs if e["event"] == "signal.reject"]
        assert line["reason"] == "OUT_OF_RANGE" and "strength" in line["detail"]
        assert len(h.inbox) == 0

    async def test_inbox_full_when_signal_arrives_then_rejected_queue_full_and_retry_allowed(
        self, mosquitto: Mosquitto
    ) -> None:
        h = Harness(mosquitto, inbox_size=1)
        async with h.bridge, client(mosquitto) as producer:
            await h.bridge.wait_connected()
            await publish_all(producer, "tradingd/signals", [single(1), single(2)])
            await eventually(lambda: h.bridge.stats.received == 2)
            assert [r.reason for r in h.rejected] == ["QUEUE_FULL"]
            h.batches()  # the pump catches up
            await producer.publish("tradingd/signals", single(2), qos=1)  # same id again
            await eventually(lambda: h.bridge.stats.received == 3)
        assert [b.signals[0].id for b in h.batches()] == ["s-2"]
        assert h.bridge.stats.duplicates == 0

    async def test_burst_beyond_inbound_queue_when_received_in_one_read_then_rest_refused(
        self, mosquitto: Mosquitto
    ) -> None:
        # Arrange: room for 10 received messages; 100 arrive while the loop is busy, so
        # they are read (and acknowledged) in one go
        h = Harness(mosquitto, inbound_queue=10)
        payloads = [single(i) for i in range(100)]
        async with h.bridge:
            await h.bridge.wait_connected()
            publisher = threading.Thread(target=paho_publish, args=(mosquitto, payloads))
            publisher.start()
            # The loop is blocked on purpose: until the broker has everything (acknowledged
            # to the publisher), and a little longer for it to write it all to us.
            publisher.join(10)
            time.sleep(0.3)  # noqa: ASYNC251
            # Act: the loop runs again
            await eventually(lambda: h.bridge.stats.received == 100)
        # Assert: 10 taken, the other 90 refused with QUEUE_FULL and counted, none lost
        assert [b.signals[0].id for b in h.batches()] == [f"s-{i}" for i in range(10)]
        assert h.bridge.stats.rejected == {"QUEUE_FULL": 90}
        assert [r.reason for r in h.rejected] == ["QUEUE_FULL"] * 90


def paho_publish(broker: Mosquitto, payloads: list[bytes]) -> None:
    """Publish from another thread with paho (QoS 1), waiting for every PUBACK."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="paho-burst")
    c.connect(broker.host, broker.port)
    c.loop_start()
    infos = [c.publish("tradingd/signals", p, qos=1) for p in payloads]
    for info in infos:
        info.wait_for_publish(10)
    c.disconnect()
    c.loop_stop()


class TestEgress:
    async def test_bus_events_when_published_then_arrive_on_event_topics(
        self, mosquitto: Mosquitto
    ) -> None:
        # Arrange
        h = Harness(mosquitto)
        async with h.bridge, Collector(mosquitto, ("tradingd/events/#",)) as seen:
            await h.bridge.wait_connected()
            # Act: bus handlers only queue; nothing here awaits MQTT
            h.bus.publish(OrderSubmitted(client_order_id="td-1", ts=T0))
            h.bus.publish(OrderDenied(intent=intent("td-2"), reason="MAX_POSITION",
                                      limit="0.05", observed="0.07"))
            h.bus.publish(PositionChanged(symbol="AAPL", qty=5, avg_price=Decimal("150.03"),
                                          realized_pnl=Decimal(0), ts=T0))
            h.bus.publish(TradingStateChanged(old="ACTIVE", new="HALTED", who="test",
                                              why="because", ts=T0))
            await seen.wait_for(lambda: len(seen.on("tradingd/events/state")) == 1)
        # Assert
        (order,) = seen.on("tradingd/events/orders")
        assert order == {"type": "OrderSubmitted", "client_order_id": "td-1",
                         "ts": T0.isoformat()}
        (deny,) = seen.on("tradingd/events/rejects")
        assert (deny["reason"], deny["limit"], deny["observed"]) == ("MAX_POSITION", "0.05",
                                                                     "0.07")
        assert deny["intent"]["client_order_id"] == "td-2"
        (pos,) = seen.on("tradingd/events/positions")
        assert pos["avg_price"] == "150.03"
        assert seen.on("tradingd/events/state")[0]["new"] == "HALTED"

    async def test_heartbeat_when_running_then_published_every_interval(
        self, mosquitto: Mosquitto
    ) -> None:
        h = Harness(mosquitto, heartbeat_secs=0.05)
        async with h.bridge, Collector(mosquitto, ("tradingd/events/heartbeat",)) as seen:
            await seen.wait_for(lambda: len(seen.messages) >= 3)
        beat = seen.messages[-1][1]
        assert beat["type"] == "Heartbeat" and beat["connected"] is True
        assert beat["state"] == "ACTIVE"

    async def test_status_when_connected_then_retained_online_and_offline_after_exit(
        self, mosquitto: Mosquitto
    ) -> None:
        h = Harness(mosquitto)
        async with h.bridge:
            await h.bridge.wait_connected()
            h.bus.publish(TradingStateChanged(old="ACTIVE", new="HALTED", who="t", why="w",
                                              ts=T0))
            # a subscriber arriving later still learns the state: the status is retained
            await eventually(lambda: h.bridge.stats.published >= 2)
            async with Collector(mosquitto, ("tradingd/status",)) as late:
                await late.wait_for(lambda: len(late.messages) >= 1)
            assert late.messages[-1][1]["online"] is True
            assert late.messages[-1][1]["state"] == "HALTED"
        async with Collector(mosquitto, ("tradingd/status",)) as after:
            await after.wait_for(lambda: len(after.messages) >= 1)
        assert after.messages[-1][1] == {**after.messages[-1][1], "online": False,
                                         "state": "OFFLINE"}

    async def test_process_killed_when_connected_then_retained_last_will_says_offline(
        self, mosquitto: Mosquitto
    ) -> None:
        # Arrange: a daemon-like process that dies without disconnecting
        script = textwrap.dedent(f"""
            import asyncio, os
            from kernel.bus import Bus
            from kernel.clock import WallClock
            from kernel.inbox import Inbox
            from signals.config import MqttConfig
            from signals.mqtt import MqttBridge
            async def main():
                cfg = MqttConfig(enabled=True, url={mosquitto.url!r}, keepalive_secs=5)
                async with MqttBridge(cfg, clock=WallClock(), bus=Bus(), inbox=Inbox()) as b:
                    await b.wait_connected()
                    print("up", flush=True)
                    await asyncio.sleep(60)
            asyncio.run(main())
        """)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", script, cwd=REPO, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            assert proc.stdout is not None
            async with asyncio.timeout(20):  # skip the log lines printed before "up"
                while (line := await proc.stdout.readline()) and line.strip() != b"up":
                    pass
            async with Collector(mosquitto, ("tradingd/status",)) as seen:
                await seen.wait_for(lambda: len(seen.messages) >= 1)
                assert seen.messages[-1][1]["online"] is True
                # Act
                proc.kill()
                # Assert: the broker publishes the will when the socket closes
                await seen.wait_for(lambda: seen.messages[-1][1]["online"] is False)
            assert seen.messages[-1][1]["state"] == "OFFLINE"
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


class TestIsolation:
    async def test_two_daemons_three_producers_when_sharing_a_broker_then_no_crosstalk(
        self, mosquitto: Mosquitto
    ) -> None:
        # Arrange: daemons "desk-a" and "desk-b"; producers p1 -> a, p2 -> b, p3 -> both
        a, b = Harness(mosquitto, prefix="desk-a"), Harness(mosquitto, prefix="desk-b")
        async with a.bridge, b.bridge, client(mosquitto, "p1") as p1, \
                client(mosquitto, "p2") as p2, client(mosquitto, "p3") as p3, \
                Collector(mosquitto, ("desk-a/events/#", "desk-b/events/#")) as seen:
            await a.bridge.wait_connected()
            await b.bridge.wait_connected()
            # Act
            await asyncio.gather(
                publish_all(p1, "desk-a/signals", [single(i, source="p1") for i in range(200)]),
                publish_all(p2, "desk-b/signals", [single(i, source="p2") for i in range(300)]),
                publish_all(p3, "desk-a/signals", [single(i, source="p3") for i in range(50)]),
                publish_all(p3, "desk-b/signals", [single(i, source="p3") for i in range(70)]),
            )
            a.bus.publish(OrderSubmitted(client_order_id="a-1", ts=T0))
            b.bus.publish(OrderSubmitted(client_order_id="b-1", ts=T0))
            await eventually(lambda: a.bridge.stats.received == 250
                             and b.bridge.stats.received == 370)
            # (heartbeats share the events/# topics: wait for the orders themselves)
            await seen.wait_for(lambda: bool(seen.on("desk-a/events/orders")
                                             and seen.on("desk-b/events/orders")))
        # Assert
        got_a = {(s.source, s.id) for batch in a.batches() for s in batch.signals}
        got_b = {(s.source, s.id) for batch in b.batches() for s in batch.signals}
        assert got_a == {("mqtt:p1", f"s-{i}") for i in range(200)} | {
            ("mqtt:p3", f"s-{i}") for i in range(50)}
        assert got_b == {("mqtt:p2", f"s-{i}") for i in range(300)} | {
            ("mqtt:p3", f"s-{i}") for i in range(70)}
        assert seen.on("desk-a/events/orders")[0]["client_order_id"] == "a-1"
        assert seen.on("desk-b/events/orders")[0]["client_order_id"] == "b-1"
        assert not a.rejected and not b.rejected


class TestOutage:
    async def test_broker_restart_when_running_then_bus_never_waits_and_bridge_reconnects(
        self, mosquitto: Mosquitto
    ) -> None:
        # Arrange
        h = Harness(mosquitto, outbound_queue=100)
        with capture_logs() as logs:
            async with h.bridge:
                await h.bridge.wait_connected()
                mosquitto.stop()
                await eventually(lambda: not h.bridge.connected.is_set())
                # Act: order events during the outage are queued, never awaited
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                for i in range(150):
                    h.bus.publish(OrderSubmitted(client_order_id=f"td-{i}", ts=T0))
                assert loop.time() - t0 < 0.5
                assert h.bridge.outbox.dropped["orders"] == 50  # bounded: oldest went
                mosquitto.start()
                async with Collector(mosquitto, ("tradingd/events/orders",)) as seen:
                    await h.bridge.wait_connected()
                    async with client(mosquitto) as producer:
                        await producer.publish("tradingd/signals", single(1), qos=1)
                    await eventually(lambda: len(h.inbox) == 1)
                    await seen.wait_for(lambda: len(seen.messages) >= 1, timeout=10)
        # Assert
        events = [e["event"] for e in logs]
        assert "mqtt.disconnected" in events
        assert events.count("mqtt.connected") >= 2
        assert h.bridge.stats.connects >= 2 and not h.failures

    async def test_connection_lost_after_a_burst_when_read_then_every_message_validated(
        self, mosquitto: Mosquitto
    ) -> None:
        # Arrange: 1,000 signals reach the daemon's socket while its loop is busy, then the
        # broker goes away: more than mqtt.receive takes at once is read before the
        # connection is found to have ended (its first write fails)
        h = Harness(mosquitto)
        payloads = [single(i) for i in range(1000)]
        async with h.bridge:
            await h.bridge.wait_connected()
            publisher = threading.Thread(target=paho_publish, args=(mosquitto, payloads))
            publisher.start()
            publisher.join(10)  # the loop is blocked on purpose (see the burst test)
            time.sleep(0.3)  # noqa: ASYNC251
            mosquitto.stop()
            # Act: the loop runs again
            await eventually(lambda: h.bridge.stats.disconnects >= 1)
            await asyncio.sleep(0.2)
        # Assert: every message read was validated and taken, in order, though the
        # connection ended first (what was still in the socket was never acknowledged)
        stats = h.bridge.stats
        assert stats.read > 256  # more than one mqtt.receive round
        assert stats.received == stats.read
        assert [b.signals[0].id for b in h.batches()] == [f"s-{i}" for i in range(stats.read)]
        assert not h.rejected and not h.failures

    async def test_broker_down_when_bridge_starts_then_it_retries_until_the_broker_is_up(
        self, tmp_path: Path
    ) -> None:
        # Arrange: a broker that is not running yet
        late = Mosquitto(tmp_path / "late")
        h = Harness(late)
        try:
            with capture_logs() as logs:
                async with h.bridge:
                    await eventually(lambda: h.bridge.stats.disconnects >= 2)
                    assert not h.bridge.connected.is_set()
                    # Act
                    late.start()
                    # Assert
                    await h.bridge.wait_connected()
            assert [e["event"] for e in logs].count("mqtt.connected") == 1
            assert all(e["retry_in_secs"] <= 0.5 for e in logs
                       if e["event"] == "mqtt.disconnected")
        finally:
            late.stop()
