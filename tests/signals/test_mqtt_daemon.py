"""The whole daemon with MQTT enabled, against a real Mosquitto: the seed runbook trade
end to end, a fuzz storm, and signed control (halt) on an authenticated broker."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from structlog.testing import capture_logs

from config.settings import Settings, load_settings
from daemon.app import Daemon
from signals.mqtt_control import sign_control
from tests.signals.helpers import (
    Collector,
    client,
    eventually,
    publish_all,
    write_bars,
)
from tests.signals.mosquitto import Mosquitto
from tests.signals.mqtt_fixtures import (
    DAEMON_PASSWORD,
    DAEMON_USER,
    OPERATOR_PASSWORD,
    OPERATOR_USER,
    PRODUCER_PASSWORD,
    PRODUCER_USER,
)

pytestmark = pytest.mark.mqtt

OPEN = datetime(2024, 3, 4, 14, 35, tzinfo=UTC)  # 09:35 New York, a Monday
SECRET = "control-secret-5b7e2c41d9"


def settings(tmp: Path, broker: Mosquitto, *, minutes: int = 300, speed: str = "600",
             **mqtt: Any) -> Settings:
    csv = write_bars(tmp / "bars.csv", OPEN, minutes, {"AAPL": 150.0, "MSFT": 300.0})
    return load_settings(environ={}, overrides={
        "daemon": {"state_dir": str(tmp / "state")},
        "feed": {"replay": str(csv), "speed": speed},
        # The replay clock runs 600x; the gate's staleness check is not under test here.
        "risk": {"stale_signal_secs": 3600},
        "signals": {"demo": {"enabled": False},
                    "mqtt": {"enabled": True, "url": broker.url, "heartbeat_secs": 0.5,
                             **mqtt}},
    })


def build(s: Settings) -> Daemon:
    """The real app: paper broker ($100,000), sizing, risk gate, order manager."""
    return Daemon(s, environ={})


@contextlib.asynccontextmanager
async def running(daemon: Daemon) -> AsyncIterator[asyncio.Task[int]]:
    task = asyncio.create_task(daemon.run(), name="test.daemon")
    assert daemon.mqtt is not None
    await daemon.mqtt.wait_connected()
    try:
        yield task
    finally:
        daemon.request_stop("test over")
        await asyncio.wait_for(task, 20)


def seed(daemon: Daemon, **extra: Any) -> bytes:
    """The seed runbook batch, stamped with the daemon's (replay) time."""
    return json.dumps({"ts": daemon.clock.now().isoformat(), "source": "runbook",
                       "signals": {"AAPL": 0.15}, "prices": {"AAPL": 150.0}, **extra}).encode()


class TestEndToEnd:
    async def test_seed_batch_when_published_then_one_5_share_buy_and_its_events_on_topics(
        self, tmp_path: Path, mosquitto: Mosquitto
    ) -> None:
        # Arrange
        daemon = build(settings(tmp_path, mosquitto))
        async with running(daemon) as task, \
                Collector(mosquitto, ("tradingd/events/#",)) as seen, \
                client(mosquitto) as producer:
            # Act
            await producer.publish("tradingd/signals", seed(daemon), qos=1)
            await seen.wait_for(lambda: len(seen.on("tradingd/events/fills")) == 1)
            await seen.wait_for(lambda: len(seen.on("tradingd/events/positions")) == 1)
        # Assert
        assert task.result() == 0
        orders = seen.on("tradingd/events/orders")
        assert [o["type"] for o in orders] == ["OrderApproved", "OrderSubmitted", "OrderNew"]
        (approved, submitted, _) = orders
        intent = approved["intent"]
        assert (intent["symbol"], intent["side"], intent["qty"]) == ("AAPL", "buy", 5)
        assert intent["signal"]["id"].startswith("runbook:") and approved["original_qty"] == 5
        cid = intent["client_order_id"]
        assert {o.get("client_order_id", cid) for o in orders} == {cid}
        assert submitted["order"] == {**submitted["order"], "symbol": "AAPL", "side": "buy",
                                      "qty": 5, "type": "market"}
        (fill,) = seen.on("tradingd/events/fills")
        assert fill["fill"]["qty"] == 5 and fill["fill"]["side"] == "buy"
        assert fill["client_order_id"] == cid
        (position,) = seen.on("tradingd/events/positions")
        assert (position["symbol"], position["qty"]) == ("AAPL", 5)
        assert daemon.system.stats.orders == 1 and daemon.system.portfolio.qty("AAPL") == 5
        assert fill["fill"]["price"] == "150.0300"  # next bar's open + 2 bps slippage


