"""Property tests: random orders and bars keep the paper account's books consistent."""

from __future__ import annotations

import asyncio
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from brokers.paper import PaperBroker
from kernel.errors import BrokerRejected
from kernel.events import OrderFilled
from kernel.model import OrderSide
from portfolio.book import Portfolio
from tests.brokers.paper_kit import D, Harness, apply_all, intent

SYMBOLS = ("AAA", "BBB")


@dataclass(frozen=True)
class Submit:
    symbol: str
    side: str
    qty: int
    order_type: str
    tif: str
    offset: int  # limit/stop distance from 100 in cents


@dataclass(frozen=True)
class Bars:
    bars: dict[str, tuple[float, float, float, float, float]]


@dataclass(frozen=True)
class NextDay:
    """Bars at the next New York morning (day orders from before expire)."""

    bars: dict[str, tuple[float, float, float, float, float]]


@dataclass(frozen=True)
class Cancel:
    pick: int


@dataclass(frozen=True)
class Reopen:
    pass


def _bar() -> st.SearchStrategy[tuple[float, float, float, float, float]]:
    cents = st.integers(9_800, 10_200)
    return st.tuples(cents, cents, st.integers(0, 200), st.integers(0, 200),
                     st.integers(0, 5_000)).map(
        lambda t: (t[0] / 100, max(t[0], t[1]) / 100 + t[2] / 100,
                   min(t[0], t[1]) / 100 - t[3] / 100, t[1] / 100, float(t[4])))


_submit = st.builds(
    Submit, st.sampled_from(SYMBOLS), st.sampled_from(["buy", "sell"]), st.integers(1, 400),
    st.sampled_from(["market", "limit", "stop", "stop_limit"]),
    st.sampled_from(["day", "gtc", "gtc", "day", "ioc", "fok"]), st.integers(-100, 100))
_bars = st.dictionaries(st.sampled_from(SYMBOLS), _bar(), min_size=1).map(Bars)
_next_day = st.dictionaries(st.sampled_from(SYMBOLS), _bar(), min_size=1).map(NextDay)
# Submits and bars dominate so that most examples trade (fills, partials, flips).
_steps = st.lists(
    st.one_of(_submit, _bars, _submit, _bars, _bars, st.builds(Cancel, st.integers(0, 50)),
              _next_day),
    min_size=10, max_size=60)
_config = st.fixed_dictionaries({
    "slippage_bps": st.sampled_from([D(0), D(2), D("7.5")]),
    "commission_per_share": st.sampled_from([D(0), D("0.005")]),
    "min_commission": st.sampled_from([D(0), D(1)]),
    "max_fill_volume_pct": st.sampled_from([0.0, 0.05]),
    "initial_cash": st.sampled_from([D(50_000), D(1_000_000)]),
})


def _next_morning(ts: datetime) -> datetime:
    return datetime.combine(ts.date() + timedelta(days=1), time(14, 30), tzinfo=UTC)


async def _run(h: Harness, steps: list[object], path: Path | None) -> Harness:
    n = 0
    await h.broker.__aenter__()
    for step in steps:
        if isinstance(step, Submit):
            n += 1
            px = D(100) + D(step.offset) / 100
            stop = px if step.order_type in ("stop", "stop_limit") else None
            limit = px + D("0.5") if step.order_type in ("limit", "stop_limit") else None
            try:
                await h.submit(intent(f"o{n}", step.side, step.qty, symbol=step.symbol,
                                      order_type=step.order_type, tif=step.tif,
                                      limit=str(limit) if limit else None,
                                      stop=str(stop) if stop else None))
            except BrokerRejected as err:
                assert "buying power" in str(err)
        elif isinstance(step, Bars):
            h.bar(**step.bars)
        elif isinstance(step, NextDay):
            h.at(_next_morning(h.now), **step.bars)
        elif isinstance(step, Cancel):
            working = await h.broker.open_orders()
            if working:
                await h.broker.cancel(working[step.pick % len(working)].client_order_id)
        elif isinstance(step, Reopen) and path is not None:
            await h.broker.__aexit__(None, None, None)
            old = h
            h = Harness(path, **old.cfg.model_dump())
            h.clock.set(old.now)
            h.now, h.intents = old.now, old.intents
            h.sink.events = old.sink.events
            await h.broker.__aenter__()
    await h.broker.__aexit__(None, None, None)
    return h


