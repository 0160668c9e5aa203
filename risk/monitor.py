"""The risk monitor: loss limits and stop-losses, checked on every ``RiskTick`` (10 s).

On each tick it marks equity against the start of day, the peak and the session start
(``EquityMarks``, shared with the gate; the journal persists ``marks.snapshot()``), and:

* daily loss >= ``max_daily_loss``: state REDUCING (no new risk, exits allowed);
* session drawdown >= ``session_drawdown``: state REDUCING;
* drawdown from peak >= ``max_drawdown``: state HALTED;
* a position ``stop_loss_pct`` or more against its average cost: a reduce-only market
  exit (``origin="risk"``) through the gate, re-sent on a later tick only if the
  previous exit is no longer working and the position is still there.

The state only ever escalates here; going back to ACTIVE is the operator's ``resume``.
Each breach is logged ``risk.breach`` with the numbers and raised as an ``AlertRaised``.

Events published: ``AlertRaised``, ``TradingStateChanged`` (via ``TradingStatus``).
Commands sent: ``PlaceOrder``.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import structlog

from kernel.clock import Clock
from kernel.events import AlertRaised, Event, OrderIntent, PlaceOrder, PositionChanged, RiskTick
from kernel.ids import client_order_id
from kernel.model import OrderSide, OrderType, TimeInForce
from kernel.time import trading_day
from kernel.views import Books
from risk.config import RiskConfig
from risk.gate import OrderBook
from risk.marks import EquityMarks
from risk.reasons import ReasonCode
from risk.state import TradingState, TradingStatus

log = structlog.get_logger("risk.monitor")

_SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}


class RiskMonitor:
    """Watches P&L and positions; escalates the trading state and sends stop-loss exits."""

    def __init__(
        self,
        cfg: RiskConfig,
        *,
        clock: Clock,
        portfolio: Books,
        orders: OrderBook,
        state: TradingStatus,
        marks: EquityMarks,
        publish: Callable[[Event], None],
        send: Callable[[PlaceOrder], None],
    ) -> None:
        self._cfg = cfg
        self._clock = clock
        self._portfolio = portfolio
        self._orders = orders
        self._state = state
        self.marks = marks
        self._publish = publish
        self._send = send
        self._stop = Decimal(repr(cfg.stop_loss_pct))
        self._stop_f = cfg.stop_loss_pct
        self._limits = (
            (ReasonCode.MAX_DRAWDOWN, Decimal(repr(cfg.max_drawdown)), TradingState.HALTED),
            (ReasonCode.DAILY_LOSS_LIMIT, Decimal(repr(cfg.max_daily_loss)),
             TradingState.REDUCING),
            (ReasonCode.SESSION_DRAWDOWN, Decimal(repr(cfg.session_drawdown)),
             TradingState.REDUCING),
        )
        self._exits: dict[str, str] = {}
        self.ticks = 0

    def on_tick(self, tick: RiskTick) -> None:
        self.ticks += 1
        equity = self._portfolio.equity()
        self.marks.observe(equity, trading_day(tick.ts))
        daily, drawdown, session = self.marks.losses(equity)
        observed = {ReasonCode.MAX_DRAWDOWN: drawdown, ReasonCode.DAILY_LOSS_LIMIT: daily,
                    ReasonCode.SESSION_DRAWDOWN: session}
        for rule, limit, target in self._limits:
            if observed[rule] >= limit:
                self._breach(rule, limit, observed[rule], equity=equity, target=target,
                             tick=tick)
        self._check_stops(tick)

    def on_position_changed(self, event: PositionChanged) -> None:
        if event.qty == 0:
            self._exits.pop(event.symbol, None)

    def _breach(self, rule: ReasonCode, limit: Decimal, value: Decimal, *, equity: Decimal,
                target: TradingState, tick: RiskTick) -> None:
        if _SEVERITY[self._state.state] >= _SEVERITY[target]:
            return
        m = self.marks
        log.error("risk.breach", rule=str(rule), limit=str(limit),
                  observed=str(value.quantize(Decimal("0.000001"))), equity=str(equity),
                  start_of_day=str(m.start_of_day), peak=str(m.peak),
                  session_start=str(m.session_start), action=str(target))
        self._publish(AlertRaised(name=f"risk.{rule}", severity="critical", ts=tick.ts,
                                  detail={"limit": str(limit), "observed": str(value),
                                          "equity": str(equity), "action": str(target)}))
        self._state.request(target, who="risk_monitor",
                            why=f"{rule}: {value:.4%} >= {limit:.2%}")

    def _check_stops(self, tick: RiskTick) -> None:
        # Only the positions that may be that far against their cost are marked exactly.
        for v in self._portfolio.adverse(self._stop_f):
            if v.last_price is None or v.avg_price <= 0:
                continue
            adverse = (v.avg_price - v.last_price) / v.avg_price
            if v.qty < 0:
                adverse = -adverse
            if adverse < self._stop or self._exit_working(v.symbol):
                continue
            log.warning("risk.stop_loss", symbol=v.symbol, qty=v.qty, avg_price=str(v.avg_price),
                        last_price=str(v.last_price), adverse=str(adverse.quantize(
                            Decimal("0.000001"))), limit=str(self._stop))
            self._send_exit(v.symbol, v.qty, v.last_price, tick)

    def _exit_working(self, symbol: str) -> bool:
        cid = self._exits.get(symbol)
        order = self._orders.orders.get(cid) if cid else None
        return order is not None and order.is_open

    def _send_exit(self, symbol: str, qty: int, price: Decimal, tick: RiskTick) -> None:
        cid = client_order_id("rk", "stop", symbol, tick.ts.isoformat())
        self._exits[symbol] = cid
        intent = OrderIntent(
            client_order_id=cid, symbol=symbol,
            side=OrderSide.SELL if qty > 0 else OrderSide.BUY, qty=abs(qty),
            order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY, ts=tick.ts,
            reference_price=price, reduce_only=True, origin="risk",
        )
        self._send(PlaceOrder(intent))