def malformed(n: int, rng: random.Random) -> Iterator[bytes]:
    """``n`` payloads that must all be refused, cycling through every kind of bad."""
    ok = {"id": "x", "symbol": "AAPL", "strength": 0.15, "price": 150.0,
          "ts": "2024-03-04T14:40:00Z", "source": "fuzz"}
    batch = {"ts": "2024-03-04T14:40:00Z", "source": "fuzz", "signals": {"AAPL": 0.15},
             "prices": {"AAPL": 150.0}}
    wrong: dict[str, list[Any]] = {  # per field: values that field must refuse
        "strength": [None, True, "0.15", [], {}, 1.0001, -1.5, 1e308, 10**30],
        "price": [None, False, "150", 0, -5, 0.0, 1e7, 10**30, [150.0]],
        "ts": [None, True, "yesterday", "2024-03-04T14:40:00", 1709563200000, -1, ""],
        "symbol": ["aapl", "", "A" * 30, 5, None, "AAPL/#", "ÄPFEL"],
        "id": ["", "has space", 5, None, "x" * 200],
        "source": ["", "sp ace", 5, None, {"a": 1}],
    }
    fields = sorted(wrong)
    makers = [
        lambda i: rng.randbytes(rng.randint(0, 300)),
        lambda i: b"\xff\xfe" + rng.randbytes(20),
        lambda i: json.dumps(rng.choice([[], [ok], "signal", 42, None, True,
                                         {"signals": []}])).encode(),
        lambda i: json.dumps({**ok, "id": f"f{i}", "strength": rng.choice(
            ["NaN", "Infinity"])}).encode().replace(b'"NaN"', b"NaN").replace(
            b'"Infinity"', b"-Infinity"),
        lambda i: f'{{"id":"f{i}","symbol":"AAPL","strength":1e999,"price":150,'
                  f'"ts":1709563200,"source":"fuzz"}}'.encode(),
        lambda i: json.dumps({**ok, "id": f"f{i}",
                              **{(f := rng.choice(fields)): rng.choice(wrong[f])}}).encode(),
        lambda i: json.dumps(dict(rng.sample(sorted(ok.items()), rng.randint(0, 5)))).encode(),
        lambda i: json.dumps({**ok, "id": f"f{i}", "extra": 1}).encode(),
        lambda i: json.dumps({**batch, "prices": {}}).encode(),
        lambda i: json.dumps({**batch, "signals": {"AAPL": rng.choice(wrong["strength"])}}
                             ).encode(),
        lambda i: json.dumps({**batch, "signals": {f"S{k}": 0.1 for k in range(1500)},
                              "prices": {f"S{k}": 1.0 for k in range(1500)}}).encode(),
        lambda i: b"[" * 5000 + b"]" * 5000,
        lambda i: b'{"id":"f' + str(i).encode() + b'","price":' + b"9" * 400 + b"}",
        lambda i: json.dumps(ok)[: rng.randint(0, 60)].encode(),
    ]
    for i in range(n):
        if i % 500 == 0:
            yield b"{" + b" " * (1024 * 1024) + b"}"  # 1 MB bodies, 20 of them
        else:
            yield makers[i % len(makers)](i)


class TestFuzz:
    async def test_10000_malformed_payloads_when_received_then_all_rejected_and_no_order(
        self, tmp_path: Path, mosquitto: Mosquitto
    ) -> None:
        # Arrange
        n = 10_000
        payloads = list(malformed(n, random.Random(20240304)))
        daemon = build(settings(tmp_path, mosquitto, minutes=2000, speed="60",
                                inbound_queue=n))
        t0 = time.monotonic()
        async with running(daemon) as task, client(mosquitto) as producer:
            bridge = daemon.mqtt
            assert bridge is not None
            # Act
            await publish_all(producer, "tradingd/signals", payloads)
            await eventually(lambda: bridge.stats.received == n, timeout=45)
            # Assert: still up, every payload counted as rejected, nothing traded
            assert not task.done()
        assert task.result() == 0
        assert bridge.stats.rejected_total == n, bridge.stats.rejected
        assert sum(daemon.system.stats.signal_rejects.values()) == n
        assert bridge.stats.accepted_signals == 0 and daemon.system.stats.signals == 0
        assert daemon.system.stats.orders == 0 and not daemon.system.orders.orders
        assert {"MALFORMED_JSON", "SCHEMA", "TOO_LARGE", "NON_FINITE",
                "OUT_OF_RANGE"} <= set(bridge.stats.rejected)
        assert time.monotonic() - t0 < 45


