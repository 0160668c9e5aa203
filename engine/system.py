"""One broker account as a unit: a ``TradingSystem``, built by ``build_system``.

A trading system is everything that belongs to one broker account, wired on its own bus:
the broker adapter, the order manager, the portfolio, the trading state, the gate, the
risk monitor, the execution modes, the kill switch, sizing, the journal, the reconciler,
the equity marker and the session counters. The daemon builds one per configured account
with ``build_system`` — and so does every test that needs one: there is no other wiring.

Flow on a system's bus::

    BarBatch -> (paper matching) -> portfolio marks -> gate marks
    SignalBatch -> sizing -> PlaceOrder -> gate -> SubmitOrder -> order manager -> broker
    broker reports -> order manager -> OrderFilled -> portfolio -> journal, stats

The daemon feeds it the market's bar batches (``on_bars``) and the signal batches routed
to this account (``on_signals``), drives its timers (``check_timers``), and enters it
(``async with``) for its lifetime: journal first (closed last), then broker, order manager
and reconciler. On the way out, once the broker has closed its streams, the final books
are journaled. ``start_books`` rebuilds the session from the journal and reconciles with
the broker before any signal may pass the gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Self

import structlog

from brokers.factory import create_broker
from engine.accounts import SystemSpec
from engine.config import DaemonConfig
from engine.durable import DurableBroker
from engine.execution import OrderManager
from engine.journal import JOURNAL_FILE, Journal
from engine.reconcile import Reconciler, books_snapshot
from engine.recovery import EquityMarker, Recovered, recover
from engine.stats import SessionStats
from kernel.broker import Broker, EventSink
from kernel.bus import Bus
from kernel.clock import Clock, Timers
from kernel.errors import HandlerFailed
from kernel.events import (
    BarBatch,
    BrokerStatusChanged,
    CancelAllOrders,
    CancelOrder,
    Event,
    OrderFilled,
    ReconcileTick,
    RiskTick,
    SignalBatch,
    SubmitOrder,
)
from kernel.model import CENT
from kernel.views import Totals
from portfolio import Portfolio
from risk.config import GlobalRiskConfig, RiskConfig
from risk.controls import Handler, register_controls
from risk.emergency import LiquidationResult, liquidate
from risk.gate import Gate
from risk.killswitch import KillSwitch
from risk.market import Market, MarketHours
from risk.marks import EquityMarks
from risk.modes import ExecutionModes
from risk.monitor import RiskMonitor
from risk.sizing import Sizer
from risk.state import TradingState, TradingStatus
from risk.wiring import wire_risk

log = structlog.get_logger("engine.system")

# A broker not built from configuration: given the sink its reports must go to (the
# system's), it returns the broker. ``FakeBroker.connect`` is one.
BrokerFactory = Callable[[EventSink], Broker]


class TradingSystem:
    """One broker account and everything that trades it (see the module doc)."""

    def __init__(
        self,
        spec: SystemSpec,
        *,
        daemon: DaemonConfig,
        clock: Clock,
        environ: Mapping[str, str],
        on_failure: Callable[[BaseException], None] | None = None,
        broker: Broker | BrokerFactory | None = None,
        journaling: bool = True,
        market: Market | None = None,
        totals: Totals | None = None,
        global_risk: GlobalRiskConfig | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.cfg = daemon
        self.clock = clock
        self.failure: BaseException | None = None
        self._notify_failure = on_failure
        self.bus = Bus(on_failure=self._on_bus_failure)
        self.stats = SessionStats()
        self.stop_reason = ""
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._stack = contextlib.AsyncExitStack()
        self.broker = self._make_broker(broker)
        self.portfolio = Portfolio(spec.broker.paper.initial_cash, publish=self.bus.publish)
        # journaling=False exists for the journal benchmark only: no journal, no recovery.
        self.journal = (Journal(spec.state_dir / JOURNAL_FILE, clock=clock, group_commit=True)
                        if journaling else None)
        # The order manager submits through DurableBroker: each intent is fsynced before
        # its broker call, one fsync per burst of intents (see engine.journal).
        submitter = DurableBroker(self.broker, self.journal) if self.journal else self.broker
        self.orders = OrderManager(submitter, clock=clock, publish=self.bus.publish,
                                   submit_timeout=daemon.execution_timeout_secs,
                                   on_intent=self.journal.record_intent if self.journal else None,
                                   retain_done=daemon.orders_retained)
        self.risk_state = TradingStatus(clock=clock, publish=self.bus.publish)
        self.marks = EquityMarks()  # start-of-day and peak equity: one copy, shared
        self.marker = EquityMarker(self.journal, self.portfolio, self.stats, clock, self.marks)
        self.recovered: Recovered | None = None
        self.market: Market = market if market is not None else MarketHours()
        self.connected = True  # until the broker reports otherwise
        self._books_started = False
        self._build_risk(spec.risk, environ, totals, global_risk or GlobalRiskConfig())
        self.reconciler = Reconciler(  # after the risk state: it escalates it on drift
            self.broker, orders=self.orders, portfolio=self.portfolio, clock=clock,
            publish=self.bus.publish, journal=self.journal, state=self.risk_state,
            on_failure=self._on_failure, grace_secs=daemon.execution_timeout_secs,
            confirm_delay=daemon.reconcile_confirm_secs,
            request_delay=daemon.reconcile_request_delay_secs)
        self.timers = Timers(clock, self.bus.publish)
        self.controls: dict[str, Handler] = {}
        register_controls(self.controls.__setitem__, state=self.risk_state,
                          killswitch=self.killswitch, modes=self.modes, gate=self.gate,
                          send=self.bus.send, liquidate=self.liquidate)
        self._wire()

    # -- wiring ------------------------------------------------------------------------

    def _make_broker(self, broker: Broker | BrokerFactory | None) -> Broker:
        """The configured broker, or the one given: a ready broker, or a factory that is
        handed this system's report sink."""
        if broker is None:
            return create_broker(self.spec.broker, clock=self.clock, sink=self._on_broker_event,
                                 state_dir=self.spec.state_dir)
        if isinstance(broker, Broker):
            return broker
        return broker(self._on_broker_event)

    def _build_risk(self, cfg: RiskConfig, environ: Mapping[str, str], totals: Totals | None,
                    global_risk: GlobalRiskConfig) -> None:
        bus, clock = self.bus, self.clock
        self.killswitch = KillSwitch(state=self.risk_state, path=self.cfg.kill_switch_path,
                                     environ=environ)
        self.modes = ExecutionModes(
            self.cfg.execution_mode, clock=clock, approval_notional=cfg.approval_notional,
            send=bus.send, publish=bus.publish,
            on_emergency=lambda why: self.spawn(self.liquidate(why), "risk.liquidate"))
        self.gate = Gate(cfg, clock=clock, portfolio=self.portfolio, orders=self.orders,
                         state=self.risk_state, publish=bus.publish, send=bus.send,
                         market=self.market, modes=self.modes, marks=self.marks,
                         account=self.name, totals=totals,
                         global_gross_pct=global_risk.max_gross_exposure)
        self.monitor = RiskMonitor(cfg, clock=clock, portfolio=self.portfolio,
                                   orders=self.orders, state=self.risk_state, marks=self.marks,
                                   publish=bus.publish, send=bus.send)
        self.sizer = Sizer(cfg, equity=self.portfolio.equity, holding=self._holding,
                           send=bus.send,
                           orders_today=self.orders.orders_today)  # the gate's order budget

    def _wire(self) -> None:
        bus, cfg = self.bus, self.cfg
        if self.journal is not None:
            self.journal.attach(bus)
        on_bars = getattr(self.broker, "on_bars", None)
        if on_bars is not None:  # the paper broker matches orders against each bar first
            bus.subscribe(BarBatch, on_bars)
        bus.subscribe(BarBatch, self.portfolio.on_bars)
        bus.subscribe(BarBatch, self._count_batch)
        bus.subscribe(SignalBatch, self.sizer.on_signals)
        wire_risk(bus, gate=self.gate, state=self.risk_state, monitor=self.monitor)
        bus.register(SubmitOrder, self.orders.execute_submit)
        bus.register(CancelOrder, self.orders.execute_cancel)
        bus.register(CancelAllOrders, self.orders.execute_cancel_all)
        bus.subscribe(OrderFilled, self.portfolio.on_fill)
        bus.subscribe(RiskTick, self.marker.on_tick)
        bus.subscribe(BrokerStatusChanged, self._on_broker_status)
        self.reconciler.attach(bus)
        self.stats.attach(bus)
        # Reconciliation looks for drift at the broker, which happens in wall time: in a
        # fast replay it runs at most once a wall second (start-up and recovery passes
        # are not timers and always run).
        self.timers.every("reconcile", cfg.reconcile_interval_secs,
                          lambda ts: ReconcileTick(ts=ts), min_wall_secs=1.0)
        self.timers.every("risk", cfg.risk_interval_secs, lambda ts: RiskTick(ts=ts))

    def _holding(self, symbol: str) -> int:
        return self.portfolio.qty(symbol) + self.orders.working_qty(symbol)

    def _count_batch(self, batch: BarBatch) -> None:
        self.stats.bar_batches += 1
        self.stats.bar_rows += len(batch.symbols)

    def _on_broker_status(self, event: BrokerStatusChanged) -> None:
        status = str(event.status)
        if status == "disconnected":
            self.connected = False
        elif status in ("connected", "ready", "recovering"):
            self.connected = True

    @property
    def available(self) -> bool:
        """Can take new orders now: connected, reconciled, not halted."""
        return (self.connected and self.ready
                and self.risk_state.state is not TradingState.HALTED
                and not self.risk_state.kill_switch)

    def _on_broker_event(self, event: Event) -> None:
        """Broker reports arrive here on the loop thread; the order manager owns them."""
        self.orders.on_report(event)

    def _on_bus_failure(self, failure: HandlerFailed) -> None:
        self._on_failure(failure)

    def _on_failure(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        if self._notify_failure is not None:
            self._notify_failure(exc)

    # -- inputs from the daemon ----------------------------------------------------------

    def on_bars(self, batch: BarBatch) -> None:
        self.bus.publish(batch)

    def on_signals(self, batch: SignalBatch) -> None:
        self.bus.publish(batch)

    def check_timers(self) -> int:
        return self.timers.check()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``coro`` as a named side task; its failure stops the daemon."""
        task: asyncio.Task[Any] = asyncio.create_task(coro, name=name)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_task_done)

    def _side_task_done(self, task: asyncio.Task[Any]) -> None:
        self._side_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            log.error("system.task_failed", account=self.name, task=task.get_name(),
                      error=repr(exc))
            self._on_failure(exc)

    async def liquidate(self, why: str) -> LiquidationResult:
        return await liquidate(cfg=self.spec.risk, state=self.risk_state, send=self.bus.send,
                               orders=self.orders, portfolio=self.portfolio,
                               market=self.market, clock=self.clock, why=why)

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open the journal, then connect (see ``connection``)."""
        try:
            if self.journal is not None:
                await self._stack.enter_async_context(self.journal)
            await self._stack.enter_async_context(self.connection())
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Self]:
        """Broker, order manager and reconciler, with the journal already open (the
        daemon opens the journal once and may retry this while the broker is down).
        On the way out, once the broker has closed its streams (every report it handed
        over is applied), the final books are journaled."""
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._final_books)
            for component in (self.broker, self.orders, self.reconciler):
                await stack.enter_async_context(component)
            try:
                yield self
            finally:
                tasks = list(self._side_tasks)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def started(self) -> bool:
        """The books were rebuilt and reconciled (``start_books`` succeeded)."""
        return self._books_started

    @property
    def worker(self) -> asyncio.Task[None] | None:
        """The order manager's submission task (a dead worker stops the daemon)."""
        return self.orders.worker

    @property
    def ready(self) -> bool:
        """True once the books are reconciled with the broker (the gate denies
        ``RECONCILING`` while False)."""
        return self.reconciler.ready

    async def refresh_market_clock(self) -> None:
        """The gate prefers the broker's clock for MARKET_CLOSED when the broker has one."""
        if not isinstance(self.market, MarketHours):
            return  # a market without sessions (``AlwaysOpen``, a 24/7 venue) has no use for it
        try:
            clock = await self.broker.clock()
            # The market (XNYS) is one for every account: a broker without a clock (IB,
            # paper) leaves the one another account's broker gave in place.
            if clock is not None:
                self.market.set_broker_clock(clock)
        except Exception as exc:  # a failed clock read keeps the calendar in charge
            log.warning("market.clock_failed", account=self.name, error=repr(exc))

    async def start_books(self) -> None:
        """Rebuild the session from the journal and reconcile it with the broker (the
        source of truth for cash and positions) before any signal is accepted. The
        reconciler's readiness is what lets the gate stop denying RECONCILING."""
        if self.journal is None:
            account = await self.broker.account()
            self.portfolio.restore(account.cash, await self.broker.positions())
            await self.reconciler.reconcile("start", gate=True, startup=True)
        else:
            self.journal.append("SessionStarted", {"pid": os.getpid(), "account": self.name,
                                                   "broker": self.broker.name}, durable=True)
            self.recovered = await recover(
                journal=self.journal, broker=self.broker, orders=self.orders,
                portfolio=self.portfolio, stats=self.stats, marker=self.marker,
                reconciler=self.reconciler, clock=self.clock, modes=self.modes)
            self._restore_risk(self.recovered)
        self._books_started = True
        self.gate.invalidate()
        log.info("portfolio.restored", account=self.name, cash=str(self.portfolio.cash),
                 equity=str(self.portfolio.equity()), positions=len(self.portfolio.positions))

    def _restore_risk(self, recovered: Recovered) -> None:
        """A halt survives a restart (the equity marks were restored by recovery)."""
        was = recovered.trading_state
        if was and was != str(self.risk_state.state):
            self.risk_state.request(TradingState(was), who="recovery",
                                    why=f"trading state before the restart was {was}")

    async def _final_books(self) -> None:
        await asyncio.sleep(0)  # reports scheduled onto the loop while the broker closed
        # Books that were never rebuilt (the broker could not be reached) must not be
        # journaled: recovery would take them for the account's last state.
        if self._books_started and self.journal is not None and self.journal.is_open:
            now = self.clock.now()
            self.marker.mark(now)
            self.journal.append("BooksSnapshot", books_snapshot(self.portfolio), ts=now)
            self.journal.append("SessionStopped", {"reason": self.stop_reason}, ts=now,
                                durable=True)

    # -- status --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        p = self.portfolio
        return {
            **self.stats.as_dict(),
            "open_orders": len(self.orders.open_orders()),
            "cash": str(p.cash),
            "equity": str(p.equity().quantize(CENT)),
            "realized_pnl": str(p.realized_pnl().quantize(CENT)),
            "unrealized_pnl": str(p.unrealized_pnl().quantize(CENT)),
            "pnl": str(self.marker.session_pnl(p.equity()).quantize(CENT)),
        }

    def status(self) -> dict[str, Any]:
        return {
            "account": self.name,
            "trading_state": self.risk_state.snapshot()["state"],
            "ready": self.ready,
            "broker_connected": self.connected,
            "risk": self.risk_state.snapshot(),
            "execution_mode": str(self.modes.mode),
            "broker": self.broker.name,
            **self.portfolio.snapshot(),
            "open_orders": [
                {"client_order_id": o.client_order_id, "symbol": o.symbol, "side": str(o.side),
                 "qty": o.qty, "filled_qty": o.filled_qty, "status": str(o.status)}
                for o in self.orders.open_orders()
            ],
            "counters": {**self.stats.as_dict(), "orders_today": self.orders.orders_today(),
                         **self.marker.counters()},
        }

    async def settled(self, *, market: bool) -> None:
        await self.orders.settled(market=market)

    def in_flight(self, *, market: bool) -> int:
        return self.orders.in_flight(market=market)


