"""One daemon lifetime of one account, for recovery and reconciliation tests.

The account is a ``TradingSystem`` built by ``engine.system.build_system``, as the daemon
builds it (journal in ``state_dir``, order manager, portfolio, gate, reconciler...),
around a broker that outlives it: a ``FakeBroker`` (a second ``Session`` on the same
state directory and broker is the daemon restarting), or a ``BrokerFactory`` handed the
system's report sink (``lambda sink: AlpacaBroker(cfg, clock=..., sink=sink)``).
"""

from __future__ import annotations

from pathlib import Path

from brokers.config import BrokerConfig
from brokers.fake import FakeBroker
from engine.config import DaemonConfig
from engine.execution import OrderManager
from engine.journal import Journal
from engine.reconcile import Reconciler
from engine.recovery import EquityMarker, Recovered
from engine.stats import SessionStats
from engine.system import BrokerFactory, SystemSpec, TradingSystem, build_system
from kernel.broker import Broker
from kernel.bus import Bus
from kernel.clock import Clock, ReplayClock
from kernel.events import Event
from portfolio import Portfolio
from risk.config import RiskConfig
from risk.modes import ExecutionModes
from risk.state import TradingStatus
from tests.kit import T0


class Session:
    """``await start()`` enters the system and rebuilds its books from the journal and
    the broker (``TradingSystem.start_books``); ``stop()`` leaves it in order; ``crash()``
    dies without flushing. ``confirm_delay``, ``request_delay`` and ``retain_done`` are
    the reconciler's and order manager's settings (``DaemonConfig``)."""

    def __init__(self, state_dir: Path, broker: FakeBroker | BrokerFactory, *,
                 risk: RiskConfig | None = None, clock: Clock | None = None,
                 confirm_delay: float = 0.0, request_delay: float = 0.5,
                 retain_done: int = 1000) -> None:
        self.clock = clock or ReplayClock(T0)
        self.events: list[Event] = []
        daemon = DaemonConfig(state_dir=state_dir, reconcile_confirm_secs=confirm_delay,
                              reconcile_request_delay_secs=request_delay,
                              orders_retained=retain_done)
        self.system: TradingSystem = build_system(
            SystemSpec(name="fake", broker=BrokerConfig(), risk=risk or RiskConfig(),
                       state_dir=state_dir),
            daemon=daemon, clock=self.clock, environ={},
            broker=broker.connect if isinstance(broker, FakeBroker) else broker)
        self.bus.subscribe(Event, self.events.append)

    # -- the system's parts ----------------------------------------------------------------

    @property
    def broker(self) -> Broker:
        return self.system.broker

    @property
    def bus(self) -> Bus:
        return self.system.bus

    @property
    def journal(self) -> Journal:
        assert self.system.journal is not None
        return self.system.journal

    @property
    def orders(self) -> OrderManager:
        return self.system.orders

    @property
    def portfolio(self) -> Portfolio:
        return self.system.portfolio

    @property
    def reconciler(self) -> Reconciler:
        return self.system.reconciler

    @property
    def marker(self) -> EquityMarker:
        return self.system.marker

    @property
    def stats(self) -> SessionStats:
        return self.system.stats

    @property
    def status(self) -> TradingStatus:
        return self.system.risk_state

    @property
    def modes(self) -> ExecutionModes:
        return self.system.modes

    @property
    def recovered(self) -> Recovered | None:
        return self.system.recovered

    @property
    def state(self) -> str:
        """The trading state (ACTIVE, REDUCING, HALTED)."""
        return str(self.system.risk_state.state)

    def report(self, event: Event) -> None:
        """A broker report, as the broker's stream hands it to the system."""
        self.orders.on_report(event)

    # -- lifetime --------------------------------------------------------------------------

    async def start(self) -> Recovered:
        await self.system.__aenter__()
        await self.system.start_books()
        assert self.system.recovered is not None
        return self.system.recovered

    async def stop(self) -> None:
        await self.orders.drained()
        await self.system.__aexit__(None, None, None)

    async def crash(self) -> None:
        """Die without flushing: buffered journal rows are lost, like a SIGKILL (and the
        final books are not journaled, the journal being closed already)."""
        self.journal._buffer.clear()
        self.journal.close()
        await self.system.__aexit__(None, None, None)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]
