"""Signal -> target position -> order intent.

A signal asks for a target position: target notional = |strength| x max_position_pct x
equity when |strength| >= signal_threshold (else a target of zero), in whole shares,
long-only unless ``allow_shorts``. The order trades the difference between the target
and what is held plus what open orders are already working. Orders below
``min_order_notional`` are skipped; above ``max_order_notional`` they are capped. Every
skip and cap is a log event.

With ``orders_today`` (the order manager's counters) sizing also respects the gate's
order budget instead of proposing what the gate can only refuse: when a symbol has had
``max_orders_per_symbol_day`` orders (or the day ``max_orders_per_day``) its signals are
skipped; when one order is left, it is kept for an exit (an order that would grow the
position is skipped, ``EXIT_RESERVED``). A model rebalancing every minute would otherwise
ask, minute after minute, for orders the gate must deny. Such a skip is a decision for the
rest of the day: it is logged once per symbol, reason and New York day, and counted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import structlog

from kernel.events import OrderIntent, PlaceOrder, SignalBatch
from kernel.ids import client_order_id
from kernel.model import OrderSide, OrderType, Signal, TimeInForce, to_price
from kernel.time import trading_day
from risk.config import RiskConfig

log = structlog.get_logger("risk.sizing")


def target_qty(signal: Signal, equity: float | Decimal, cfg: RiskConfig) -> int:
    """Whole-share target position for a signal (signed)."""
    strength = signal.strength
    if abs(strength) < cfg.signal_threshold or signal.price <= 0:
        return 0
    if strength < 0 and not cfg.allow_shorts:
        return 0
    notional = abs(strength) * cfg.max_position_pct * float(equity)
    shares = math.floor(notional / signal.price + 1e-9)
    return shares if strength > 0 else -shares


class Sizer:
    """Turns each ``SignalBatch`` into ``PlaceOrder`` commands (one per symbol to trade).

    ``holding(symbol)`` must return the signed position plus the signed quantity still
    working in open orders, so a signal repeated while an order works adds nothing.
    """

    def __init__(
        self,
        cfg: RiskConfig,
        *,
        equity: Callable[[], Decimal],
        holding: Callable[[str], int],
        send: Callable[[PlaceOrder], None],
        prefix: str = "td",
        orders_today: Callable[[str | None], int] | None = None,
    ) -> None:
        self._cfg = cfg
        self._equity = equity
        self._holding = holding
        self._send = send
        self._prefix = prefix
        self._orders_today = orders_today
        self._told: set[tuple[str, str]] = set()  # (symbol, reason) logged today
        self._told_day = ""
        self.skipped = 0
        self.skips_by_reason: Counter[str] = Counter()

    def on_signals(self, batch: SignalBatch) -> None:
        # Targets need equity only to the share, so one float per batch does; the money
        # that reaches an order is Decimal.
        equity = float(self._equity())
        batch_id = f"{batch.source}:{batch.ts.isoformat()}"
        # One line per batch (a model scores every symbol each bar); the journal keeps
        # each signal.
        log.info("signal.received", source=batch.source, ts=batch.ts.isoformat(),
                 signals=len(batch.signals), equity=str(equity))
        intents = [i for sig in batch.signals
                   if (i := self.size(sig, equity, batch_id)) is not None]
        for intent in self._within_budget(intents):
            self._send(PlaceOrder(intent))

    def _within_budget(self, intents: list[OrderIntent]) -> list[OrderIntent]:
        """The intents of one batch the gate's rate limits leave room for: exits first,
        then the strongest signals (the gate takes ``max_orders_per_execution`` of one
        batch and ``max_orders_per_day`` a day). Unsizeable intents always go on: the
        gate names them INVALID_SIGNAL."""
        if self._orders_today is None:
            return intents
        cfg = self._cfg
        sized = [i for i in intents if i.qty > 0]
        day_left = cfg.max_orders_per_day - self._orders_today(None)
        room = max(0, min(cfg.max_orders_per_execution, day_left))
        if len(sized) <= room:
            return intents
        sized.sort(key=self._priority)
        skipped = sized[room:]
        reason = ("MAX_ORDERS_PER_EXECUTION" if room == cfg.max_orders_per_execution
                  else "MAX_ORDERS_PER_DAY")
        self.skipped += len(skipped)
        self.skips_by_reason[reason] += len(skipped)
        log.info("sizing.skip", reason=reason, batch_id=skipped[0].batch_id,
                 limit=cfg.max_orders_per_execution if reason == "MAX_ORDERS_PER_EXECUTION"
                 else cfg.max_orders_per_day, observed=len(sized), skipped=len(skipped),
                 symbols=[i.symbol for i in skipped[:10]],
                 detail="the gate would refuse them: exits and the strongest signals go first")
        keep = {id(i) for i in sized[:room]}
        return [i for i in intents if i.qty == 0 or id(i) in keep]

    def _priority(self, intent: OrderIntent) -> tuple[bool, float]:
        held = self._holding(intent.symbol)
        reduces = held != 0 and (held > 0) != (intent.side is OrderSide.BUY)
        strength = abs(intent.signal.strength) if intent.signal is not None else 0.0
        return (not reduces, -strength)

    def size(self, sig: Signal, equity: float | Decimal,
             batch_id: str | None = None) -> OrderIntent | None:
        cfg = self._cfg
        if not (math.isfinite(sig.strength) and math.isfinite(sig.price)) or sig.price <= 0:
            # Not sizeable; the gate names it INVALID_SIGNAL when it sees such a signal.
            return self._intent(sig, OrderSide.BUY, 0, batch_id, Decimal(0))
        holding = self._holding(sig.symbol)
        target = target_qty(sig, equity, cfg)
        delta = target - holding
        if delta == 0:
            return None
        qty = abs(delta)
        if self._orders_today is not None and self._over_budget(sig, holding, target):
            return None
        price = to_price(sig.price)
        if price * qty < cfg.min_order_notional:
            self.skipped += 1
            log.info("sizing.skip", symbol=sig.symbol, signal_id=sig.id, qty=qty,
                     notional=str(price * qty), reason="MIN_ORDER_NOTIONAL",
                     limit=str(cfg.min_order_notional))
            return None
        if price * qty > cfg.max_order_notional:
            capped = int(cfg.max_order_notional // price)
            log.info("sizing.capped", symbol=sig.symbol, signal_id=sig.id, qty=qty,
                     capped_qty=capped, limit=str(cfg.max_order_notional))
            qty = capped
            if qty == 0:
                return None
        side = OrderSide.BUY if delta > 0 else OrderSide.SELL
        return self._intent(sig, side, qty, batch_id, price)

    def _over_budget(self, sig: Signal, holding: int, target: int) -> bool:
        """True (and said) when the gate would refuse the order for the day's budget, or
        when it would spend a symbol's last order on anything but an exit."""
        assert self._orders_today is not None
        cfg = self._cfg
        day_total = self._orders_today(None)
        count = self._orders_today(sig.symbol)
        grows = abs(target) > abs(holding) or target * holding < 0
        if day_total >= cfg.max_orders_per_day:
            reason, limit, observed = "MAX_ORDERS_PER_DAY", cfg.max_orders_per_day, day_total
        elif count >= cfg.max_orders_per_symbol_day:
            reason, limit, observed = ("MAX_ORDERS_PER_SYMBOL_DAY",
                                       cfg.max_orders_per_symbol_day, count)
        elif grows and count == cfg.max_orders_per_symbol_day - 1:
            reason, limit, observed = "EXIT_RESERVED", cfg.max_orders_per_symbol_day, count
        else:
            return False
        self.skipped += 1
        self.skips_by_reason[reason] += 1
        self._say_once(sig, reason, limit, observed, held=holding, target=target)
        return True

    def _say_once(self, sig: Signal, reason: str, limit: int, observed: int, *, held: int,
                  target: int) -> None:
        day = trading_day(sig.ts)
        if day != self._told_day:
            self._told_day, self._told = day, set()
        key = ("*" if reason == "MAX_ORDERS_PER_DAY" else sig.symbol, reason)
        if key in self._told:
            return
        self._told.add(key)
        log.info("sizing.skip", symbol=sig.symbol, signal_id=sig.id, reason=reason,
                 limit=limit, observed=observed, held=held, target=target,
                 side=str(OrderSide.BUY if target > held else OrderSide.SELL),
                 detail=("the last order of the day is kept for an exit"
                         if reason == "EXIT_RESERVED" else
                         "the gate would refuse it: the rest of the day's signals for this "
                         "symbol are skipped, counted, not logged again"))

    def _intent(self, sig: Signal, side: OrderSide, qty: int, batch_id: str | None,
                price: Decimal) -> OrderIntent:
        return OrderIntent(
            client_order_id=client_order_id(self._prefix, sig.source, sig.id, sig.symbol),
            symbol=sig.symbol, side=side, qty=qty, order_type=OrderType.MARKET,
            time_in_force=TimeInForce.DAY, ts=sig.ts, reference_price=price,
            signal=sig, batch_id=batch_id,
        )
