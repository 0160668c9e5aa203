"""The daemon: builds a trading system per broker account, the signal sources and the
operator's interfaces from the settings, and runs them until a stop.

Shape::

    bar feed ─BarBatch─▶ daemon bus ─▶ every account's system (paper matching, marks, gate)
                                    └▶ signal sources ─SignalBatch─▶ router ─▶ account(s)
    MQTT signals ─SignalBatch (inbox)──────────────────────────────▲

Each account is a ``engine.system.TradingSystem`` built by ``build_system`` with its own
bus, broker, order manager, portfolio, gate, journal and reconciler. The daemon's own bus
carries what all accounts share: bar batches and signal batches before routing.

Drivers: a replay (``daemon.replay``) or the live feed with timers and, unless
``session.lifecycle`` is off, the trading day on the exchange calendar (``daemon.live``:
preflight, warm-up, open, closing, close, overnight, the next session). The supervisor
(``daemon.supervisor``) owns the tasks (``bus.pump``, ``feed.replay`` or ``timers``,
``risk.kill_switch``, ``sdnotify.watchdog``, each account's ``orders.submit``), the OS
signals and sd_notify. Any task failing, or any handler raising, stops the daemon in order:
stop taking signals, let in-flight orders reach the broker within ``shutdown_grace_secs``,
journal the final books, log the session summary, exit non-zero.

Start-up: every account's journal is recovered and reconciled with its broker before the
feed starts; the gate denies RECONCILING until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog

from config.settings import Settings
from daemon.control import ControlServer
from daemon.live import LiveDriver, ModelSlot, phase_name
from daemon.replay import ReplayDriver, open_tape
from daemon.startup import in_thread, settle_gc
from daemon.status_file import STATUS_FILE, read_status
from daemon.supervisor import Supervisor
from engine.accounts import account_specs
from engine.routing import Accounts
from engine.system import BrokerFactory, TradingSystem, build_system
from kernel import logging as dlog
from kernel.broker import Broker
from kernel.bus import Bus
from kernel.clock import Clock, ReplayClock, WallClock
from kernel.errors import BrokerAuthError, BrokerError, HandlerFailed
from kernel.events import (
    BarBatch,
    Event,
    KillSwitchSource,
    Message,
    ReconcileTick,
    SignalBatch,
)
from kernel.inbox import Inbox
from risk.market import MarketHours
from signals.demo import MomentumRule

if TYPE_CHECKING:
    from signals.mqtt import MqttBridge
    from signals.recorder import BarRecorder

log = structlog.get_logger("daemon.app")

EXIT_AUTH = 2  # the broker refused the keys: a configuration problem, not a crash
EXIT_STOPPED_CONNECTING = 0  # asked to stop before the broker could be reached
_AUTH_HINTS = {
    "alpaca": "check the broker keys (APCA_API_KEY_ID / APCA_API_SECRET_KEY, or the "
              "account's credentials) and that base_url matches them",
    "ib": "another API session holds this client id (broker.ib.client_id), or the "
          "Gateway/TWS refused the connection: check its API settings",
}


class Daemon:
    """One trading session. ``await Daemon(settings).run()`` returns the exit code."""

    def __init__(
        self,
        settings: Settings,
        *,
        broker: Broker | BrokerFactory | None = None,
        environ: dict[str, str] | None = None,
        journaling: bool = True,
    ) -> None:
        self.settings = settings
        self.environ = dict(os.environ if environ is None else environ)
        self.state_dir = settings.daemon.state_dir
        self.replaying = settings.feed.source == "replay"
        self.clock: Clock = ReplayClock() if self.replaying else WallClock()
        self.supervisor = Supervisor(self.environ)
        self.bus = Bus(on_failure=self._on_bus_failure)
        self.inbox = Inbox(settings.feed.queue_size)
        self.market = MarketHours()
        self.accounts = Accounts(settings.routing, settings.accounts)
        specs = account_specs(settings.accounts, broker=settings.broker, risk=settings.risk,
                              state_dir=self.state_dir, environ=self.environ)
        if broker is not None and len(specs) > 1:
            raise ValueError("an injected broker replaces the one account's broker")
        for spec in specs:
            for secret in (spec.broker.alpaca.key_id, spec.broker.alpaca.secret_key):
                if secret is not None:  # an account's own keys are scrubbed from logs too
                    dlog.register_secret(secret.get_secret_value())
            self.accounts.add(build_system(
                spec, daemon=settings.daemon, clock=self.clock, environ=self.environ,
                on_failure=self.supervisor.fail, broker=broker, journaling=journaling,
                market=self.market, totals=self.accounts if len(specs) > 1 else None,
                global_risk=settings.global_risk))
        self.systems = self.accounts.systems
        self.control = ControlServer(self.state_dir)
        self.replay = self._replay_driver() if self.replaying else None
        self._status_written = 0.0
        self.model_slot: ModelSlot | None = None
        self.recorder: BarRecorder | None = None
        self.feed: Any = None  # the live bar feed, once entered (warm-up history)
        self._wire()
        self.mqtt = self._mqtt_bridge()
        self.live = self._live_driver()

    # -- the primary account (single-account views, tests) ------------------------------

    @property
    def system(self) -> TradingSystem:
        return self.systems[0]

    @property
    def after_batch(self) -> list[Any]:
        """Observers awaited after each replayed batch (tests, benchmarks)."""
        assert self.replay is not None, "after_batch exists in a replay only"
        return self.replay.after_batch

    # -- wiring ------------------------------------------------------------------------

    def _wire(self) -> None:
        bus, cfg = self.bus, self.settings
        # Every account sees the bar first (paper fills, marks, the gate's prices), then
        # the signal sources score it; their signal batches are routed after that.
        bus.subscribe(BarBatch, self._to_systems)
        if cfg.signals.model.enabled:
            from signals.model import ModelSignalSource  # imports xgboost: only when used

            self.model = ModelSignalSource(cfg.signals.model, publish=bus.publish,
                                           clock=self.clock)
            self.model_slot = ModelSlot(self.model)  # a retrain may swap the source
            bus.subscribe(BarBatch, self.model_slot.on_bars)
            if cfg.signals.model.retrain and not self.replaying:
                from signals.recorder import BarRecorder

                self.recorder = BarRecorder(self.state_dir / "bars",
                                            keep_days=cfg.signals.model.retrain_days)
                bus.subscribe(BarBatch, self.recorder.on_bars)
        elif cfg.signals.demo.enabled:
            bus.subscribe(BarBatch, MomentumRule(cfg.signals.demo, bus.publish).on_bars)
        bus.subscribe(SignalBatch, self._route)
        if not self.replaying:
            # The gate prefers the broker's market clock; refreshed with reconciliation.
            for system in self.systems:
                system.bus.subscribe(ReconcileTick, self._clock_refresher(system))
        self.control.register("status", self._ctl_status)
        for name in self.system.controls:
            self.control.register(name, self._control_all(name))

    def _to_systems(self, batch: BarBatch) -> None:
        for system in self.systems:
            system.on_bars(batch)

    def _route(self, batch: SignalBatch) -> None:
        for system, share in self.accounts.route(batch):
            system.on_signals(share)

    @staticmethod
    def _clock_refresher(system: TradingSystem) -> Callable[[ReconcileTick], None]:
        def refresh(tick: ReconcileTick) -> None:
            system.spawn(system.refresh_market_clock(), "market.clock")

        return refresh

    def _control_all(self, name: str) -> Callable[[dict[str, Any]], Any]:
        """``name`` on one account (``{"account": ...}``) or on every account."""

        async def handler(args: dict[str, Any]) -> dict[str, Any]:
            account = args.get("account")
            if account is not None:
                system = self.accounts.get(str(account))
                if system is None:
                    raise KeyError(f"no account {account!r} (accounts: {self.accounts.names})")
                targets = [system]
            else:
                targets = self.systems
            replies = {s.name: await s.controls[name](args) for s in targets}
            if len(self.systems) == 1:
                return replies[self.system.name]
            return {"accounts": replies}

        return handler

    def _mqtt_bridge(self) -> MqttBridge | None:
        """External signals, events and control over MQTT, when configured."""
        cfg = self.settings.signals.mqtt
        if not cfg.enabled:
            return None
        from signals.mqtt import MqttBridge

        bridge = MqttBridge(cfg, clock=self.clock, bus=self.system.bus, inbox=self.inbox,
                            control=self.control.handlers, orders=self.system.orders.orders,
                            trading_state=str(self.system.risk_state.state),
                            on_failure=self.supervisor.fail)
        for system in self.systems[1:]:
            bridge.follow(system.bus)
        return bridge

    def _live_driver(self) -> LiveDriver | None:
        """The trading day of a live session (``daemon.live``), unless turned off."""
        if self.replaying or not self.settings.session.lifecycle:
            return None
        history = None
        if self.settings.feed.source == "alpaca":
            async def history(symbols: list[str], start: Any, end: Any) -> list[BarBatch]:
                if self.feed is None:
                    return []
                batches: list[BarBatch] = await self.feed.warmup_bars(symbols, start, end)
                return batches

        return LiveDriver(self.settings, systems=self.systems, clock=self.clock,
                          publish=self.bus.publish, environ=self.environ,
                          on_failure=self.supervisor.fail,
                          on_finished=self.supervisor.request_stop, history=history,
                          model=self.model_slot, recorder=self.recorder)

    def _replay_driver(self) -> ReplayDriver:
        assert isinstance(self.clock, ReplayClock)
        return ReplayDriver(open_tape(self.settings.feed, self.state_dir),
                            speed=self.settings.feed.speed, clock=self.clock,
                            on_batch=self.on_bar_batch, drained=self.drained,
                            stopped=self.supervisor.stopped,
                            on_finished=self.supervisor.request_stop)

    def _on_bus_failure(self, failure: HandlerFailed) -> None:
        self.supervisor.fail(failure)

    @property
    def ready(self) -> bool:
        """True once every account's books are reconciled with its broker."""
        return all(s.ready for s in self.systems)

    @property
    def session_phase(self) -> str | None:
        """The lifecycle's phase (``open``, ``closing``, ...), None without one."""
        return phase_name(self.live)

    def request_stop(self, reason: str) -> None:
        self.supervisor.request_stop(reason)

    # -- run -----------------------------------------------------------------------------

    async def run(self) -> int:
        """Run the session; the exit code: 0 stopped in order, 1 a component failed,
        2 the broker refused the keys (or gave up connecting, when configured to)."""
        self._announce()
        sup = self.supervisor
        sup.install_signals(self._on_sigusr1)
        sup.start(sup.notifier.watchdog(), "sdnotify.watchdog")  # fed while connecting too
        # KILL_SWITCH in the environment halts before anything connects.
        for system in self.systems:
            system.killswitch.check_env()
        # daemon/startup.py: the calendar builds on a thread while the broker connects.
        calendar = in_thread(self.market.warm)
        if self.replay is not None:
            self.replay.start_clock()
        try:
            async with contextlib.AsyncExitStack() as stack:
                # Runs last: once every account has journaled its final books.
                stack.callback(self._log_summary)
                for system in self.systems:
                    if system.journal is not None:  # opened once, kept across retries
                        await stack.enter_async_context(system.journal)
                for system in self.systems:
                    if not await self._connect(stack, system):
                        return EXIT_STOPPED_CONNECTING if sup.fatal is None else 1
                for component in (self.control, self._live_feed()):
                    entered = await stack.enter_async_context(component)
                self.feed = entered
                # Built before READY, and before MQTT says online: a burst of signals must
                # not wait behind it in a full inbox (QUEUE_FULL) for the pump to start.
                await calendar
                if self.mqtt is not None:  # last in, first out: ingress stops first
                    await stack.enter_async_context(self.mqtt)
                # Everything built at start-up lives all day: move it out of the cyclic GC's
                # way (full collections over it cost tens of ms on the hot path).
                settle_gc()  # daemon/startup.py: one collection, freeze, thresholds back
                self._start_tasks()
                sup.ready(f"trading {self.settings.broker.kind}")
                log.info("daemon.ready", accounts=self.accounts.names,
                         state_dir=str(self.state_dir))
                if self.live is not None:  # the trading day, once the books are reconciled
                    await stack.enter_async_context(self.live)
                await sup.stopped.wait()
                await self._shutdown()
        except BrokerAuthError:
            return EXIT_AUTH  # logged by _connect
        finally:
            sup.close()
        return 1 if sup.fatal is not None else 0

    async def _connect(self, stack: contextlib.AsyncExitStack, system: TradingSystem) -> bool:
        """Enter ``system`` (journal, broker, order manager, reconciler) and rebuild its
        books, retrying with backoff while the broker cannot be reached. False if a stop
        was asked meanwhile, or the configured attempts ran out (``supervisor.fatal``)."""
        cfg, sup = self.settings.daemon, self.supervisor
        attempt = 0
        while not sup.stopped.is_set():
            attempt += 1
            inner = contextlib.AsyncExitStack()
            try:
                await inner.enter_async_context(system.connection())
                if not self.replaying:
                    await system.refresh_market_clock()
                await system.start_books()
            except BrokerAuthError as exc:
                await inner.aclose()
                # Refused credentials (or, IB, a client id another session holds) do not
                # get better by retrying: one clear line, exit 2.
                log.error("broker.auth_failed", account=system.name,
                          broker=system.spec.broker.kind, error=str(exc),
                          detail=_AUTH_HINTS.get(system.spec.broker.kind, ""))
                raise
            except (BrokerError, OSError, TimeoutError) as exc:
                await inner.aclose()
                if cfg.connect_attempts and attempt >= cfg.connect_attempts:
                    log.error("broker.unreachable", account=system.name, cause=str(exc),
                              attempt=attempt, final=True)
                    sup.fail(exc)
                    return False
                delay = min(cfg.connect_backoff_secs * 2 ** (attempt - 1),
                            cfg.connect_backoff_max_secs)
                log.warning("broker.unreachable", account=system.name,
                            broker=system.spec.broker.kind, cause=str(exc), attempt=attempt,
                            retry_in_secs=delay)
                sup.notifier.waiting(f"waiting for broker {system.name}: {exc}", delay + 30)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sup.stopped.wait(), delay)
                continue
            await stack.enter_async_context(inner)
            if system.worker is not None:
                sup.watch(system.worker)
            if attempt > 1:
                log.info("broker.connected", account=system.name, attempts=attempt)
            return True
        return False

    def _on_sigusr1(self) -> None:
        for system in self.systems:
            system.killswitch.engage(KillSwitchSource.SIGNAL, "SIGUSR1 received")

    def _announce(self) -> None:
        d = self.settings.daemon
        if d.mode == "live":
            log.warning("daemon.LIVE_TRADING", mode="live", broker=self.settings.broker.kind,
                        message="LIVE TRADING WITH REAL MONEY IS ENABLED")
        log.info("daemon.start", mode=d.mode, broker=self.settings.broker.kind,
                 accounts={s.name: s.spec.broker.kind for s in self.systems},
                 execution_mode=d.execution_mode, feed=self.settings.feed.source,
                 replay=str(self.settings.feed.replay or "demo"), speed=self.settings.feed.speed,
                 state_dir=str(d.state_dir), pid=os.getpid())

    def _live_feed(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Live bars enter through the inbox, coalesced if the bus falls behind."""
        if self.settings.feed.source != "alpaca":
            return contextlib.nullcontext()
        from brokers.alpaca import AlpacaBarFeed

        # The data feed uses the first Alpaca account's keys and URLs.
        alpaca = next((s.spec.broker.alpaca for s in self.systems
                       if s.spec.broker.kind == "alpaca"), self.settings.broker.alpaca)
        return AlpacaBarFeed(alpaca, symbols=self.settings.feed.symbols,
                             on_batch=self.inbox.put_bars)

    def _start_tasks(self) -> None:
        sup = self.supervisor
        sup.start(self._pump(), "bus.pump")
        for system in self.systems:
            sup.start(system.killswitch.watch(), f"risk.kill_switch[{system.name}]")
        if self.replay is not None:
            resume = min((s.recovered.resume_after for s in self.systems
                          if s.recovered is not None and s.recovered.resume_after is not None),
                         default=None)
            sup.start(self.replay.run(resume), "feed.replay")
        else:
            sup.start(self._tick_timers(), "timers")

    async def _pump(self) -> None:
        while True:
            self.route(await self.inbox.get())

    def route(self, msg: Message) -> None:
        if isinstance(msg, BarBatch):
            self.on_bar_batch(msg)
        elif isinstance(msg, Event):
            self.bus.publish(msg)

    def on_bar_batch(self, batch: BarBatch) -> None:
        self.bus.publish(batch)
        self.check_timers()

    def check_timers(self) -> None:
        fired = 0
        for system in self.systems:
            fired += system.check_timers()
        if fired:
            self._maybe_write_status()

    async def drained(self) -> None:
        for system in self.systems:
            await system.orders.drained()

    async def _tick_timers(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            self.check_timers()

    async def _shutdown(self) -> None:
        sup = self.supervisor
        sup.cancel("feed.replay")
        grace = self.settings.daemon.shutdown_grace_secs
        market = not self.replaying
        try:
            # In-flight work finishes within the bound: orders reach the broker, and
            # market orders and unacknowledged ones get their outcome.
            async with asyncio.timeout(grace):
                for system in self.systems:
                    await system.settled(market=market)
        except TimeoutError:
            log.warning("daemon.shutdown_timeout", grace_secs=grace,
                        in_flight=sum(s.in_flight(market=market) for s in self.systems))
        for system in self.systems:
            system.stop_reason = sup.stop_reason
        await sup.cancel_all()

    def _log_summary(self) -> None:
        if not any(s.started for s in self.systems):
            log.info("daemon.stopped_before_start", reason=self.supervisor.stop_reason)
            return
        self.write_status()
        log.info("daemon.session_summary", reason=self.supervisor.stop_reason,
                 **self.summary())

    # -- status --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        if len(self.systems) == 1:
            return self.system.summary()
        return {**self.accounts.total(), "accounts": {s.name: s.summary() for s in self.systems},
                "route_refused": dict(self.accounts.refused)}

    def status(self) -> dict[str, Any]:
        """The single account's document (its keys as they always were); with several
        accounts, the totals at the top, the most restrictive trading state, and each
        account's document under ``accounts``."""
        common: dict[str, Any] = {"mode": self.settings.daemon.mode,
                                  "clock": self.clock.now().isoformat()}
        if self.live is not None:
            common["session"] = self.live.status()
        if len(self.systems) == 1:
            return {**self.system.status(), **common}
        accounts = {s.name: s.status() for s in self.systems}
        rank = {"ACTIVE": 0, "REDUCING": 1, "HALTED": 2}
        worst = max((a["trading_state"] for a in accounts.values()), key=lambda x: rank[x])
        return {"trading_state": worst, "ready": self.ready, **common,
                **self.accounts.total(), "accounts": accounts,
                "route_refused": dict(self.accounts.refused)}

    async def _ctl_status(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"running": True, **self.status()}

    def _maybe_write_status(self) -> None:
        # Status is for operators: at most once a wall second, however fast the replay.
        now = asyncio.get_running_loop().time()
        if now - self._status_written >= 1.0:
            self._status_written = now
            self.write_status()

    def write_status(self) -> None:
        """Atomically write the last known status, for ``tradingd status`` when stopped."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / (STATUS_FILE + ".tmp")
        tmp.write_text(json.dumps(self.status(), indent=2, default=str))
        tmp.replace(self.state_dir / STATUS_FILE)


def install_uvloop() -> Callable[..., Any]:
    """The loop runner: uvloop when installed, else asyncio."""
    try:
        import uvloop

        return uvloop.run
    except ImportError:
        return asyncio.run


__all__ = ["Daemon", "install_uvloop", "read_status"]
