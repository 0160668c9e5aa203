"""Webhook alerts from a real replayed daemon to a real webhook receiver on loopback."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from brokers.paper import PaperBroker
from daemon.control import request as control_request
from daemon.operations import run_operated
from kernel.events import AlertRaised, BarBatch, BrokerStatusChanged
from tests.daemon.http_kit import auth, operated, receiver, replay_settings

FAST_RETRY = {"backoff_secs": 0.01, "backoff_max_secs": 0.05}


def _alerts(url: str, **kw: Any) -> dict[str, Any]:
    return {"webhooks": [url], **FAST_RETRY, **kw}


def _no_secret(logs: list[dict[str, Any]], secret: str) -> None:
    for entry in logs:
        assert secret not in repr(entry), entry


class TestAlertDelivery:
    async def test_halt_when_requested_three_times_then_exactly_one_alert(
        self, tmp_path: Path
    ) -> None:
        # Arrange
        async with receiver() as rec:
            settings = replay_settings(tmp_path, alerts=_alerts(rec.url))
            async with operated(settings) as (daemon, ops, base), \
                    aiohttp.ClientSession() as http:

                async def halt_thrice(batch: BarBatch) -> None:
                    if daemon.system.stats.bar_batches != 80:
                        return
                    for _ in range(2):
                        async with http.post(f"{base}/api/halt", headers=auth()) as r:
                            assert r.status == 200
                    reply = await control_request(tmp_path / "state", "halt")
                    assert reply["ok"]

                daemon.after_batch.append(halt_thrice)
                # Act
                with capture_logs() as logs:
                    code = await daemon.run()
                    ops.stopped(code)
                    await asyncio.wait_for(rec.got.wait(), 5)
                await asyncio.sleep(0.2)  # a second alert, if one were sent, has arrived
                halted = rec.named("trading.halted")
        # Assert
        assert code == 0
        assert len(halted) == 1
        body = halted[0]
        assert body["severity"] == "critical" and body["detail"]["who"] == "http"
        assert body["cause"] == "operator halt over HTTP"
        assert body["text"].startswith(":rotating_light: tradingd trading.halted: operator halt")
        assert body["daemon"]["broker"] == "paper" and body["daemon"]["mode"] == "paper"
        assert ops.alerts.counts["sent"] >= 1
        _no_secret(logs, "s3cr3t-hook-path")

    async def test_webhook_when_5xx_twice_then_retried_and_delivered_once(
        self, tmp_path: Path
    ) -> None:
        async with receiver(fail_first=2, fail_status=503) as rec:
            settings = replay_settings(tmp_path, alerts=_alerts(rec.url))
            async with operated(settings) as (_daemon, ops, _base):
                # Act
                assert ops.alerts.raise_alert("test.alert", "warning", "first")
                await asyncio.wait_for(rec.got.wait(), 5)
        # Assert: two refusals, then the one delivery (and daemon.stopped at exit)
        assert rec.requests == 4
        assert [b["alert"] for b in rec.bodies] == ["test.alert", "daemon.stopped"]
        assert ops.alerts.counts["sent"] == 2 and ops.alerts.counts["failed"] == 0

    async def test_webhook_when_4xx_then_not_retried_and_counted_failed(
        self, tmp_path: Path
    ) -> None:
        async with receiver(fail_first=100, fail_status=404) as rec:
            settings = replay_settings(tmp_path, alerts=_alerts(rec.url))
            async with operated(settings) as (_daemon, ops, _base):
                with capture_logs() as logs:
                    ops.alerts.raise_alert("test.alert", "warning", "first")
                    for _ in range(100):
                        if ops.alerts.counts["failed"]:
                            break
                        await asyncio.sleep(0.01)
        failed = [e for e in logs if e["event"] == "alert.failed"]
        assert failed and failed[0]["status"] == 404 and failed[0]["attempts"] == 1
        assert rec.requests == 2  # the test alert once, and daemon.stopped at exit once
        _no_secret(logs, "s3cr3t-hook-path")

    async def test_webhook_when_unreachable_then_daemon_runs_on_and_url_never_logged(
        self, tmp_path: Path
    ) -> None:
        # Arrange: nothing listens on this port
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        url = f"http://127.0.0.1:{port}/hooks/topsecret-unreachable"
        settings = replay_settings(tmp_path, alerts=_alerts(url, attempts=2))
        async with operated(settings) as (daemon, ops, base), aiohttp.ClientSession() as http:

            async def halt(batch: BarBatch) -> None:
                if daemon.system.stats.bar_batches == 50:
                    async with http.post(f"{base}/api/halt", headers=auth()) as r:
                        assert r.status == 200

            daemon.after_batch.append(halt)
            # Act
            with capture_logs() as logs:
                assert await daemon.run() == 0
                for _ in range(200):
                    if ops.alerts.counts["failed"]:
                        break
                    await asyncio.sleep(0.01)
        # Assert: trading went on to the end of the day, the alert failed, quietly
        assert daemon.system.stats.bar_batches == 390
        assert ops.alerts.counts["failed"] >= 1
        _no_secret(logs, "topsecret-unreachable")


class TestAlertRules:
    async def test_same_cause_when_raised_again_then_deduplicated_other_cause_sent(
        self, tmp_path: Path
    ) -> None:
        async with receiver() as rec:
            settings = replay_settings(tmp_path, alerts=_alerts(rec.url))
            async with operated(settings) as (_daemon, ops, _base):
                a = ops.alerts
                sent = [a.raise_alert("x", "warning", "cause one") for _ in range(3)]
                sent.append(a.raise_alert("x", "warning", "cause two"))
                await a._queue.join()
        assert sent == [True, False, False, True]
        assert [b["cause"] for b in rec.named("x")] == ["cause one", "cause two"]
        assert a.counts["deduplicated"] == 2

    async def test_alerts_when_more_than_max_per_minute_then_rate_limited(
        self, tmp_path: Path
    ) -> None:
        async with receiver() as rec:
            settings = replay_settings(tmp_path, alerts=_alerts(rec.url, max_per_minute=3))
            async with operated(settings) as (_daemon, ops, _base):
                sent = [ops.alerts.raise_alert("x", "warning", f"cause {i}") for i in range(5)]
                await ops.alerts._queue.join()
                got = len(rec.named("x"))
        assert sent == [True, True, True, False, False] and got == 3
        assert ops.alerts.counts["rate_limited"] == 2

    async def test_reject_storm_when_every_signal_denied_then_one_storm_alert(
        self, tmp_path: Path
    ) -> None:
        # Arrange: the kill switch denies every order of a replay lasting ~2.5 s
        async with receiver() as rec:
            settings = replay_settings(tmp_path, speed="10000",
                                       alerts=_alerts(rec.url, storm_denials=40))
            async with operated(settings, environ={"KILL_SWITCH": "1"}) as (daemon, _ops, _b):
                # Act
                assert await daemon.run() == 0
        # Assert
        storms = rec.named("gate.reject_storm")
        assert len(storms) == 1
        assert storms[0]["detail"]["denials"] >= 40
        assert "KILL_SWITCH" in storms[0]["detail"]["top_reasons_session"]
        assert len(rec.named("trading.halted")) == 1  # the kill switch at start

    async def test_broker_when_disconnected_longer_than_limit_then_alert_and_not_when_brief(
        self, tmp_path: Path
    ) -> None:
        async with receiver() as rec:
            settings = replay_settings(tmp_path, alerts=_alerts(rec.url, disconnect_secs=0.3))
            async with operated(settings) as (daemon, _ops, _base):
                now = datetime.now(UTC)
                # a blip: back within the limit
                daemon.system.bus.publish(BrokerStatusChanged("paper", "disconnected", now, "blip"))
                await asyncio.sleep(0.1)
                daemon.system.bus.publish(BrokerStatusChanged("paper", "connected", now, ""))
                await asyncio.sleep(1.5)
                blip = len(rec.named("broker.disconnected"))
                # the reconciler's own readiness is not the connection
                daemon.system.bus.publish(
                    BrokerStatusChanged("paper:reconcile", "recovering", now, ""))
                # an outage
                daemon.system.bus.publish(BrokerStatusChanged("paper", "disconnected", now, "gone"))
                await asyncio.wait_for(rec.got.wait(), 3)
                await asyncio.sleep(1.2)
                outage = rec.named("broker.disconnected")
        assert blip == 0
        assert len(outage) == 1 and outage[0]["severity"] == "critical"

    async def test_reconcile_drift_when_broker_cash_moves_behind_the_books_then_alerts(
        self, tmp_path: Path
    ) -> None:
        # Arrange: someone moves cash at the broker; the next reconciliation finds it
        async with receiver() as rec:
            settings = replay_settings(tmp_path, speed="8000", alerts=_alerts(rec.url))
            async with operated(settings) as (daemon, _ops, _base):
                broker = daemon.system.broker
                assert isinstance(broker, PaperBroker)
                drift: list[AlertRaised] = []
                daemon.system.bus.subscribe(AlertRaised, drift.append)

                async def move_cash(batch: BarBatch) -> None:
                    if daemon.system.stats.bar_batches == 30:
                        broker._cash += Decimal("250.00")

                daemon.after_batch.append(move_cash)
                # Act
                assert await daemon.run() == 0
        # Assert
        assert [a.name for a in drift][:1] == ["reconcile.drift"]
        got = rec.named("reconcile.drift")
        assert len(got) == 1 and "cash" in got[0]["cause"]
        reducing = rec.named("trading.reducing")
        assert len(reducing) == 1 and reducing[0]["detail"]["who"] == "reconcile"


class TestStopAlert:
    async def test_run_operated_when_replay_finishes_then_stopped_alert_delivered_before_return(
        self, tmp_path: Path
    ) -> None:
        from daemon.app import Daemon

        async with receiver() as rec:
            settings = replay_settings(tmp_path, alerts=_alerts(rec.url))
            # Act
            code = await run_operated(Daemon(settings, environ={}))
            # Assert: already delivered when run_operated returned
            stopped = rec.named("daemon.stopped")
        assert code == 0
        assert len(stopped) == 1
        assert stopped[0]["cause"] == "replay finished"
        assert stopped[0]["detail"]["exit_code"] == 0 and stopped[0]["severity"] == "warning"


@pytest.mark.parametrize("bad", ["ftp://x/y", "not a url"])
def test_webhook_config_when_not_http_then_refused_without_echo(
    bad: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli import main

    monkeypatch.setenv("TRADINGD_ALERTS__WEBHOOKS", f'["{bad}"]')
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert "webhook #0" in err and bad not in err
