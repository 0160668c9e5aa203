"""Test kit for the risk components: a recording fake broker with its own books, the real
paper broker with a receipt log, a recording order sink, and a harness wiring the real
gate, state, portfolio and order manager on a real bus with a replay clock."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

import numpy as np

from brokers.config import PaperConfig
from brokers.paper import PaperBroker
from engine.execution import OrderManager
from kernel.broker import BrokerOrder
from kernel.bus import Bus
from kernel.clock import Clock, ReplayClock
from kernel.errors import BrokerRejected
from kernel.events import (
    BarBatch,
    Event,
    OrderFilled,
    OrderIntent,
    OrderNew,
    PlaceOrder,
    SubmitOrder,
)
from kernel.model import (
    AccountSnapshot,
    BrokerPosition,
    Fill,
    MarketClock,
    OrderSide,
    OrderType,
    Signal,
    TimeInForce,
)
from kernel.views import Totals
from portfolio.book import Portfolio
from risk.config import RiskConfig
from risk.gate import Gate
from risk.market import AlwaysOpen, Market
from risk.modes import ExecutionMode, ExecutionModes
from risk.state import TradingStatus
from risk.wiring import wire_risk

# Monday 2024-07-01 11:00 New York: a regular session.
SESSION = datetime(2024, 7, 1, 15, 0, tzinfo=UTC)
PRICES = {"AAPL": 150.0, "MSFT": 300.0, "XOM": 100.0, "CVX": 150.0, "F": 12.0, "BRK": 20000.0}


class FakeBroker:
    """Records every order that reaches it and keeps its own books (positions, cash),
    independent of the daemon's portfolio. Fills happen only when the test says."""

    name = "fake"

    def __init__(self, cash: Decimal = Decimal(100_000)) -> None:
        self.sink: Any = None
        self.cash = cash
        self.books: dict[str, int] = {}
        self.received: list[OrderIntent] = []
        self.open: dict[str, OrderIntent] = {}
        self.canceled: list[str] = []
        self._exec = itertools.count(1)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    async def submit(self, intent: OrderIntent) -> None:
        self.received.append(intent)
        self.open[intent.client_order_id] = intent

    def fill(self, cid: str, price: Decimal, ts: datetime) -> Fill:
        intent = self.open.pop(cid)
        f = Fill(execution_id=f"x{next(self._exec)}", client_order_id=cid,
                 symbol=intent.symbol, side=intent.side, qty=intent.qty, price=price, ts=ts)
        self.books[f.symbol] = self.books.get(f.symbol, 0) + f.signed_qty
        self.cash -= f.price * f.signed_qty
        return f

    async def cancel(self, client_order_id: str) -> None:
        self.canceled.append(client_order_id)
        self.open.pop(client_order_id, None)

    async def cancel_all(self) -> None:
        for cid in list(self.open):
            await self.cancel(cid)

    async def replace(self, *a: Any, **k: Any) -> None:
        raise NotImplementedError

    async def get_order(self, client_order_id: str) -> None:
        return None

    async def open_orders(self) -> list[Any]:
        return []

    async def fills_since(self, since: datetime) -> list[Any]:
        return []

    async def positions(self) -> list[BrokerPosition]:
        return [BrokerPosition(s, q, Decimal(0)) for s, q in self.books.items() if q]

    async def account(self) -> AccountSnapshot:
        raise NotImplementedError

    async def clock(self) -> MarketClock | None:
        return None


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

    def __init__(self, *, cfg: PaperConfig, clock: Clock, sink: Any) -> None:
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


class RecordingSink:
    """The ``SubmitOrder`` handler in tests: records, then hands to the order manager."""

    def __init__(self, orders: OrderManager) -> None:
        self.orders = orders
        self.submitted: list[OrderIntent] = []

    def execute(self, cmd: SubmitOrder) -> None:
        self.submitted.append(cmd.intent)
        self.orders.execute_submit(cmd)


