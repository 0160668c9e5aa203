"""Test kit for the risk components: a trading system built by ``engine.system.build_system``
exactly as the daemon builds one, around the ``FakeBroker`` or the real paper broker with a
receipt log, on a replay clock in a regular session, with every order that passed the gate
recorded."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from brokers.config import BrokerConfig, PaperConfig
from brokers.fake import FakeBroker
from brokers.paper import PaperBroker
from engine.config import DaemonConfig
from engine.execution import OrderManager
from engine.system import SystemSpec, TradingSystem, build_system
from kernel.broker import BrokerOrder, EventSink
from kernel.bus import Bus
from kernel.clock import Clock, ReplayClock
from kernel.errors import BrokerRejected
from kernel.events import (
    BarBatch,
    BrokerStatusChanged,
    Event,
    OrderApproved,
    OrderIntent,
    OrderSubmitted,
    PlaceOrder,
)
from kernel.model import AccountSnapshot, OrderSide, OrderType, Signal, TimeInForce
from kernel.views import Totals
from portfolio.book import Portfolio
from risk.config import GlobalRiskConfig, RiskConfig
from risk.gate import Gate
from risk.market import AlwaysOpen, Market
from risk.modes import ExecutionMode, ExecutionModes
from risk.state import TradingStatus

# Monday 2024-07-01 11:00 New York: a regular session.
SESSION = datetime(2024, 7, 1, 15, 0, tzinfo=UTC)
PRICES = {"AAPL": 150.0, "MSFT": 300.0, "XOM": 100.0, "CVX": 150.0, "F": 12.0, "BRK": 20000.0}


@dataclass(frozen=True, slots=True)
class Receipt:
    """One order as the paper broker received it, with the broker's own books (queried
    through its public API) just before it took the order in."""

    intent: OrderIntent
    now: datetime
    account: AccountSnapshot
    open_orders: list[BrokerOrder]
    rejected: str | None = None


class AuditedPaperBroker(PaperBroker):
    """The real paper broker, unchanged, that also keeps a receipt of every order it is
    handed (before its own validation), so a test can check each one against the books
    the broker held at that moment."""

    def __init__(self, *, cfg: PaperConfig, clock: Clock, sink: EventSink) -> None:
        super().__init__(cfg=cfg, clock=clock, sink=sink)
        self._audit_clock = clock
        self.receipts: list[Receipt] = []

    async def submit(self, intent: OrderIntent) -> None:
        receipt = Receipt(intent, self._audit_clock.now(), await self.account(),
                          await self.open_orders())
        try:
            await super().submit(intent)
        except BrokerRejected as exc:
            self.receipts.append(dataclasses.replace(receipt, rejected=str(exc)))
            raise
        self.receipts.append(receipt)


class Harness:
    """One account as the daemon wires it (``build_system``, no journal), with the
    ``FakeBroker`` (``broker``; ``holdings`` are its positions, bought at ``PRICES``, before
    the start), or with ``paper``, the real paper broker (``AuditedPaperBroker``), which
    fills working orders on each bar batch.

    Enter it (``async with``): the system is entered (broker, order manager worker,
    reconciler); with ``reconciled`` its books are then taken from the broker and
    reconciled (``TradingSystem.start_books``), as the daemon does before its feed starts;
    then one bar batch at ``PRICES`` sets the market. ``submitted`` lists, in order, every
    intent the gate approved that the order manager took (an order manager taking one the
    gate never approved fails the system, and leaving the harness raises).
    """

    def __init__(self, cfg: RiskConfig | None = None, *, now: datetime = SESSION,
                 cash: float = 100_000, market: Market | None = None,
                 mode: ExecutionMode = ExecutionMode.FULL_AUTO, reconciled: bool = True,
                 paper: PaperConfig | None = None, holdings: Mapping[str, int] | None = None,
                 environ: Mapping[str, str] | None = None,
                 state_dir: Path | None = None, totals: Totals | None = None,
                 global_gross: float | None = None) -> None:
        self.cfg = cfg or RiskConfig()
        self.clock = ReplayClock(now)
        self.reconciled = reconciled
        self._tmp = tempfile.TemporaryDirectory() if state_dir is None else None
        state_dir = Path(self._tmp.name) if self._tmp is not None else state_dir
        assert state_dir is not None
        paper_cfg = (paper or PaperConfig()).model_copy(update={"initial_cash": Decimal(cash)})
        spec = SystemSpec(name="this", broker=BrokerConfig(paper=paper_cfg), risk=self.cfg,
                          state_dir=state_dir)
        self.system: TradingSystem = build_system(
            spec, daemon=DaemonConfig(execution_mode=mode.value, state_dir=state_dir),
            clock=self.clock, environ=environ or {}, journaling=False,
            broker=self._broker_factory(paper_cfg if paper else None, holdings, cash),
            market=market or AlwaysOpen(), totals=totals,
            global_risk=GlobalRiskConfig(max_gross_exposure=global_gross))
        self.broker: Any = self.system.broker
        self.events: list[Event] = []
        self.submitted: list[OrderIntent] = []
        self._approved: dict[str, OrderIntent] = {}
        self.bus.subscribe(Event, self.events.append)
        self.bus.subscribe(OrderApproved, self._on_approved)
        self.bus.subscribe(OrderSubmitted, self._on_submitted)
        self._ready = asyncio.Event()
        self.bus.subscribe(BrokerStatusChanged, self._on_broker_status)
        self._n = itertools.count(1)

    def _broker_factory(self, paper: PaperConfig | None, holdings: Mapping[str, int] | None,
                        cash: float) -> Callable[[EventSink], Any]:
        if paper is not None:
            assert not holdings, "the paper harness starts flat"
            return lambda sink: AuditedPaperBroker(cfg=paper, clock=self.clock, sink=sink)
        fake = FakeBroker(Decimal(cash), clock=self.clock)
        for symbol, qty in (holdings or {}).items():
            px = Decimal(repr(PRICES[symbol]))
            fake.set_position(symbol, qty, px)
            fake.cash -= px * qty
        return fake.connect

    def _on_approved(self, event: OrderApproved) -> None:
        self._approved[event.intent.client_order_id] = event.intent

    def _on_submitted(self, event: OrderSubmitted) -> None:
        self.submitted.append(self._approved.pop(event.client_order_id))

    # -- lifetime ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.system.__aenter__()
        if self.reconciled:
            await self.system.start_books()
        self.bars(PRICES)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            await self.system.__aexit__(et, e, tb)
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
        if e is None and self.system.failure is not None:
            raise AssertionError(f"the system failed: {self.system.failure!r}")

    async def reconciled_again(self, timeout: float = 5.0) -> None:
        """Let the loop run the reconciliation pass the system started on its own (it
        answers a broker's ``recovering`` with one) until the books are confirmed."""
        await asyncio.wait_for(self._ready.wait(), timeout)

    def _on_broker_status(self, event: BrokerStatusChanged) -> None:
        if self.system.ready:
            self._ready.set()
        else:
            self._ready.clear()

    # -- the system's parts --------------------------------------------------------------

    @property
    def bus(self) -> Bus:
        return self.system.bus

    @property
    def gate(self) -> Gate:
        return self.system.gate

    @property
    def orders(self) -> OrderManager:
        return self.system.orders

    @property
    def portfolio(self) -> Portfolio:
        return self.system.portfolio

    @property
    def state(self) -> TradingStatus:
        return self.system.risk_state

    @property
    def modes(self) -> ExecutionModes:
        return self.system.modes

    # -- arrange -----------------------------------------------------------------------

    def bars(self, closes: dict[str, float], opens: dict[str, float] | None = None,
             volume: float = 1e6) -> None:
        syms = tuple(closes)
        c = np.array([closes[s] for s in syms])
        o = np.array([(opens or {}).get(s, closes[s]) for s in syms])
        self.system.on_bars(BarBatch(ts=self.clock.now(), symbols=syms, open=o,
                                     high=np.maximum(o, c), low=np.minimum(o, c), close=c,
                                     volume=np.full(len(syms), volume)))

    async def fill(self, cid: str, price: Decimal | None = None) -> None:
        """The fake broker fills an order in full once the order manager has handed it
        over; its reports flow back through the system."""
        await self.orders.drained()
        intent = next(i for i in self.submitted if i.client_order_id == cid)
        self.broker.fill(cid, intent.qty, price or intent.reference_price)

    # -- act ---------------------------------------------------------------------------

    def intent(self, symbol: str = "AAPL", qty: int = 5, *, side: OrderSide = OrderSide.BUY,
               price: float | None = None, strength: float = 0.15, age: float = 0.0,
               signal: bool = True, signal_id: str | None = None, batch_id: str | None = "b1",
               reduce_only: bool = False, origin: str = "signal", sig_price: float | None = None,
               limit_price: Decimal | None = None) -> OrderIntent:
        n = next(self._n)
        px = price if price is not None else PRICES.get(symbol, 100.0)
        ts = self.clock.now() - timedelta(seconds=age)
        sig = Signal(id=signal_id or f"s{n}", symbol=symbol, strength=strength,
                     price=sig_price if sig_price is not None else px, ts=ts,
                     source="test") if signal else None
        return OrderIntent(
            client_order_id=f"c{n}", symbol=symbol, side=side, qty=qty,
            order_type=OrderType.LIMIT if limit_price else OrderType.MARKET,
            time_in_force=TimeInForce.DAY, ts=ts,
            reference_price=Decimal(repr(px)) if px == px and abs(px) != float("inf")
            else Decimal(0),
            limit_price=limit_price, signal=sig, batch_id=batch_id, reduce_only=reduce_only,
            origin=origin)

    def place(self, intent: OrderIntent) -> None:
        self.bus.send(PlaceOrder(intent))