class TestControl:
    async def test_halt_when_unsigned_then_refused_when_signed_then_new_orders_denied(
        self, tmp_path: Path, mosquitto_auth: Mosquitto
    ) -> None:
        # Arrange: an authenticated broker with ACLs, the daemon with its own account
        broker = mosquitto_auth
        s = settings(tmp_path, broker, username=DAEMON_USER, password=DAEMON_PASSWORD,
                     control_secret=SECRET)
        daemon = build(s)
        bridge = daemon.mqtt
        assert bridge is not None
        now = time.time
        with capture_logs() as logs:
            async with running(daemon), \
                    client(broker, username=OPERATOR_USER, password=OPERATOR_PASSWORD) as op, \
                    client(broker, username=PRODUCER_USER,
                           password=PRODUCER_PASSWORD) as producer, \
                    Collector(broker, ("tradingd/events/#",), username=OPERATOR_USER,
                              password=OPERATOR_PASSWORD) as seen:
                # Act 1: a forged signature, and a message signed with the wrong key
                forged = json.loads(sign_control(SECRET, target="tradingd", cmd="halt",
                                                 ts=now()))
                forged["sig"] = "0" * 64
                await op.publish("tradingd/control", json.dumps(forged), qos=1)
                await op.publish("tradingd/control", sign_control(
                    "not-the-secret", target="tradingd", cmd="halt", ts=now()), qos=1)
                await op.publish("tradingd/control", b'{"cmd": "halt"}', qos=1)
                await eventually(lambda: sum(bridge.stats.control_refused.values()) == 3)
                assert daemon.system.risk_state.state == "ACTIVE"
                # Act 2: a producer may not publish control at all, even correctly signed:
                # the broker's ACL refuses it (Mosquitto 2 may also drop the connection)
                with contextlib.suppress(aiomqtt.MqttError):
                    async with client(broker, username=PRODUCER_USER,
                                      password=PRODUCER_PASSWORD) as intruder:
                        await intruder.publish("tradingd/control", sign_control(
                            SECRET, target="tradingd", cmd="halt", ts=now()), qos=1)
                await producer.publish("tradingd/signals", seed(daemon, id="warmup"), qos=1)
                await eventually(lambda: bridge.stats.received == 1)
                assert daemon.system.risk_state.state == "ACTIVE"
                assert bridge.stats.control_accepted == 0
                await eventually(lambda: daemon.system.portfolio.qty("AAPL") == 5)  # bought, filled
                # Act 3: the operator's correctly signed halt
                signed = sign_control(SECRET, target="tradingd", cmd="halt", ts=now(),
                                      args={"why": "test"})
                await op.publish("tradingd/control", signed, qos=1)
                await eventually(lambda: daemon.system.risk_state.state == "HALTED")
                await producer.publish("tradingd/signals", seed(daemon, id="after-halt",
                                                                signals={"MSFT": 0.2},
                                                                prices={"MSFT": 300.0}),
                                       qos=1)
                await eventually(lambda: daemon.system.stats.denied["TRADING_HALTED"] == 1)
                await seen.wait_for(lambda: len(seen.on("tradingd/events/rejects")) == 1)
                # Act 4: the same signed message again is a replay
                await op.publish("tradingd/control", signed, qos=1)
                await eventually(lambda: bridge.stats.control_refused["REPLAY"] == 1)
        # Assert
        refused = [e for e in logs if e["event"] == "control.refused"]
        assert [e["reason"] for e in refused] == ["BAD_SIGNATURE", "BAD_SIGNATURE",
                                                  "MALFORMED", "REPLAY"]
        assert bridge.stats.control_accepted == 1
        assert daemon.system.stats.orders == 1  # the warm-up buy only; nothing after the halt
        assert not any(SECRET in json.dumps(e, default=str) for e in logs)
        (deny,) = seen.on("tradingd/events/rejects")
        assert deny["reason"] == "TRADING_HALTED" and deny["intent"]["symbol"] == "MSFT"
        assert [m["new"] for m in seen.on("tradingd/events/state")] == ["HALTED"]
        results = [m for m in seen.on("tradingd/events/control") if m["ok"]]
        assert [(m["cmd"], m["state"]) for m in results] == [("halt", "HALTED")]

    async def test_client_without_password_when_connecting_then_broker_refuses(
        self, mosquitto_auth: Mosquitto
    ) -> None:
        with pytest.raises(aiomqtt.MqttError):
            async with client(mosquitto_auth):
                pass
