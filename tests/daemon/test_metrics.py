"""``GET /metrics`` during and after a real replay, parsed with ``prometheus_client.parser``:
the counters equal the session's, the money gauges equal the books to the cent."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from brokers.paper import PaperBroker
from daemon.app import Daemon
from kernel.events import BarBatch
from tests.daemon.http_kit import auth, operated, replay_settings

CENT = Decimal("0.01")


async def scrape(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    """Samples by name; labelled samples as {name: {label value(s): value}}."""
    async with http.get(f"{base}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    out: dict[str, Any] = {"_families": {}}
    for family in text_string_to_metric_families(text):
        out["_families"][family.name] = family.type
        for s in family.samples:
            if s.labels and not s.name.endswith(("_bucket",)):
                key = tuple(s.labels.values())
                out.setdefault(s.name, {})[key[0] if len(key) == 1 else key] = s.value
            elif not s.labels:
                out[s.name] = s.value
    return out


def cents(v: float) -> Decimal:
    return Decimal(repr(v)).quantize(CENT)


async def assert_matches_session(m: dict[str, Any], daemon: Daemon) -> None:
    st, p = daemon.system.stats, daemon.system.portfolio
    assert m["tradingd_orders_submitted_total"] == st.orders
    assert m["tradingd_fills_total"] == st.fills
    assert m["tradingd_broker_rejects_total"] == st.rejected
    assert m["tradingd_signals_total"] == st.signals
    denials = {r: int(v) for r, v in m["tradingd_gate_denials_total"].items() if v}
    assert denials == dict(st.denied)
    assert cents(m["tradingd_equity_dollars"]) == p.equity().quantize(CENT)
    assert cents(m["tradingd_cash_dollars"]) == p.cash.quantize(CENT)
    assert cents(m["tradingd_gross_exposure_dollars"]) == p.gross_exposure().quantize(CENT)
    # ... and the books are the paper broker's own
    broker = daemon.system.broker
    assert isinstance(broker, PaperBroker)
    account = await broker.account()
    assert cents(m["tradingd_equity_dollars"]) == account.equity.quantize(CENT)
    # Its fills live in its SQLite store, read back through a broker opened on it.
    store_broker = PaperBroker(cfg=daemon.settings.broker.paper, clock=daemon.clock,
                               sink=lambda e: None,
                               store_path=daemon.system.spec.state_dir / "paper_account.sqlite")
    async with store_broker:
        fills = await store_broker.fills_since(datetime(2000, 1, 1, tzinfo=UTC))
    assert m["tradingd_fills_total"] == len(fills)


class TestMetrics:
    async def test_metrics_when_replay_runs_then_counters_and_books_match_to_the_cent(
        self, tmp_path: Path
    ) -> None:
        # Arrange: a tight day-move limit gives denials (sizing itself keeps within the
        # order budgets, so they no longer deny)
        settings = replay_settings(tmp_path, symbol_move_limit=0.002)
        scraped: list[int] = []
        async with operated(settings) as (daemon, _ops, base), aiohttp.ClientSession() as http:

            async def check(batch: BarBatch) -> None:
                if daemon.system.stats.bar_batches in (90, 250):
                    await assert_matches_session(await scrape(http, base), daemon)
                    scraped.append(daemon.system.stats.bar_batches)

            daemon.after_batch.append(check)
            # Act
            assert await daemon.run() == 0
            final = await scrape(http, base)
        # Assert
        assert scraped == [90, 250]
        await assert_matches_session(final, daemon)
        assert daemon.system.stats.orders > 10 and daemon.system.stats.fills > 10
        assert sum(daemon.system.stats.denied.values()) > 10
        assert final["tradingd_trading_state"] == {"ACTIVE": 1, "REDUCING": 0, "HALTED": 0}
        assert final["tradingd_broker_connected"] == 1
        start = daemon.system.marks.start_of_day
        assert start is not None
        assert cents(final["tradingd_pnl_today_dollars"]) == (
            daemon.system.portfolio.equity() - start).quantize(CENT)

    async def test_metrics_when_scraped_then_prometheus_names_and_types(
        self, tmp_path: Path
    ) -> None:
        async with operated(replay_settings(tmp_path)) as (daemon, _ops, base), \
                aiohttp.ClientSession() as http:
            assert await daemon.run() == 0
            m = await scrape(http, base)
        types = m["_families"]
        for counter in ("tradingd_orders_submitted", "tradingd_fills", "tradingd_gate_denials",
                        "tradingd_broker_rejects", "tradingd_reconcile_drift"):
            assert types[counter] == "counter", counter
        for gauge in ("tradingd_equity_dollars", "tradingd_cash_dollars",
                      "tradingd_gross_exposure_dollars", "tradingd_trading_state",
                      "tradingd_broker_connected", "tradingd_build_info"):
            assert types[gauge] == "gauge", gauge
        for hist in ("tradingd_bar_to_order_seconds", "tradingd_signal_age_seconds"):
            assert types[hist] == "histogram", hist
        # one observation per order of a signal batch, one per signal batch
        assert m["tradingd_bar_to_order_seconds_count"] == daemon.system.stats.orders > 0
        assert m["tradingd_signal_age_seconds_count"] == daemon.system.stats.signal_batches
        # demo signals are stamped with their bar's start; the clock is at the bar's end
        assert m["tradingd_signal_age_seconds_sum"] == 60.0 * daemon.system.stats.signal_batches
        assert m["tradingd_reconcile_drift_total"] == 0
        (labels,) = m["tradingd_build_info"]
        assert "paper" in labels and m["tradingd_build_info"][labels] == 1
        # low cardinality: no order ids, no symbols
        for name, value in m.items():
            if isinstance(value, dict) and name != "_families":
                assert all("td-" not in str(k) and "DEMO" not in str(k) for k in value), name

    async def test_trading_state_when_halted_over_http_then_gauge_moves(
        self, tmp_path: Path
    ) -> None:
        async with operated(replay_settings(tmp_path)) as (_daemon, _ops, base), \
                aiohttp.ClientSession() as http:
            before = (await scrape(http, base))["tradingd_trading_state"]
            async with http.post(f"{base}/api/halt", headers=auth()) as r:
                assert r.status == 200
            after = (await scrape(http, base))["tradingd_trading_state"]
        assert before == {"ACTIVE": 1, "REDUCING": 0, "HALTED": 0}
        assert after == {"ACTIVE": 0, "REDUCING": 0, "HALTED": 1}

    async def test_symbol_gauges_when_enabled_with_small_universe_then_positions_by_symbol(
        self, tmp_path: Path
    ) -> None:
        symbols = [f"DEMO{i:02d}" for i in range(20)]
        settings = replay_settings(tmp_path, http={"symbol_metrics": True}, symbols=symbols)
        async with operated(settings) as (daemon, _ops, base), aiohttp.ClientSession() as http:
            assert await daemon.run() == 0
            m = await scrape(http, base)
        held = {s: p.qty for s, p in daemon.system.portfolio.positions.items() if p.qty}
        assert held
        assert m["tradingd_position_shares"] == {s: held.get(s, 0) for s in symbols}


class TestGrafanaDashboard:
    async def test_dashboard_when_shipped_then_every_metric_it_queries_is_exposed(
        self, tmp_path: Path
    ) -> None:
        import json
        import re
        from importlib import resources

        # Arrange: the dashboard as installed with the package
        dash = json.loads((resources.files("config") / "grafana-tradingd.json").read_text())
        exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
        wanted = {n for e in exprs for n in re.findall(r"\btradingd_[a-z_]+", e)}
        # Act: what a session exposes
        async with operated(replay_settings(tmp_path)) as (daemon, _ops, base), \
                aiohttp.ClientSession() as http:
            assert await daemon.run() == 0
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
        exposed = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
        # Assert
        assert len(wanted) >= 15
        assert wanted <= exposed, wanted - exposed
        assert dash["__inputs"][0]["pluginId"] == "prometheus"
        assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
