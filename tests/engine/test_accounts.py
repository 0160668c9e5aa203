"""Several accounts in one daemon: configuration, routing by symbol, failover, global
limits, per-account controls and totals — two real paper accounts on real bars."""

from __future__ import annotations

from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from brokers.paper import PaperBroker
from config.settings import load_settings
from daemon.app import Daemon
from engine.accounts import ACCOUNTS_DIR
from engine.routing import ROUTE_UNAVAILABLE
from engine.system import TradingSystem
from kernel.errors import ConfigError
from kernel.events import BarBatch, OrderApproved, OrderDenied, OrderSubmitted, SignalRejected
from risk.state import TradingState
from tests.data import SAMPLE_CSV, require


@pytest.fixture(scope="module")
def one_day(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The first day of the real sample bars, and its symbols."""
    frame = pd.read_csv(require(SAMPLE_CSV))
    first = sorted(frame["timestamp"].str.slice(0, 10).unique())[0]
    frame = frame[frame["timestamp"].str.startswith(first)]
    out = tmp_path_factory.mktemp("bars") / "day.csv"
    frame.to_csv(out, index=False)
    return out, sorted(frame["symbol"].unique())


def _settings(tmp: Path, bars: Path, symbols: list[str], **extra: Any) -> Any:
    half = len(symbols) // 2
    accounts = [{"name": "a", "kind": "paper", "symbols": symbols[:half]},
                {"name": "b", "kind": "paper", "symbols": symbols[half:]}]
    return load_settings(overrides={
        "daemon": {"state_dir": str(tmp / "state")},
        "feed": {"source": "replay", "replay": str(bars), "speed": "max"},
        "accounts": accounts, "routing": {"preferred": "a"}, **extra,
    })


def _watch_orders(daemon: Daemon) -> dict[str, list[str]]:
    """Symbols of every order each account submitted, in order."""
    sent: dict[str, list[str]] = defaultdict(list)
    for s in daemon.systems:
        cid_symbol: dict[str, str] = {}

        def on_approved(e: OrderApproved, cid_symbol: dict[str, str] = cid_symbol) -> None:
            cid_symbol[e.intent.client_order_id] = e.intent.symbol

        def on_sent(e: OrderSubmitted, name: str = s.name,
                    cid_symbol: dict[str, str] = cid_symbol) -> None:
            sent[name].append(cid_symbol[e.client_order_id])

        s.bus.subscribe(OrderApproved, on_approved)
        s.bus.subscribe(OrderSubmitted, on_sent)
    return sent


async def _books_equal_broker(system: TradingSystem) -> None:
    broker = system.broker
    assert isinstance(broker, PaperBroker)
    account = await broker.account()
    held = {p.symbol: p.qty for p in await broker.positions()}
    ours = {s: p.qty for s, p in system.portfolio.positions.items() if p.qty}
    assert ours == held, system.name
    assert system.portfolio.cash == account.cash, system.name


class TestAccountConfig:
    def test_load_when_two_accounts_then_one_state_dir_each(
            self, tmp_path: Path, one_day: tuple[Path, list[str]]) -> None:
        settings = _settings(tmp_path, one_day[0], ["AAA", "BBB"])
        daemon = Daemon(settings)
        assert [s.name for s in daemon.systems] == ["a", "b"]
        assert daemon.systems[1].spec.state_dir == tmp_path / "state" / ACCOUNTS_DIR / "b"
        assert daemon.systems[0].spec.risk == settings.risk

    @pytest.mark.parametrize(("accounts", "key"), [
        ([{"name": "a", "kind": "paper"}, {"name": "a", "kind": "paper"}], "accounts.1.name"),
        ([{"name": "a", "kind": "paper", "symbols": ["X"]},
          {"name": "b", "kind": "paper", "symbols": ["X"]}], "accounts.1.symbols"),
        ([{"name": "a", "kind": "paper", "risk": {"max_position_pct": 7}}],
         "accounts.0.risk.max_position_pct"),
        ([{"name": "a", "kind": "paper", "broker": {"slippage_bps": -1}}],
         "accounts.0.broker.slippage_bps"),
        ([{"name": "a", "kind": "alpaca", "credentials": {"key_id": "NOT_SET_ANYWHERE"}}],
         "accounts.0.credentials.key_id"),
        ([{"name": "Bad Name", "kind": "paper"}], "accounts.0.name"),
    ])
    def test_load_when_account_invalid_then_config_error_names_key(
            self, accounts: list[dict[str, Any]], key: str) -> None:
        with pytest.raises(ConfigError) as err:
            load_settings(overrides={"accounts": accounts}, environ={})
        assert err.value.key == key

    def test_load_when_routing_names_unknown_account_then_config_error(self) -> None:
        with pytest.raises(ConfigError) as err:
            load_settings(overrides={"accounts": [{"name": "a", "kind": "paper"}],
                                     "routing": {"preferred": "zz"}}, environ={})
        assert err.value.key == "routing.preferred"

    def test_load_when_credentials_from_env_then_secret_set_and_not_in_repr(
            self, tmp_path: Path, one_day: tuple[Path, list[str]]) -> None:
        settings = load_settings(overrides={
            "daemon": {"state_dir": str(tmp_path / "s")},
            "feed": {"source": "replay", "replay": str(one_day[0])}, "accounts": [
            {"name": "two", "kind": "alpaca", "broker": {"base_url": "http://127.0.0.1:9"},
             "credentials": {"key_id": "APCA2_KEY", "secret_key": "APCA2_SECRET"}}]},
            environ={"APCA2_KEY": "key-canary-2", "APCA2_SECRET": "secret-canary-2"})
        daemon = Daemon(settings, environ={"APCA2_KEY": "key-canary-2",
                                           "APCA2_SECRET": "secret-canary-2"})
        alpaca = daemon.system.spec.broker.alpaca
        assert alpaca.key_id is not None and alpaca.secret_key is not None
        assert alpaca.key_id.get_secret_value() == "key-canary-2"
        assert "canary" not in repr(daemon.system.spec)


class TestTwoPaperAccounts:
    async def test_replay_when_symbols_split_then_each_account_trades_its_own_and_books_sum(
            self, tmp_path: Path, one_day: tuple[Path, list[str]]) -> None:
        bars, symbols = one_day
        daemon = Daemon(_settings(tmp_path, bars, symbols))
        sent = _watch_orders(daemon)

        async def check(batch: BarBatch) -> None:
            for s in daemon.systems:
                await _books_equal_broker(s)

        daemon.after_batch.append(check)
        assert await daemon.run() == 0
        half = len(symbols) // 2
        assert sent["a"] and sent["b"]
        assert set(sent["a"]) <= set(symbols[:half])
        assert set(sent["b"]) <= set(symbols[half:])
        total = daemon.status()
        equity = sum((s.portfolio.equity() for s in daemon.systems), Decimal(0))
        assert Decimal(total["equity"]) == equity.quantize(Decimal("0.01"))
        assert total["orders"] == len(sent["a"]) + len(sent["b"])
        assert set(total["accounts"]) == {"a", "b"}
        assert total["accounts"]["a"]["counters"]["orders"] == len(sent["a"])

    async def test_replay_when_preferred_halted_then_flat_symbols_fail_over_held_refused(
            self, tmp_path: Path, one_day: tuple[Path, list[str]]) -> None:
        bars, symbols = one_day
        daemon = Daemon(_settings(tmp_path, bars, symbols))
        a, b = daemon.systems
        sent = _watch_orders(daemon)
        refused: list[SignalRejected] = []
        a.bus.subscribe(SignalRejected, refused.append)
        doubled: list[str] = []

        def on_b_approved(e: OrderApproved) -> None:  # b never trades what a holds
            sym = e.intent.symbol
            if a.portfolio.qty(sym) or a.orders.working_qty(sym):
                doubled.append(sym)

        b.bus.subscribe(OrderApproved, on_b_approved)
        at_halt: dict[str, Any] = {}

        async def halt_a(batch: BarBatch) -> None:
            if not at_halt and len(sent["a"]) >= 5:
                reply = await daemon.control.handlers["halt"]({"account": "a", "why": "test"})
                at_halt.update(held={s for s, p in a.portfolio.positions.items() if p.qty},
                               b_orders=len(sent["b"]), reply=reply)

        daemon.after_batch.append(halt_a)
        assert await daemon.run() == 0
        assert at_halt, "account a never placed 5 orders"
        assert a.risk_state.state is TradingState.HALTED
        assert b.risk_state.state is TradingState.ACTIVE
        assert at_halt["reply"]["accounts"]["a"]["state"] == "HALTED"
        after = sent["b"][at_halt["b_orders"]:]
        half = set(symbols[:len(symbols) // 2])
        failed_over = [s for s in after if s in half]
        assert failed_over, "no flat symbol of account a failed over to b"
        assert doubled == [], "b traded a symbol a holds"
        assert at_halt["held"] - set(failed_over), "every held symbol was traded by b"
        held_refusals = [r for r in refused if r.reason == ROUTE_UNAVAILABLE]
        assert held_refusals, "signals for a's positions were not refused"

    async def test_replay_when_global_gross_limit_then_total_exposure_stays_within(
            self, tmp_path: Path, one_day: tuple[Path, list[str]]) -> None:
        bars, symbols = one_day
        daemon = Daemon(_settings(tmp_path, bars, symbols,
                                  global_risk={"max_gross_exposure": 0.05}))
        denials: list[OrderDenied] = []
        worst = Decimal(0)
        for s in daemon.systems:
            s.bus.subscribe(OrderDenied, denials.append)

        async def check(batch: BarBatch) -> None:
            nonlocal worst
            gross = sum((s.portfolio.gross_exposure() for s in daemon.systems), Decimal(0))
            equity = sum((s.portfolio.equity() for s in daemon.systems), Decimal(0))
            worst = max(worst, gross / equity)

        daemon.after_batch.append(check)
        assert await daemon.run() == 0
        # Each account alone allows 60%; together they are held to 5% (a price move within
        # a bar may add a little after an order was priced).
        assert Decimal("0.03") < worst <= Decimal("0.0525")
        global_denials = [d for d in denials if d.reason == "GLOBAL_GROSS_EXPOSURE"]
        assert global_denials

    async def test_controls_when_account_named_then_only_it_else_all(
            self, tmp_path: Path, one_day: tuple[Path, list[str]]) -> None:
        bars, symbols = one_day
        daemon = Daemon(_settings(tmp_path, bars, symbols))
        a, b = daemon.systems
        handlers = daemon.control.handlers
        await handlers["halt"]({"account": "b", "why": "only b"})
        assert (a.risk_state.state, b.risk_state.state) == (TradingState.ACTIVE,
                                                            TradingState.HALTED)
        with pytest.raises(KeyError):
            await handlers["halt"]({"account": "zz"})
        reply = await handlers["emergency-stop"]({"why": "all"})
        assert set(reply["accounts"]) == {"a", "b"}
        assert a.risk_state.state is b.risk_state.state is TradingState.HALTED
