"""The HTTP server during a real replay: status codes, readiness reasons, auth, the JSON
API and the event stream, over real loopback HTTP on the daemon's own loop."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.cli import main
from daemon.control import request as control_request
from daemon.http import ACTIONS
from daemon.surface import DaemonSurface
from kernel.events import BarBatch, CancelAllOrders, OrderSubmitted, TradingStateChanged
from tests.daemon.http_kit import TOKEN, auth, operated, replay_settings


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as r:
        return r.status, await r.json()


class TestProbes:
    async def test_readyz_when_not_started_then_503_with_reasons_and_healthz_200(
        self, tmp_path: Path
    ) -> None:
        # Arrange: the surface is up, the daemon has not reconciled yet
        async with operated(replay_settings(tmp_path)) as (_daemon, _ops, base), \
                aiohttp.ClientSession() as http:
            # Act
            ready_code, ready = await _get(http, f"{base}/readyz")
            health_code, health = await _get(http, f"{base}/healthz")
        # Assert
        assert ready_code == 503
        assert ready["ready"] is False
        assert any(r.startswith("reconciling") for r in ready["reasons"])
        assert any(r.startswith("broker") for r in ready["reasons"])
        assert health_code == 200 and health["status"] == "ok"

    async def test_probes_when_replay_runs_then_200_and_503_on_a_stale_feed(
        self, tmp_path: Path
    ) -> None:
        # Arrange
        seen: dict[str, Any] = {}
        async with operated(replay_settings(tmp_path)) as (daemon, ops, base), \
                aiohttp.ClientSession() as http:
            surface = ops.surface
            assert isinstance(surface, DaemonSurface)

            async def probe(batch: BarBatch) -> None:
                if daemon.system.stats.bar_batches != 20:
                    return
                seen["ready"] = await _get(http, f"{base}/readyz")
                seen["health"] = await _get(http, f"{base}/healthz")
                # the last bar arrived 10 minutes ago by the wall clock
                surface.feed.last = time.monotonic() - 600
                seen["stale"] = await _get(http, f"{base}/readyz")
                surface.feed.last = time.monotonic()

            daemon.after_batch.append(probe)
            # Act
            assert await daemon.run() == 0
        # Assert
        assert seen["ready"] == (200, {"ready": True, "reasons": []})
        assert seen["health"][0] == 200
        code, body = seen["stale"]
        assert code == 503 and body["reasons"] == [
            "feed: last bar 600s ago (stale after 180s)"]

    async def test_healthz_when_loop_beat_is_old_then_503(self, tmp_path: Path) -> None:
        async with operated(replay_settings(tmp_path, http={"loop_stall_secs": 0.2})) as (
                daemon, _ops, base), aiohttp.ClientSession() as http:
            # The watchdog task beats every 0.5 s; here it last beat a second ago.
            daemon.supervisor.notifier.last_beat = time.monotonic() - 1.0
            code, body = await _get(http, f"{base}/healthz")
        assert code == 503
        assert body["status"] == "stalled" and body["loop_beat_age_secs"] >= 1.0


class TestAuth:
    async def test_mutating_endpoints_when_token_missing_or_wrong_then_refused_and_nothing_changes(
        self, tmp_path: Path
    ) -> None:
        # Arrange
        results: list[tuple[str, str, int, str]] = []
        states: list[TradingStateChanged] = []
        cancels: list[CancelAllOrders] = []
        held: list[int] = []
        async with operated(replay_settings(tmp_path)) as (daemon, _ops, base), \
                aiohttp.ClientSession() as http:
            daemon.system.bus.subscribe(TradingStateChanged, states.append)

            async def attack(batch: BarBatch) -> None:
                if daemon.system.stats.bar_batches != 120:
                    return
                held.append(len(daemon.system.portfolio.positions))
                for action in ACTIONS:
                    for label, headers in (
                        ("none", {}), ("wrong", auth("not-the-token-0123456789")),
                        ("prefix", auth(TOKEN[:-1])),
                        ("basic", {"Authorization": f"Basic {TOKEN}"}),
                        ("empty", {"Authorization": "Bearer "}),
                    ):
                        async with http.post(f"{base}/api/{action}", headers=headers,
                                             json={"why": "attack"}) as r:
                            results.append((action, label, r.status, (await r.json())["reason"]))
                held.append(len(daemon.system.portfolio.positions))

            daemon.after_batch.append(attack)
            original_send = daemon.system.bus.send

            def spy(cmd: Any) -> None:
                if isinstance(cmd, CancelAllOrders):
                    cancels.append(cmd)
                original_send(cmd)

            daemon.system.bus.send = spy  # type: ignore[method-assign]
            # Act
            assert await daemon.run() == 0
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
        refused_metric = {s.labels["reason"]: int(s.value)
                          for f in text_string_to_metric_families(text) for s in f.samples
                          if s.name == "tradingd_http_refused_total"}
        # Assert: 401 without a bearer token, 403 with a wrong one, for every action
        assert len(results) == 4 * 5
        for action, label, status, reason in results:
            expected = (403, "TOKEN_WRONG") if label in ("wrong", "prefix") else (
                401, "TOKEN_MISSING")
            assert (status, reason) == expected, (action, label)
        assert states == [] and cancels == []
        assert refused_metric == {"TOKEN_MISSING": 12, "TOKEN_WRONG": 8,
                                  "BAD_HOST": 0, "NO_TOKEN_CONFIGURED": 0}
        assert held[0] > 0 and held[0] == held[1], "nothing was liquidated"
        assert daemon.system.risk_state.snapshot()["state"] == "ACTIVE"

    async def test_halt_when_token_right_then_halted_and_no_order_after(
        self, tmp_path: Path
    ) -> None:
        # Arrange
        replies: list[tuple[int, dict[str, Any]]] = []
        submitted_after: list[str] = []
        halted = asyncio.Event()
        async with operated(replay_settings(tmp_path)) as (daemon, _ops, base), \
                aiohttp.ClientSession() as http:
            daemon.system.bus.subscribe(OrderSubmitted, lambda e: halted.is_set()
                                 and submitted_after.append(e.client_order_id))

            async def halt(batch: BarBatch) -> None:
                if daemon.system.stats.bar_batches == 100:
                    async with http.post(f"{base}/api/halt", headers=auth(),
                                         json={"why": "desk says stop"}) as r:
                        replies.append((r.status, await r.json()))
                    halted.set()

            daemon.after_batch.append(halt)
            # Act
            assert await daemon.run() == 0
        # Assert
        assert replies[0][0] == 200
        body = replies[0][1]
        assert body["ok"] and body["state"] == "HALTED"
        assert body["changed_by"] == "http" and body["reason"] == "desk says stop"
        assert submitted_after == []
        assert daemon.system.stats.denied["TRADING_HALTED"] > 0, "signals went on and were denied"

    async def test_post_when_no_token_configured_then_403_and_reads_still_work(
        self, tmp_path: Path
    ) -> None:
        settings = replay_settings(tmp_path, http={"token": None})
        async with operated(settings) as (daemon, _ops, base), aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/halt", headers=auth()) as r:
                code, body = r.status, await r.json()
            read_code, _ = await _get(http, f"{base}/api/status")
        assert (code, body["reason"]) == (403, "NO_TOKEN_CONFIGURED")
        assert read_code == 200
        assert daemon.system.risk_state.snapshot()["state"] == "ACTIVE"

    async def test_read_when_host_header_is_not_loopback_then_421(self, tmp_path: Path) -> None:
        # A page on another origin reaching 127.0.0.1 through DNS rebinding sends its
        # own host name.
        async with operated(replay_settings(tmp_path)) as (_d, _ops, base), \
                aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/status", headers={"Host": "evil.example"}) as r:
                code = r.status
            async with http.get(f"{base}/api/status", headers={"Host": "localhost:8787"}) as r:
                ok = r.status
        assert (code, ok) == (421, 200)


class TestApi:
    async def test_status_when_asked_then_same_document_as_control_socket(
        self, tmp_path: Path
    ) -> None:
        pairs: list[tuple[Any, Any]] = []
        async with operated(replay_settings(tmp_path)) as (daemon, _ops, base), \
                aiohttp.ClientSession() as http:

            async def compare(batch: BarBatch) -> None:
                if daemon.system.stats.bar_batches in (60, 200):
                    _, ours = await _get(http, f"{base}/api/status")
                    theirs = await control_request(tmp_path / "state", "status")
                    theirs.pop("ok")
                    pairs.append((ours, json.loads(json.dumps(theirs, default=str))))

            daemon.after_batch.append(compare)
            assert await daemon.run() == 0
        assert len(pairs) == 2
        for ours, theirs in pairs:
            assert ours == theirs
        assert pairs[1][0]["positions"], "by bar 200 the demo session holds positions"

    async def test_orders_when_session_traded_then_open_and_day_orders_match_the_books(
        self, tmp_path: Path
    ) -> None:
        async with operated(replay_settings(tmp_path)) as (daemon, _ops, base), \
                aiohttp.ClientSession() as http:
            assert await daemon.run() == 0
            _, doc = await _get(http, f"{base}/api/orders?limit=5")
            _, everything = await _get(http, f"{base}/api/orders?limit=1000")
            bad, _ = await _get(http, f"{base}/api/orders?limit=five")
        orders = daemon.system.orders.orders
        assert doc["today_total"] == len(orders) == daemon.system.stats.orders > 5
        assert len(doc["today"]) == 5
        created = [o["created"] for o in everything["today"]]
        assert created == sorted(created, reverse=True)
        assert {o["client_order_id"] for o in everything["today"]} == set(orders)
        assert {o["client_order_id"] for o in doc["open"]} == {
            o.client_order_id for o in daemon.system.orders.open_orders()}
        one = everything["today"][0]
        book = orders[one["client_order_id"]]
        assert (one["symbol"], one["qty"], one["filled_qty"], one["status"]) == (
            book.symbol, book.qty, book.filled_qty, str(book.status))
        assert bad == 400

    async def test_rejects_when_paged_then_every_denial_once_newest_first_with_numbers(
        self, tmp_path: Path
    ) -> None:
        # Arrange: a 0.2% day-move limit makes the gate deny most entries (sizing keeps
        # within the order budgets by itself, so those no longer deny)
        settings = replay_settings(tmp_path, symbol_move_limit=0.002)
        async with operated(settings) as (daemon, _ops, base), aiohttp.ClientSession() as http:
            assert await daemon.run() == 0
            # Act: page through the day's rejects seven at a time
            pages: list[dict[str, Any]] = []
            url = f"{base}/api/rejects?limit=7"
            while True:
                _, page = await _get(http, url)
                pages.append(page)
                if page["next_before"] is None:
                    break
                url = f"{base}/api/rejects?limit=7&before={page['next_before']}"
        # Assert
        rows = [r for p in pages for r in p["rejects"]]
        seqs = [r["seq"] for r in rows]
        assert seqs == sorted(seqs, reverse=True) and len(set(seqs)) == len(seqs)
        by_reason: dict[str, int] = {}
        for r in rows:
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
        assert by_reason == dict(daemon.system.stats.denied)
        assert daemon.system.stats.denied["SYMBOL_MOVE_LIMIT"] > 20
        moved = next(r for r in rows if r["reason"] == "SYMBOL_MOVE_LIMIT")
        assert moved["source"] == "gate" and moved["limit"] == 0.002
        assert moved["observed"] > 0.002 and moved["symbol"] and moved["side"] in ("buy", "sell")
        assert all(len(p["rejects"]) <= 7 for p in pages)

    async def test_equity_when_session_ran_then_curve_matches_the_marks(
        self, tmp_path: Path
    ) -> None:
        async with operated(replay_settings(tmp_path)) as (daemon, _ops, base), \
                aiohttp.ClientSession() as http:
            assert await daemon.run() == 0
            _, doc = await _get(http, f"{base}/api/equity")
        points = doc["points"]
        assert len(points) > 300  # one mark a bar (every 10 s of bar time, 1-minute bars)
        assert points[-1]["equity"] == str(daemon.system.portfolio.equity())


class TestEventStream:
    async def test_events_when_session_trades_and_halts_then_streamed_in_order(
        self, tmp_path: Path
    ) -> None:
        # Arrange
        frames: list[tuple[str, dict[str, Any]]] = []
        settings = replay_settings(tmp_path, speed="10000",
                                   http={"status_push_secs": 0.2, "sse_queue": 10_000})
        async with operated(settings) as (daemon, _ops, base), aiohttp.ClientSession() as http:

            async def read() -> None:
                async with http.get(f"{base}/api/events") as r:
                    assert r.headers["Content-Type"].startswith("text/event-stream")
                    kind = ""
                    async for raw in r.content:
                        line = raw.decode().rstrip("\n")
                        if line.startswith("event: "):
                            kind = line[7:]
                        elif line.startswith("data: "):
                            frames.append((kind, json.loads(line[6:])))

            reader = asyncio.create_task(read())

            async def halt(batch: BarBatch) -> None:
                if daemon.system.stats.bar_batches == 150:
                    async with http.post(f"{base}/api/halt", headers=auth()) as r:
                        assert r.status == 200

            daemon.after_batch.append(halt)
            # Act
            assert await daemon.run() == 0
            await asyncio.sleep(0.3)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        # Assert
        kinds = [k for k, _ in frames]
        assert kinds[0] == "status"
        assert "order" in kinds and "fill" in kinds and "status" in kinds[1:]
        fills = [d for k, d in frames if k == "fill"]
        assert len(fills) == daemon.system.stats.fills
        assert all(d["order"]["symbol"] == d["fill"]["symbol"] for d in fills)
        state = [d for k, d in frames if k == "state"]
        assert [(d["old"], d["new"], d["who"]) for d in state] == [("ACTIVE", "HALTED", "http")]
        rejects = [d for k, d in frames if k == "reject"]
        assert rejects and {d["reason"] for d in rejects} >= {"TRADING_HALTED"}
        assert kinds.index("state") < kinds.index("reject", kinds.index("state"))

    async def test_events_when_all_stream_slots_taken_then_503(self, tmp_path: Path) -> None:
        settings = replay_settings(tmp_path, http={"sse_clients": 1})
        async with operated(settings) as (_d, _ops, base), aiohttp.ClientSession() as http, \
                http.get(f"{base}/api/events") as first:
            assert first.status == 200
            await first.content.readuntil(b"\n\n")  # the stream is open
            async with http.get(f"{base}/api/events") as second:
                code, body = second.status, await second.json()
        assert code == 503 and "max 1" in body["error"]

    async def test_hub_when_client_reads_too_slowly_then_drops_are_counted_and_marked(
        self, tmp_path: Path
    ) -> None:
        # Arrange: a client slot with a queue of 8 that nobody reads
        settings = replay_settings(tmp_path, http={"sse_queue": 8})
        async with operated(settings) as (daemon, ops, _base):
            assert ops.http is not None
            hub = ops.http._hub
            from daemon.http_events import _Client

            client = _Client()
            hub._clients.add(client)
            # Act: 20 state changes on the bus
            for i in range(20):
                daemon.system.bus.publish(TradingStateChanged(
                    old="ACTIVE", new="ACTIVE", who="test", why=str(i), ts=daemon.clock.now()))
            out = hub._take(client).decode()
        # Assert: 8 kept, 12 dropped, and the client is told before the rest
        assert len(client.queue) == 0 and hub.dropped_total == 12
        blocks = [b for b in out.split("\n\n") if b]
        assert blocks[0] == 'event: dropped\ndata: {"dropped":12}'
        assert [json.loads(b.split("data: ")[1])["why"] for b in blocks[1:]] == [
            str(i) for i in range(8)]


class TestConfig:
    def test_listen_when_not_loopback_and_no_token_then_refuses_to_start(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("TRADINGD_HTTP__LISTEN", "0.0.0.0:8787")
        monkeypatch.delenv("TRADINGD_HTTP__TOKEN", raising=False)
        assert main(["run", "--state-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "TRADINGD_HTTP__TOKEN" in err and "0.0.0.0" in err

    def test_token_when_in_yaml_then_refused(self, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
        cfg = tmp_path / "c.yaml"
        cfg.write_text("http:\n  token: yaml-token-0123456789\n")
        assert main(["check-config", "--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert "http.token" in err and "TRADINGD_HTTP__TOKEN" in err
        assert "yaml-token-0123456789" not in err

    def test_token_when_short_then_refused_without_echo(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setenv("TRADINGD_HTTP__TOKEN", "short-tok")
        assert main(["check-config"]) == 2
        err = capsys.readouterr().err
        assert "16 characters" in err and "short-tok" not in err

    def test_check_config_when_token_and_webhook_set_then_masked(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        hook = "https://hooks.example.invalid/services/T0/B0/secretpart"
        monkeypatch.setenv("TRADINGD_HTTP__TOKEN", TOKEN)
        monkeypatch.setenv("TRADINGD_ALERTS__WEBHOOKS", json.dumps([hook]))
        assert main(["check-config", "--json"]) == 0
        out = capsys.readouterr().out
        doc = json.loads(out)
        assert doc["http"]["token"] == "**********"
        assert doc["alerts"]["webhooks"] == ["**********"]
        assert TOKEN not in out and "secretpart" not in out

    def test_listen_when_port_taken_then_config_error(self, tmp_path: Path) -> None:
        import socket

        from kernel.errors import ConfigError

        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        try:
            settings = replay_settings(tmp_path, http={"listen": f"127.0.0.1:{port}"})

            async def start() -> None:
                async with operated(settings):
                    pass

            with pytest.raises(ConfigError, match=r"http\.listen"):
                asyncio.run(start())
        finally:
            taken.close()
