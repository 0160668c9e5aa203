"""A small daemon-like wiring of the real journal, order manager, portfolio, reconciler
and recovery on a real bus, around a ``FakeBroker``, for recovery/reconcile tests."""

from __future__ import annotations

from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path

from engine.execution import OrderManager
from engine.journal import JOURNAL_FILE, Journal
from engine.reconcile import Reconciler
from engine.recovery import EquityMarker, Recovered, recover
from engine.stats import SessionStats
from kernel.broker import Broker
from kernel.bus import Bus
from kernel.clock import Clock, ReplayClock
from kernel.events import (
    Event,
    OrderFilled,
    ReconciliationChanged,
    SubmitOrder,
    TradingStateChanged,
)
from portfolio import Portfolio
from risk.modes import ExecutionModes
from risk.state import TradingStatus
from tests.daemon.fake_broker import T0, FakeBroker


class Session:
    """One daemon lifetime over ``state_dir`` and ``broker``; ``await start()``/``stop()``.

    A ``FakeBroker`` gets its sink connected here; any other broker must be built with
    ``sink=session.report`` (e.g. the Alpaca adapter, with ``clock=WallClock()``).
    """

    def __init__(self, state_dir: Path, broker: Broker, *, clock: Clock | None = None,
                 confirm_delay: float = 0.0, request_delay: float = 0.5,
                 retain_done: int = 1000) -> None:
        self.broker = broker
        self.clock = clock or ReplayClock(T0)
        self.events: list[Event] = []
        self.bus = Bus()
        self.journal = Journal(state_dir / JOURNAL_FILE, clock=self.clock)
        self.portfolio = Portfolio(Decimal(100_000), publish=self.bus.publish)
        self.orders = OrderManager(broker, clock=self.clock, publish=self.bus.publish,
                                   on_intent=self.journal.record_intent,
                                   retain_done=retain_done)
        self.stats = SessionStats()
        self.status = TradingStatus(clock=self.clock, publish=self.bus.publish)
        self.modes = ExecutionModes(clock=self.clock, publish=self.bus.publish)
        self.reconciler = Reconciler(broker, orders=self.orders, portfolio=self.portfolio,
                                     clock=self.clock, publish=self.bus.publish,
                                     journal=self.journal, state=self.status,
                                     confirm_delay=confirm_delay, grace_secs=30,
                                     request_delay=request_delay)
        self.marker = EquityMarker(self.journal, self.portfolio, self.stats, self.clock)
        self.journal.attach(self.bus)
        self.stats.attach(self.bus)
        self.reconciler.attach(self.bus)
        self.bus.subscribe(OrderFilled, self.portfolio.on_fill)
        self.bus.subscribe(Event, self.events.append)
        self.bus.subscribe(TradingStateChanged, self.status.on_state_changed)
        self.bus.subscribe(ReconciliationChanged, self.status.on_reconciliation)
        self.bus.register(SubmitOrder, self.orders.execute_submit)
        if isinstance(broker, FakeBroker):
            broker.sink = self.orders.on_report
        self._stack = AsyncExitStack()
        self.recovered: Recovered | None = None

    def report(self, event: Event) -> None:
        """The broker's sink: reports go to the order manager, as in the daemon."""
        self.orders.on_report(event)

    @property
    def state(self) -> str:
        return str(self.status.state)

    async def start(self) -> Recovered:
        await self._stack.enter_async_context(self.journal)
        if not isinstance(self.broker, FakeBroker):
            await self._stack.enter_async_context(self.broker)
        await self._stack.enter_async_context(self.orders)
        await self._stack.enter_async_context(self.reconciler)
        self.recovered = await recover(
            journal=self.journal, broker=self.broker, orders=self.orders,
            portfolio=self.portfolio, stats=self.stats, marker=self.marker,
            reconciler=self.reconciler, clock=self.clock, modes=self.modes)
        return self.recovered

    async def stop(self) -> None:
        await self.orders.drained()
        await self._stack.aclose()

    async def crash(self) -> None:
        """Die without flushing: buffered journal rows are lost, like a SIGKILL."""
        self.journal._buffer.clear()
        await self._stack.aclose()

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]