def build_system(
    spec: SystemSpec,
    *,
    daemon: DaemonConfig,
    clock: Clock,
    environ: Mapping[str, str] | None = None,
    on_failure: Callable[[BaseException], None] | None = None,
    broker: Broker | BrokerFactory | None = None,
    journaling: bool = True,
    market: Market | None = None,
    totals: Totals | None = None,
    global_risk: GlobalRiskConfig | None = None,
) -> TradingSystem:
    """The one way to wire an account: the daemon and the tests both call this.

    ``broker`` replaces the configured one: a ready broker, or a ``BrokerFactory`` called
    with the system's report sink (``FakeBroker.connect``, a broker built outside the
    configuration). ``market`` replaces the XNYS ``MarketHours`` (``AlwaysOpen`` for a
    venue that never closes). ``on_failure`` is told about any handler or side task that
    raises (the daemon stops in order). Without it the failure is kept in
    ``TradingSystem.failure`` (tests assert on it). ``totals`` and ``global_risk`` give
    the gate the other accounts' exposure and the global limits.
    """
    return TradingSystem(spec, daemon=daemon, clock=clock,
                         environ=dict(os.environ if environ is None else environ),
                         on_failure=on_failure, broker=broker, journaling=journaling,
                         market=market, totals=totals, global_risk=global_risk)


__all__ = ["BrokerFactory", "SystemSpec", "TradingSystem", "build_system"]
