"""The daemon: builds every component from the settings, wires them on one bus, and runs
the session until the replay ends, a stop signal arrives, or a component fails.

Flow: bar batch -> (paper broker matching) -> portfolio marks -> signal sources ->
``SignalBatch`` -> sizing -> ``PlaceOrder`` -> gate -> ``SubmitOrder`` -> order manager ->
broker -> reports -> order manager -> ``OrderFilled`` -> portfolio.

Durability: every state-changing event is journaled (``engine.journal``); each order
intent is fsynced there before it reaches the broker. At start the session is rebuilt
from the journal and reconciled with the broker (``engine.recovery``) before the feed
starts; ``ready`` stays False until then, and again while a reconnected broker is being
reconciled (``engine.reconcile``). A replay restarted on the same state directory resumes
after the last bar it journaled.

Tasks owned (all named): ``feed.replay`` (or the live feed), ``bus.pump`` (drains the
inbox of broker/MQTT/live-bar messages), ``orders.submit``, ``timers`` (live),
``sdnotify.watchdog``; with ``signals.mqtt.enabled`` the MQTT bridge (external signals
through the inbox, events out, signed control) owns ``mqtt.*``. Any task failing, or any
handler raising, stops the daemon in order: stop taking signals, let in-flight orders
reach the broker within ``shutdown_grace_secs``, log the session summary, exit non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from brokers.factory import create_broker
from config.settings import Settings
from daemon.control import ControlServer
from daemon.sdnotify import Notifier
from engine.durable import DurableBroker
from engine.execution import OrderManager
from engine.feed import BarTape, Pacer
from engine.journal import JOURNAL_FILE, Journal
from engine.reconcile import Reconciler, books_snapshot
from engine.recovery import EquityMarker, Recovered, recover
from engine.stats import SessionStats
from kernel.broker import Broker
from kernel.bus import Bus
from kernel.clock import Clock, ReplayClock, Timers, WallClock
from kernel.errors import HandlerFailed
from kernel.events import (
    BarBatch,
    BrokerStatusChanged,
    CancelAllOrders,
    CancelOrder,
    Event,
    Message,
    OrderEvent,
    OrderFilled,
    ReconcileTick,
    RiskTick,
    SignalBatch,
    SubmitOrder,
)
from kernel.inbox import Inbox
from portfolio import Portfolio
from risk.controls import register_controls
from risk.emergency import LiquidationResult, liquidate
from risk.gate import Gate
from risk.killswitch import KillSwitch
from risk.market import MarketHours
from risk.marks import EquityMarks
from risk.modes import ExecutionModes
from risk.monitor import RiskMonitor
from risk.sizing import Sizer
from risk.state import TradingState, TradingStatus
from risk.wiring import wire_risk
from signals.demo import MomentumRule

if TYPE_CHECKING:
    from signals.mqtt import MqttBridge

log = structlog.get_logger("daemon.app")

STATUS_FILE = "status.json"


class Daemon:
    """One trading session. ``await Daemon(settings).run()`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        broker: Broker | None = None,
        environ: dict[str, str] | None = None,
        journaling: bool = True,
    ) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.state_dir = settings.daemon.state_dir
        self.replaying = settings.feed.source == "replay"
        self.clock: Clock = ReplayClock() if self.replaying else WallClock()
        self.bus = Bus(on_failure=self._on_bus_failure)
        self.inbox = Inbox(settings.feed.queue_size)
        self.stats = SessionStats()
        self.notifier = Notifier(self.environ)
        self._stop = asyncio.Event()
        self._stop_reason = ""
        self._fatal: BaseException | None = None
        self.broker = broker or create_broker(settings.broker, clock=self.clock,
                                              sink=self._on_broker_event,
                                              state_dir=self.state_dir)
        self.portfolio = Portfolio(settings.broker.paper.initial_cash, publish=self.bus.publish)
        # journaling=False exists for the journal benchmark only: no journal, no recovery.
        self.journal = (Journal(self.state_dir / JOURNAL_FILE, clock=self.clock,
                                group_commit=True) if journaling else None)
        # The order manager submits through DurableBroker: each intent is fsynced before
        # its broker call, one fsync per burst of intents (see daemon.journal).
        submitter = DurableBroker(self.broker, self.journal) if self.journal else self.broker
        self.orders = OrderManager(submitter, clock=self.clock, publish=self.bus.publish,
                                   submit_timeout=settings.daemon.execution_timeout_secs,
                                   on_intent=self.journal.record_intent if self.journal else None)
        self.marks = EquityMarks()  # start-of-day and peak equity: one copy, shared
        self.marker = EquityMarker(self.journal, self.portfolio, self.stats, self.clock,
                                   self.marks)
        self.recovered: Recovered | None = None
        self.sizer = Sizer(settings.risk, equity=self.portfolio.equity,
                           holding=self._holding, send=self.bus.send)
        self.timers = Timers(self.clock, self.bus.publish)
        self.control = ControlServer(self.state_dir)
        self._build_risk()
        self.reconciler = Reconciler(  # after _build_risk: it escalates the trading state
            self.broker, orders=self.orders, portfolio=self.portfolio, clock=self.clock,
            publish=self.bus.publish, journal=self.journal, state=self.risk_state,
            on_failure=self._on_component_failure,
            grace_secs=settings.daemon.execution_timeout_secs)
        self._status_written = 0.0
        self._side_tasks: set[asyncio.Task[None]] = set()
        # Observers awaited after each replayed batch, once its orders reached the broker
        # (invariant checks in tests, benchmarks, periodic marks).
        self.after_batch: list[Callable[[BarBatch], Awaitable[None]]] = []
        self._wire()
        self.mqtt = self._mqtt_bridge()

    # -- wiring ------------------------------------------------------------------------

    def _build_risk(self) -> None:
        s, bus = self.settings, self.bus
        self.risk_state = TradingStatus(clock=self.clock, publish=bus.publish)
        self.killswitch = KillSwitch(state=self.risk_state, path=s.daemon.kill_switch_path,
                                     environ=self.environ)
        self.market = MarketHours()
        self.modes = ExecutionModes(
            s.daemon.execution_mode, clock=self.clock, approval_notional=s.risk.approval_notional,
            send=bus.send, publish=bus.publish,
            on_emergency=lambda why: self._spawn(self.liquidate(why), "risk.liquidate"))
        self.gate = Gate(s.risk, clock=self.clock, portfolio=self.portfolio, orders=self.orders,
                         state=self.risk_state, publish=bus.publish, send=bus.send,
                         market=self.market, modes=self.modes, marks=self.marks)
        self.monitor = RiskMonitor(s.risk, clock=self.clock, portfolio=self.portfolio,
                                   orders=self.orders, state=self.risk_state, marks=self.marks,
                                   publish=bus.publish, send=bus.send)

    async def liquidate(self, why: str) -> LiquidationResult:
        return await liquidate(cfg=self.settings.risk, state=self.risk_state, send=self.bus.send,
                               orders=self.orders, portfolio=self.portfolio, market=self.market,
                               clock=self.clock, why=why)

    def _spawn(self, coro: Any, name: str) -> None:
        task = self._task(coro, name)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    def _holding(self, symbol: str) -> int:
        return self.portfolio.qty(symbol) + self.orders.working_qty(symbol)

    def _wire(self) -> None:
        bus, cfg = self.bus, self.settings
        if self.journal is not None:
            self.journal.attach(bus)
        on_bars = getattr(self.broker, "on_bars", None)
        if on_bars is not None:  # the paper broker matches orders against each bar first
            bus.subscribe(BarBatch, on_bars)
        bus.subscribe(BarBatch, self.portfolio.on_bars)
        bus.subscribe(BarBatch, self._count_batch)
        if cfg.signals.model.enabled:
            from signals.model import ModelSignalSource  # imports xgboost: only when used

            self.model = ModelSignalSource(cfg.signals.model, publish=bus.publish,
                                           clock=self.clock)
            bus.subscribe(BarBatch, self.model.on_bars)
        elif cfg.signals.demo.enabled:
            bus.subscribe(BarBatch, MomentumRule(cfg.signals.demo, bus.publish).on_bars)
        bus.subscribe(SignalBatch, self.sizer.on_signals)
        wire_risk(bus, gate=self.gate, state=self.risk_state, monitor=self.monitor)
        bus.register(SubmitOrder, self.orders.execute_submit)
        bus.register(CancelOrder, self.orders.execute_cancel)
        bus.register(CancelAllOrders, self.orders.execute_cancel_all)
        bus.subscribe(OrderFilled, self.portfolio.on_fill)
        bus.subscribe(RiskTick, self.marker.on_tick)
        bus.subscribe(RiskTick, self._on_risk_tick)
        bus.subscribe(ReconcileTick, self._on_reconcile_tick)
        self.reconciler.attach(bus)
        self.stats.attach(bus)
        # Reconciliation looks for drift at the broker, which happens in wall time: in a
        # fast replay it runs at most once a wall second (start-up and recovery passes
        # are not timers and always run).
        self.timers.every("reconcile", cfg.daemon.reconcile_interval_secs,
                          lambda ts: ReconcileTick(ts=ts), min_wall_secs=1.0)
        self.timers.every("risk", cfg.daemon.risk_interval_secs, lambda ts: RiskTick(ts=ts))
        self.control.register("status", self._ctl_status)
        register_controls(self.control.register, state=self.risk_state,
                          killswitch=self.killswitch, modes=self.modes, gate=self.gate,
                          send=bus.send, liquidate=self.liquidate)

    def _mqtt_bridge(self) -> MqttBridge | None:
        """External signals, events and control over MQTT, when configured."""
        cfg = self.settings.signals.mqtt
        if not cfg.enabled:
            return None
        from signals.mqtt import MqttBridge

        return MqttBridge(cfg, clock=self.clock, bus=self.bus, inbox=self.inbox,
                          control=self.control.handlers, orders=self.orders.orders,
                          trading_state=str(self.risk_state.state),
                          on_failure=self._on_component_failure)

    def _count_batch(self, batch: BarBatch) -> None:
        self.stats.bar_batches += 1
        self.stats.bar_rows += len(batch.symbols)

    def _on_broker_event(self, event: Event) -> None:
        """Broker reports arrive here on the loop thread; the order manager owns them."""
        self.orders.on_report(event)

    def _on_bus_failure(self, failure: HandlerFailed) -> None:
        self._fatal = failure
        self.request_stop(f"handler failed: {failure}")

    def _on_component_failure(self, exc: BaseException) -> None:
        self._fatal = exc
        self.request_stop(f"component failed: {exc!r}")

    def _on_risk_tick(self, tick: RiskTick) -> None:
        # Status is for operators: at most once a wall second, however fast the replay.
        now = time.monotonic()
        if now - self._status_written >= 1.0:
            self._status_written = now
            self.write_status()

    @property
    def ready(self) -> bool:
        """True once the books are reconciled with the broker (the gate denies
        ``RECONCILING`` while False)."""
        return self.reconciler.ready

    # -- run -----------------------------------------------------------------------------

    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            log.info("daemon.stopping", reason=reason)
            self._stop.set()

    async def run(self) -> int:
        self._announce()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        # KILL_SWITCH in the environment halts before anything connects.
        self.killswitch.check_env()
        self.market.warm()
        self.killswitch.install_signal_handler(loop)
        try:
            async with contextlib.AsyncExitStack() as stack:
                # The journal is entered first so it is closed (flushed) last.
                if self.journal is not None:
                    await stack.enter_async_context(self.journal)
                # Runs after the broker has closed its streams (every report it handed
                # over is applied) and before the journal closes: the books are final.
                stack.push_async_callback(self._final_books)
                for component in (self.broker, self.orders, self.reconciler, self.control,
                                  self._live_feed()):
                    await stack.enter_async_context(component)
                if self.mqtt is not None:  # last in, first out: ingress stops first
                    await stack.enter_async_context(self.mqtt)
                await self._start_books()
                # Everything built at start-up lives all day: move it out of the cyclic GC's
                # way (full collections over it cost tens of ms on the hot path).
                gc.collect()
                gc.freeze()
                tasks = self._start_tasks()
                self.notifier.ready(f"trading {self.settings.broker.kind}")
                log.info("daemon.ready", broker=self.broker.name, state_dir=str(self.state_dir))
                await self._stop.wait()
                await self._shutdown(tasks)
        finally:
            self.notifier.stopping()
            self.notifier.close()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        return 1 if self._fatal is not None else 0

    def _announce(self) -> None:
        d = self.settings.daemon
        if d.mode == "live":
            log.warning("daemon.LIVE_TRADING", mode="live", broker=self.settings.broker.kind,
                        message="LIVE TRADING WITH REAL MONEY IS ENABLED")
        log.info("daemon.start", mode=d.mode, broker=self.settings.broker.kind,
                 execution_mode=d.execution_mode, feed=self.settings.feed.source,
                 replay=str(self.settings.feed.replay or "demo"), speed=self.settings.feed.speed,
                 state_dir=str(d.state_dir), pid=os.getpid())

    def _live_feed(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Live bars enter through the inbox, coalesced if the bus falls behind."""
        if self.settings.feed.source != "alpaca":
            return contextlib.nullcontext()
        from brokers.alpaca import AlpacaBarFeed

        return AlpacaBarFeed(self.settings.broker.alpaca, symbols=self.settings.feed.symbols,
                             on_batch=self.inbox.put_bars)

    async def _refresh_market_clock(self) -> None:
        """The gate prefers the broker's clock for MARKET_CLOSED when the broker has one."""
        try:
            self.market.set_broker_clock(await self.broker.clock())
        except Exception as exc:  # a failed clock read keeps the calendar in charge
            log.warning("market.clock_failed", error=repr(exc))

    def _on_reconcile_tick(self, tick: ReconcileTick) -> None:
        if not self.replaying:
            self._spawn(self._refresh_market_clock(), "market.clock")

    async def _start_books(self) -> None:
        """Rebuild the session from the journal and reconcile it with the broker (the
        source of truth for cash and positions) before any signal is accepted. The
        reconciler's ``ready`` (``BrokerStatusChanged``) is what lets the gate stop
        denying RECONCILING."""
        if not self.replaying:
            await self._refresh_market_clock()
        if self.journal is None:
            account = await self.broker.account()
            self.portfolio.restore(account.cash, await self.broker.positions())
            await self.reconciler.reconcile("start", gate=True, startup=True)
        else:
            self.journal.append("SessionStarted", {"pid": os.getpid(),
                                                   "mode": self.settings.daemon.mode,
                                                   "broker": self.broker.name}, durable=True)
            self.recovered = await recover(
                journal=self.journal, broker=self.broker, orders=self.orders,
                portfolio=self.portfolio, stats=self.stats, marker=self.marker,
                reconciler=self.reconciler, clock=self.clock, modes=self.modes)
            self._restore_risk(self.recovered)
        self.gate.invalidate()
        log.info("portfolio.restored", cash=str(self.portfolio.cash),
                 equity=str(self.portfolio.equity()), positions=len(self.portfolio.positions))

    def _restore_risk(self, recovered: Recovered) -> None:
        """A halt survives a restart (the equity marks were restored by recovery)."""
        was = recovered.trading_state
        if was and was != str(self.risk_state.state):
            self.risk_state.request(TradingState(was), who="recovery",
                                    why=f"trading state before the restart was {was}")

    def _start_tasks(self) -> list[asyncio.Task[None]]:
        tasks = [
            self._task(self._pump(), "bus.pump"),
            self._task(self.notifier.watchdog(), "sdnotify.watchdog"),
            self._task(self.killswitch.watch(), "risk.kill_switch"),
        ]
        if self.orders.worker is not None:
            self.orders.worker.add_done_callback(self._on_task_done)
        if self.replaying:
            tasks.append(self._task(self._replay(), "feed.replay"))
        else:
            tasks.append(self._task(self._tick_timers(), "timers"))
        return tasks

    def _task(self, coro: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._on_task_done)
        return task

    def _on_task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("daemon.task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)
            self._fatal = exc
            self.request_stop(f"task {task.get_name()} failed")

    async def _pump(self) -> None:
        while True:
            self.route(await self.inbox.get())

    def route(self, msg: Message) -> None:
        if isinstance(msg, OrderEvent | BrokerStatusChanged):
            self.orders.on_report(msg)
        elif isinstance(msg, BarBatch):
            self.on_bar_batch(msg)
        elif isinstance(msg, Event):
            self.bus.publish(msg)

    def on_bar_batch(self, batch: BarBatch) -> None:
        self.bus.publish(batch)
        self.timers.check()

    async def _replay(self) -> None:
        tape = self._tape()
        pacer = Pacer(self.settings.feed.speed)
        assert isinstance(self.clock, ReplayClock)
        interval = tape.interval
        log.info("feed.replay_start", batches=len(tape), rows=tape.rows,
                 symbols=len(tape.symbols))
        resume = self.recovered.resume_after if self.recovered else None
        skipped = 0
        for batch in tape.batches():
            if self._stop.is_set():
                return
            if resume is not None and batch.ts + interval <= resume:
                skipped += 1  # journaled before a restart: this session already saw it
                continue
            if skipped:
                log.info("feed.replay_resume", skipped=skipped, at=batch.ts.isoformat())
                skipped = 0
            await pacer.wait_for(batch.ts)
            self.clock.set(batch.ts + interval)
            self.on_bar_batch(batch)
            # Let this batch's orders reach the broker before the next bar exists, and
            # let the other tasks (pump, control socket, watchdog) run.
            await self.orders.drained()
            for observer in self.after_batch:
                await observer(batch)
            await asyncio.sleep(0)
        log.info("feed.replay_done", batches=self.stats.bar_batches)
        self.request_stop("replay finished")

    def _tape(self) -> BarTape:
        path = self.settings.feed.replay
        if path is None:
            from signals import demodata

            path = self.state_dir / "demo_day.csv"
            if not path.exists():
                demodata.write(path, days=1)
        return BarTape.from_csv(path)

    async def _tick_timers(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.timers.check()

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        grace = self.settings.daemon.shutdown_grace_secs
        for t in tasks:
            if t.get_name() == "feed.replay":
                t.cancel()
        try:
            # In-flight work finishes within the bound: orders reach the broker, and
            # market orders and unacknowledged ones get their outcome.
            async with asyncio.timeout(grace):
                await self.orders.settled(market=not self.replaying)
        except TimeoutError:
            log.warning("daemon.shutdown_timeout", grace_secs=grace,
                        in_flight=self.orders.in_flight(market=not self.replaying))
        for t in [*tasks, *self._side_tasks]:
            t.cancel()
        await asyncio.gather(*tasks, *self._side_tasks, return_exceptions=True)

    async def _final_books(self) -> None:
        await asyncio.sleep(0)  # reports scheduled onto the loop while the broker closed
        # Books never confirmed with the broker (a failed start) are not the account's.
        if self.journal is not None and self.journal.is_open and self.recovered is not None:
            now = self.clock.now()
            self.marker.mark(now)
            self.journal.append("BooksSnapshot", books_snapshot(self.portfolio), ts=now)
            self.journal.append("SessionStopped", {"reason": self._stop_reason}, ts=now,
                                durable=True)
        self.write_status()
        log.info("daemon.session_summary", reason=self._stop_reason, **self.summary())

    # -- status --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        p = self.portfolio
        return {
            **self.stats.as_dict(),
            "open_orders": len(self.orders.open_orders()),
            "cash": str(p.cash),
            "equity": str(p.equity().quantize(Decimal("0.01"))),
            "realized_pnl": str(p.realized_pnl().quantize(Decimal("0.01"))),
            "unrealized_pnl": str(p.unrealized_pnl().quantize(Decimal("0.01"))),
            "pnl": str(self.marker.session_pnl(p.equity()).quantize(Decimal("0.01"))),
        }

    def status(self) -> dict[str, Any]:
        return {
            "trading_state": self.risk_state.snapshot()["state"],
            "ready": self.ready,
            "risk": self.risk_state.snapshot(),
            "execution_mode": str(self.modes.mode),
            "mode": self.settings.daemon.mode,
            "broker": self.broker.name,
            "clock": self.clock.now().isoformat(),
            **self.portfolio.snapshot(),
            "open_orders": [
                {"client_order_id": o.client_order_id, "symbol": o.symbol, "side": str(o.side),
                 "qty": o.qty, "filled_qty": o.filled_qty, "status": str(o.status)}
                for o in self.orders.open_orders()
            ],
            "counters": {**self.stats.as_dict(), "orders_today": self.orders.orders_today(),
                         **self.marker.counters()},
        }

    async def _ctl_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"running": True, **self.status()}

    def write_status(self) -> None:
        """Atomically write the last known status, for ``tradingd status`` when stopped."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps(self.status(), indent=2, default=str))
        tmp.replace(self.state_dir / STATUS_FILE)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / STATUS_FILE
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def install_uvloop() -> Callable[..., Any]:
    """The loop runner: uvloop when installed, else asyncio."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


__all__ = ["Daemon", "install_uvloop", "read_status"]