class Harness:
    """Real gate, state, portfolio and order manager on a real bus, with the recording
    fake broker, or with ``paper``, the real paper broker (``AuditedPaperBroker``) wired
    as the daemon wires it: bar batches reach the broker first (it fills on them), and
    its reports go to the order manager, then as ``OrderFilled`` to the portfolio. The
    paper harness needs a running loop and ``async with h.orders`` to submit."""

    broker: Any

    def __init__(self, cfg: RiskConfig | None = None, *, now: datetime = SESSION,
                 cash: float = 100_000, market: Market | None = None,
                 mode: ExecutionMode = ExecutionMode.FULL_AUTO,
                 reconciled: bool = True, paper: PaperConfig | None = None,
                 totals: Totals | None = None, global_gross: float | None = None) -> None:
        self.cfg = cfg or RiskConfig()
        self.clock = ReplayClock(now)
        self.events: list[Event] = []
        self.bus = Bus()
        self.bus.subscribe(Event, self.events.append)
        pub = self.bus.publish
        self.portfolio = Portfolio(Decimal(cash), publish=pub)
        if paper is None:
            self.broker = FakeBroker(Decimal(cash))
        else:
            paper = paper.model_copy(update={"initial_cash": Decimal(cash)})
            self.broker = AuditedPaperBroker(cfg=paper, clock=self.clock,
                                             sink=self._on_broker_event)
            self.bus.subscribe(BarBatch, self.broker.on_bars)  # first, as in the daemon
        self.orders = OrderManager(self.broker, clock=self.clock, publish=pub)
        self.state = TradingStatus(clock=self.clock, publish=pub, reconciled=reconciled)
        self.modes = ExecutionModes(mode, clock=self.clock, send=self.bus.send,
                                    approval_notional=self.cfg.approval_notional)
        self.sink = RecordingSink(self.orders)
        self.gate = Gate(self.cfg, clock=self.clock, portfolio=self.portfolio,
                         orders=self.orders, state=self.state, publish=pub,
                         send=self.bus.send, market=market or AlwaysOpen(), modes=self.modes,
                         account="this", totals=totals, global_gross_pct=global_gross)
        self.bus.register(SubmitOrder, self.sink.execute)
        self.bus.subscribe(OrderFilled, self.portfolio.on_fill)
        self.bus.subscribe(BarBatch, self.portfolio.on_bars)
        wire_risk(self.bus, gate=self.gate, state=self.state)
        self.bars(PRICES)
        self._n = itertools.count(1)

    def _on_broker_event(self, event: Event) -> None:
        """As ``Daemon._on_broker_event``: broker reports go to the order manager."""
        self.orders.on_report(event)

    # -- arrange -----------------------------------------------------------------------

    def bars(self, closes: dict[str, float], opens: dict[str, float] | None = None,
             volume: float = 1e6) -> None:
        syms = tuple(closes)
        c = np.array([closes[s] for s in syms])
        o = np.array([(opens or {}).get(s, closes[s]) for s in syms])
        self.bus.publish(BarBatch(ts=self.clock.now(), symbols=syms, open=o, high=np.maximum(o, c),
                                  low=np.minimum(o, c), close=c,
                                  volume=np.full(len(syms), volume)))

    def hold(self, symbol: str, qty: int, price: float | None = None) -> None:
        """Book a position as if filled (portfolio and the broker's books)."""
        px = Decimal(repr(price if price is not None else PRICES[symbol]))
        side = OrderSide.BUY if qty > 0 else OrderSide.SELL
        f = Fill(execution_id=f"h{next(self._n)}", client_order_id=f"hold-{symbol}",
                 symbol=symbol, side=side, qty=abs(qty), price=px, ts=self.clock.now())
        self.bus.publish(OrderFilled(client_order_id=f.client_order_id, ts=f.ts, fill=f))
        self.broker.books[symbol] = self.broker.books.get(symbol, 0) + qty
        self.broker.cash -= px * qty

    def fill(self, cid: str, price: Decimal | None = None) -> None:
        """The broker fills an order it received; the report flows through the manager."""
        intent = next(i for i in self.sink.submitted if i.client_order_id == cid)
        self.broker.open.setdefault(cid, intent)
        f = self.broker.fill(cid, price or intent.reference_price, self.clock.now())
        self.orders.on_report(OrderNew(client_order_id=cid, ts=self.clock.now()))
        self.orders.on_report(OrderFilled(client_order_id=cid, ts=self.clock.now(), fill=f))

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