async def _check_books(h: Harness) -> None:
    if h.store_path is None:
        await _check_account(h, h.broker)
        return
    # The account as a fresh broker reads it back from its store (ended orders and
    # fills are not kept in memory).
    reader = Harness(h.store_path, **h.cfg.model_dump())
    reader.clock.set(h.now)
    async with reader.broker:
        await _check_account(h, reader.broker)


async def _check_account(h: Harness, broker: PaperBroker) -> None:
    fills = [e.fill for e in h.sink.events if isinstance(e, OrderFilled)]
    cash = h.cfg.initial_cash - sum((f.price * f.signed_qty + f.commission for f in fills), D(0))
    acct = await broker.account()
    assert acct.cash == cash
    net: Counter[str] = Counter()
    for f in fills:
        net[f.symbol] += f.signed_qty
    assert {p.symbol: p.qty for p in acct.positions} == {s: q for s, q in net.items() if q}
    # The daemon's own books, fed the same fills, agree exactly.
    book = Portfolio(h.cfg.initial_cash)
    for f in fills:
        book.apply_fill(f)
    assert book.cash == acct.cash
    for p in acct.positions:
        assert book.positions[p.symbol].avg_price == p.avg_price
    assert book.realized_pnl() == broker.realized_pnl()
    # Every reported event sequence is legal for the daemon's order FSM and agrees
    # with what the broker says about the order.
    for cid, order in apply_all(h.intents, h.sink.events).items():
        mine = await broker.get_order(cid)
        assert mine is not None
        assert (order.status, order.filled_qty) == (mine.status, mine.filled_qty)
    for f in fills:
        assert f.price == f.price.quantize(Decimal("0.0001"))
        if f.side is OrderSide.BUY:
            assert f.qty > 0
    assert len({f.execution_id for f in fills}) == len(fills)


class TestPaperProperties:
    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(steps=_steps, cfg=_config)
    def test_books_when_random_orders_and_bars_then_cash_and_positions_follow_fills(
        self, steps: list[object], cfg: dict[str, object]
    ) -> None:
        h = asyncio.run(_run(Harness(**cfg), steps, None))
        asyncio.run(_check_books(h))

    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(steps=_steps, cuts=st.lists(st.integers(0, 40), max_size=3), cfg=_config)
    # Found by this test: AAA's orders all ended, then BBB got one, then AAA again; a
    # restart rebuilt the working orders in submission order (AAA first), so the next bar
    # matched AAA before BBB where the uninterrupted account matched BBB first.
    @example(
        steps=[*[Submit("AAA", "buy", 1, "market", "day", 0)] * 10,
               Submit("AAA", "buy", 1, "market", "gtc", 0),
               Submit("AAA", "buy", 1, "market", "gtc", 0),
               Submit("BBB", "buy", 1, "market", "gtc", 0),
               NextDay({"AAA": (98.0, 98.0, 98.0, 98.0, 0.0)}), Cancel(0), Cancel(0),
               Submit("AAA", "buy", 1, "market", "day", 0),
               Submit("AAA", "buy", 1, "market", "day", 0),
               Submit("BBB", "buy", 1, "market", "ioc", 0), Cancel(0),
               Bars({"AAA": (98.0, 98.0, 98.0, 98.0, 20.0),
                     "BBB": (98.0, 98.0, 98.0, 98.0, 0.0)})],
        cuts=[20],
        cfg={"slippage_bps": Decimal(0), "commission_per_share": Decimal(0),
             "min_commission": Decimal(0), "max_fill_volume_pct": 0.05,
             "initial_cash": Decimal(50000)})
    def test_session_when_restarted_anywhere_then_same_outcome_as_uninterrupted(
        self, steps: list[object], cuts: list[int], cfg: dict[str, object]
    ) -> None:
        with_restarts: list[object] = list(steps)
        for cut in sorted(set(cuts), reverse=True):
            with_restarts.insert(min(cut, len(with_restarts)), Reopen())
        with tempfile.TemporaryDirectory() as tmp:
            a = asyncio.run(_run(Harness(**cfg), steps, None))
            path = Path(tmp) / "p.sqlite"
            b = asyncio.run(_run(Harness(path, **cfg), with_restarts, path))
            assert b.sink.events == a.sink.events
            asyncio.run(_check_books(b))  # read back from the store, while it exists
