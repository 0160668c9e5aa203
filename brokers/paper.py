"""The built-in paper broker: a simulated cash account that matches orders against bars.

The daemon calls ``on_bars`` with every bar batch *before* strategies see it, so every
order working at that moment was submitted before the batch and matches against it:

* market: this bar's open, moved against the order by ``slippage_bps``;
* limit buy: if ``low <= limit``, at ``min(open, limit)`` (sell: ``high >= limit``, at
  ``max(open, limit)``);
* stop buy: triggers if ``high >= stop`` and fills at ``max(open, stop)`` (sell: ``low <=
  stop`` at ``min(open, stop)``); no slippage is added to stop fills. A stop that
  triggered but could not fill completely (volume cap) fills at later bars' opens;
* stop_limit: triggers like a stop, then works as a limit. On the trigger bar it fills
  at ``min(trigger price, limit)`` for a buy if ``low <= limit`` (sell mirrored): OHLC
  cannot tell whether the bar came back to the limit after the trigger, so it assumes so.

Prices are exact decimals of the bar's floats (``to_price``) quantized to 0.0001
(half-even). Symbols missing from a batch, or with NaN prices, do not match. With
``max_fill_volume_pct`` > 0, all orders of a symbol share at most
``floor(pct x volume)`` shares per bar, in time priority (partial fills).

Time in force: ``ioc`` fills what it can on the first bar that carries its symbol and
cancels the rest; ``fok`` fills completely on that bar or is canceled; ``day`` expires
when a batch of a later New York date arrives (or on ``end_of_day()``); ``gtc`` works
until filled or canceled. There is no after-hours queueing: a day order belongs to the
New York date on which it was submitted.

Account: cash, long and short positions at average cost (the same arithmetic as
``portfolio.book.Portfolio``, so the daemon's books agree to the cent and beyond).
Commission per fill is ``max(commission_per_share x qty, min_commission)`` when
``commission_per_share`` > 0, else zero.

Buying power (a cash account, no margin)::

    buying_power = cash - market value of short positions - reservations of open buys

A buy is accepted only if its reservation fits: ``qty x price`` plus its commission,
where price is ``reference_price x (1 + slippage)`` for market, the limit for limit and
stop_limit, and ``max(reference_price, stop)`` for stop orders. Buys that cover a short
are checked in full (conservative). Sells are always accepted: the paper account allows
short selling (the daemon's own gate decides whether the strategy may be short). Short
proceeds stay in cash but are not spendable, because the short's market value is
subtracted. A fill that gaps above its reservation may take cash below zero.

Events reported through ``sink`` (always on the loop's thread): ``OrderNew`` (at once,
or ``ack_latency_ms`` later via ``loop.call_later``; a pending acknowledgement is sent
before any later event of its order), ``OrderFilled`` (execution id
``{broker_order_id}-{n}``), ``OrderCanceled``, ``OrderExpired``, ``OrderReplaced``.
With a ``store_path`` every state change is committed to SQLite before its events are
reported, so a restarted session continues the same account: cash, positions, orders
(working ones keep working), fills and id counters. Last closes of held symbols are
written with each commit and on close, not per bar (a crash may leave older marks).
Memory holds the working orders and the last ``retain_done`` ended ones; older orders
and every fill are read back from the store when asked for (``get_order``,
``fills_since``), so a long session does not grow. Without a store everything stays in
memory (tests).
"""

from __future__ import annotations

import asyncio
import math
from collections import OrderedDict
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

import structlog

from brokers._paper_rules import (
    book_fill,
    execution_price,
    next_new_york_midnight,
    reserve_price,
)
from brokers._paper_store import PaperOrder, PaperStore
from brokers.config import PaperConfig
from kernel.broker import BrokerFill, BrokerOrder, EventSink
from kernel.clock import Clock
from kernel.errors import BrokerRejected
from kernel.events import (
    BarBatch,
    Event,
    OrderCanceled,
    OrderExpired,
    OrderFilled,
    OrderIntent,
    OrderNew,
    OrderReplaced,
)
from kernel.logging import debug_enabled
from kernel.model import (
    AccountSnapshot,
    BrokerPosition,
    Fill,
    MarketClock,
    OrderSide,
    OrderType,
    Position,
    TimeInForce,
    to_price,
)
from kernel.orders import OPEN, TERMINAL, OrderStatus

log = structlog.get_logger("brokers.paper")

ZERO = Decimal(0)
_BPS = Decimal(10_000)
_NEEDS_LIMIT = frozenset({OrderType.LIMIT, OrderType.STOP_LIMIT})
_NEEDS_STOP = frozenset({OrderType.STOP, OrderType.STOP_LIMIT})
_FIRST_BAR_ONLY = frozenset({TimeInForce.IOC, TimeInForce.FOK})


class PaperBroker:
    """A simulated broker account behind the ``Broker`` protocol (see the module doc).

    Enter it (``async with``) before use: that opens and loads the store when
    ``store_path`` is given. Not thread-safe: call it from the event loop only.
    """

    name = "paper"

    def __init__(
        self, *, cfg: PaperConfig, clock: Clock, sink: EventSink, store_path: Path | None = None,
        retain_done: int = 1000,
    ) -> None:
        self._clock = clock
        self._sink = sink
        self._store_path = store_path
        self._store: PaperStore | None = None
        self._slip = cfg.slippage_bps / _BPS
        self._cps = cfg.commission_per_share
        self._min_commission = cfg.min_commission
        self._volume_pct = cfg.max_fill_volume_pct
        self._ack_delay = cfg.ack_latency_ms / 1000.0
        self._cash = Decimal(cfg.initial_cash)
        self._order_seq = 0
        # Working orders and the newest ended ones (older ones: the store).
        self._orders: dict[str, PaperOrder] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()  # ended orders in memory, by age
        self._retain_done = retain_done
        # symbol -> working orders in time priority; only these symbols are looked at
        # per batch, so a batch with nothing working costs a few dict checks.
        self._working: dict[str, dict[str, PaperOrder]] = {}
        self._positions: dict[str, Position] = {}
        self._held: set[str] = set()  # symbols with a non-zero position (marked per batch)
        self._marks: dict[str, float] = {}
        self._fills: list[Fill] = []  # only without a store (with one: on disk)
        self._reserved = ZERO
        self._next_expiry: datetime | None = None
        self._pending_acks: dict[str, asyncio.TimerHandle] = {}
        self._flush_scheduled = False
        self._index_symbols: tuple[str, ...] = ()
        self._index: dict[str, int] = {}
        # What the next commit writes and then reports.
        self._out: list[Event] = []
        self._dirty_orders: dict[str, PaperOrder] = {}
        self._new_fills: list[Fill] = []
        self._dirty_positions: set[str] = set()

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._store_path is not None:
            self._store = PaperStore.open(self._store_path)
            self._restore()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Acknowledgements still waiting on their latency are reported now, so the daemon
        # never keeps an order in pending_new that the account holds as new.
        for cid in list(self._pending_acks):
            self._flush_ack(self._orders[cid])
        self._commit(marks=True)
        if self._store is not None:
            self._store.close()
            self._store = None

    def _restore(self) -> None:
        assert self._store is not None
        stored = self._store.load(everything=False)
        if stored is None:
            self._commit(marks=True)
            log.info("paper.store_created", path=str(self._store_path), cash=str(self._cash))
            return
        self._cash, self._order_seq = stored.cash, stored.order_seq
        for po in stored.orders:  # the open ones
            self._orders[po.client_order_id] = po
            if po.status in OPEN:
                self._work(po)
        self._positions = {p.symbol: p for p in stored.positions}
        self._held = {p.symbol for p in stored.positions if p.qty}
        self._marks = stored.marks
        log.info("paper.store_resumed", path=str(self._store_path), cash=str(self._cash),
                 working=sum(map(len, self._working.values())))

    # -- orders --------------------------------------------------------------------------

    async def submit(self, intent: OrderIntent) -> None:
        """Record the order and acknowledge it with ``OrderNew``.

        Raises:
            BrokerRejected: duplicate ``client_order_id``, qty <= 0, a missing or
                non-positive limit/stop price for the type, or insufficient buying power
                (see the module doc). Nothing is recorded.
        """
        cid = intent.client_order_id
        if self._known(cid):
            self._reject(cid, f"client_order_id must be unique: {cid!r} was used before")
        qty = intent.qty
        if isinstance(qty, bool) or not isinstance(qty, int) or qty <= 0:
            self._reject(cid, f"qty must be a positive whole number, got {qty!r}")
        self._check_prices(cid, intent.order_type, intent.limit_price, intent.stop_price)
        if intent.side is OrderSide.BUY and intent.reference_price <= 0:
            self._reject(cid, "reference_price must be positive for a buy")
        now = self._clock.now()
        po = PaperOrder(
            seq=self._order_seq + 1, client_order_id=cid, symbol=intent.symbol,
            side=intent.side, qty=qty, order_type=intent.order_type,
            time_in_force=intent.time_in_force, limit_price=intent.limit_price,
            stop_price=intent.stop_price, reference_price=intent.reference_price,
            reserve_px=ZERO, submitted_at=now,
            expire_at=(next_new_york_midnight(now)
                       if intent.time_in_force is TimeInForce.DAY else None),
        )
        po.reserve_px = reserve_price(po, self._slip)
        self._check_buying_power(po, credit=ZERO)
        self._order_seq = po.seq
        self._orders[cid] = po
        self._work(po)
        self._dirty_orders[cid] = po
        self._acknowledge(po)
        self._commit_soon()

    def _commit_soon(self) -> None:
        """Group commit for submissions: every order submitted in one loop iteration (a
        batch's orders arrive back to back) shares one transaction, written at the end of
        the iteration or by any earlier commit. Reports still follow the write, so nothing
        is reported that a crash could lose; an order lost that way was never acknowledged,
        as with a real broker that failed before its ack."""
        if self._store is None:
            self._commit()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_commit)

    def _scheduled_commit(self) -> None:
        self._flush_scheduled = False
        if self._store is not None:
            self._commit()

    async def cancel(self, client_order_id: str) -> None:
        """Cancel an open order (reports ``OrderCanceled``).

        Raises:
            BrokerRejected: unknown order, or already in a terminal state.
        """
        po = self._open_order(client_order_id)
        self._finish(po, OrderStatus.CANCELED,
                     OrderCanceled(client_order_id, self._clock.now(), reason="canceled"))
        self._commit()

    async def cancel_all(self) -> None:
        """Cancel every open order (one ``OrderCanceled`` each)."""
        now = self._clock.now()
        for po in sorted(self._iter_working(), key=lambda o: o.seq):
            self._finish(po, OrderStatus.CANCELED,
                         OrderCanceled(po.client_order_id, now, reason="cancel_all"))
        self._commit()

    async def replace(
        self,
        client_order_id: str,
        new_client_order_id: str,
        *,
        qty: int | None = None,
        limit_price: Decimal | None = None,
        stop_price: Decimal | None = None,
    ) -> None:
        """Replace an open order: the old one reports ``OrderReplaced`` and the new one
        (same symbol, side, type, time in force) its own ``OrderNew``.

        ``qty`` is the new *total* quantity, including what the old order already filled;
        the replacement works ``qty - filled``. Omitted fields keep the old values.

        Raises:
            BrokerRejected: unknown or terminal order, ``new_client_order_id`` already
                used, ``qty <= filled qty``, bad prices, or insufficient buying power.
        """
        old = self._open_order(client_order_id)
        if self._known(new_client_order_id):
            self._reject(new_client_order_id, "client_order_id must be unique")
        total = old.qty if qty is None else qty
        if total <= old.filled_qty:
            self._reject(client_order_id,
                         f"qty {total} must exceed the filled qty {old.filled_qty}")
        limit = old.limit_price if limit_price is None else limit_price
        stop = old.stop_price if stop_price is None else stop_price
        self._check_prices(new_client_order_id, old.order_type, limit, stop)
        now = self._clock.now()
        new = PaperOrder(
            seq=self._order_seq + 1, client_order_id=new_client_order_id, symbol=old.symbol,
            side=old.side, qty=total - old.filled_qty, order_type=old.order_type,
            time_in_force=old.time_in_force, limit_price=limit, stop_price=stop,
            reference_price=old.reference_price, reserve_px=ZERO, submitted_at=now,
            triggered=old.triggered and stop == old.stop_price, expire_at=old.expire_at,
        )
        new.reserve_px = reserve_price(new, self._slip)
        self._check_buying_power(new, credit=old.reserve)
        self._finish(old, OrderStatus.REPLACED, OrderReplaced(
            client_order_id, now, new_client_order_id=new_client_order_id))
        self._order_seq = new.seq
        self._orders[new_client_order_id] = new
        self._work(new)
        self._dirty_orders[new_client_order_id] = new
        self._acknowledge(new)
        self._commit()

    # -- matching ------------------------------------------------------------------------

    def on_bars(self, batch: BarBatch) -> None:
        """Match working orders against ``batch`` and mark positions to its closes.

        Call it with each batch before strategies see it.
        """
        if self._next_expiry is not None and batch.ts >= self._next_expiry:
            self._expire_day_orders(batch.ts, everything=False)
        if self._working or self._held:
            index = self._index_of(batch)
            # In the batch's symbol order, not the order symbols first got working orders
            # (which a restart, rebuilding them by age, would not reproduce).
            for at, symbol in sorted((index[s], s) for s in self._working if s in index):
                self._match_symbol(batch, at, symbol)
            close = batch.close
            for symbol in self._held:
                i = index.get(symbol)
                if i is not None:
                    px = float(close[i])
                    if math.isfinite(px):
                        self._marks[symbol] = px
        if self._out or self._dirty_orders:
            self._commit(marks=True)

    def end_of_day(self) -> None:
        """Expire every working day order now (``OrderExpired`` each)."""
        self._expire_day_orders(self._clock.now(), everything=True)
        self._commit()

    def _index_of(self, batch: BarBatch) -> dict[str, int]:
        # The universe rarely changes between batches: rebuild only when it does.
        symbols = batch.symbols
        if symbols is not self._index_symbols and symbols != self._index_symbols:
            self._index = batch.index()
        self._index_symbols = symbols
        return self._index

    def _match_symbol(self, batch: BarBatch, i: int, symbol: str) -> None:
        o, h, lo = float(batch.open[i]), float(batch.high[i]), float(batch.low[i])
        if not (math.isfinite(o) and math.isfinite(h) and math.isfinite(lo)):
            return
        bar = (to_price(o), to_price(h), to_price(lo))
        cap: int | None = None
        if self._volume_pct > 0:
            volume = float(batch.volume[i])
            cap = math.floor(self._volume_pct * volume) if math.isfinite(volume) else 0
        for po in list(self._working[symbol].values()):
            cap = self._match_order(po, bar, cap)

    def _match_order(
        self, po: PaperOrder, bar: tuple[Decimal, Decimal, Decimal], cap: int | None
    ) -> int | None:
        px, triggered = execution_price(po, *bar, self._slip)
        if triggered:
            po.triggered = True
            self._dirty_orders[po.client_order_id] = po
        want = po.leaves_qty
        n = 0 if px is None else want if cap is None else min(want, max(cap, 0))
        if po.time_in_force is TimeInForce.FOK and n < want:
            n = 0  # all or nothing
        if px is not None and n > 0:
            self._fill(po, n, px)
            if cap is not None:
                cap -= n
        if po.status in OPEN and po.time_in_force in _FIRST_BAR_ONLY:
            reason = f"{po.time_in_force.value}: {po.leaves_qty} unfilled"
            self._finish(po, OrderStatus.CANCELED,
                         OrderCanceled(po.client_order_id, self._clock.now(), reason=reason))
        return cap

    def _fill(self, po: PaperOrder, qty: int, price: Decimal) -> None:
        self._flush_ack(po)
        now = self._clock.now()
        po.fill_seq += 1
        fill = Fill(
            execution_id=f"{po.broker_order_id}-{po.fill_seq}", client_order_id=po.client_order_id,
            symbol=po.symbol, side=po.side, qty=qty, price=price, ts=now,
            commission=self._commission(qty),
        )
        po.filled_qty += qty
        po.filled_notional += price * qty
        self._book(fill)
        if self._store is None:
            self._fills.append(fill)
        self._new_fills.append(fill)
        if po.filled_qty == po.qty:
            po.status = OrderStatus.FILLED
            self._unwork(po)
            self._ended[po.client_order_id] = None
        else:
            po.status = OrderStatus.PARTIALLY_FILLED
        self._update_reserve(po)
        self._dirty_orders[po.client_order_id] = po
        self._out.append(OrderFilled(po.client_order_id, now, fill=fill))
        if debug_enabled():
            log.debug("paper.fill", client_order_id=po.client_order_id, symbol=po.symbol,
                      side=po.side.value, qty=qty, price=str(price),
                      exec_id=fill.execution_id, filled=po.filled_qty, of=po.qty)

    def _book(self, fill: Fill) -> None:
        pos = self._positions.get(fill.symbol)
        if pos is None:
            pos = self._positions[fill.symbol] = Position(fill.symbol)
        self._cash -= fill.price * fill.signed_qty + fill.commission
        book_fill(pos, fill)
        if pos.qty:
            self._held.add(fill.symbol)
        else:
            self._held.discard(fill.symbol)
        self._dirty_positions.add(fill.symbol)

    def _expire_day_orders(self, now: datetime, *, everything: bool) -> None:
        upcoming: datetime | None = None
        for po in sorted(self._iter_working(), key=lambda o: o.seq):
            if po.expire_at is None:
                continue
            if everything or now >= po.expire_at:
                self._finish(po, OrderStatus.EXPIRED, OrderExpired(po.client_order_id, now))
            elif upcoming is None or po.expire_at < upcoming:
                upcoming = po.expire_at
        self._next_expiry = upcoming

    # -- book keeping helpers --------------------------------------------------------------

    def _work(self, po: PaperOrder) -> None:
        self._working.setdefault(po.symbol, {})[po.client_order_id] = po
        self._update_reserve(po)
        if po.expire_at is not None and (
            self._next_expiry is None or po.expire_at < self._next_expiry
        ):
            self._next_expiry = po.expire_at

    def _unwork(self, po: PaperOrder) -> None:
        orders = self._working[po.symbol]
        del orders[po.client_order_id]
        if not orders:
            del self._working[po.symbol]

    def _iter_working(self) -> list[PaperOrder]:
        return [po for orders in self._working.values() for po in orders.values()]

    def _finish(self, po: PaperOrder, status: OrderStatus, event: Event) -> None:
        """Move an open order to a terminal status and queue its event."""
        self._flush_ack(po)
        po.status = status
        self._unwork(po)
        self._ended[po.client_order_id] = None
        self._update_reserve(po)
        self._dirty_orders[po.client_order_id] = po
        self._out.append(event)
        if debug_enabled():
            log.debug(f"paper.{status.value}", client_order_id=po.client_order_id,
                      filled=po.filled_qty, of=po.qty)

    def _acknowledge(self, po: PaperOrder) -> None:
        if self._ack_delay <= 0:
            self._out.append(self._new_event(po))
            return
        loop = asyncio.get_running_loop()
        self._pending_acks[po.client_order_id] = loop.call_later(
            self._ack_delay, self._ack_due, po.client_order_id)

    def _ack_due(self, client_order_id: str) -> None:
        if self._pending_acks.pop(client_order_id, None) is not None:
            self._out.append(self._new_event(self._orders[client_order_id]))
            self._commit()

    def _flush_ack(self, po: PaperOrder) -> None:
        """Report a delayed acknowledgement now: it must precede the order's next event."""
        handle = self._pending_acks.pop(po.client_order_id, None)
        if handle is not None:
            handle.cancel()
            self._out.append(self._new_event(po))

    def _new_event(self, po: PaperOrder) -> OrderNew:
        return OrderNew(po.client_order_id, self._clock.now(),
                        broker_order_id=po.broker_order_id)

    def _commit(self, *, marks: bool = False) -> None:
        """Write what changed in one transaction, then report the queued events."""
        if self._store is not None and (
            marks or self._dirty_orders or self._new_fills or self._dirty_positions
        ):
            self._store.save(
                cash=self._cash, order_seq=self._order_seq,
                orders=list(self._dirty_orders.values()), fills=self._new_fills,
                positions=[self._positions[s] for s in self._dirty_positions],
                marks=[(s, self._marks[s]) for s in self._held if s in self._marks],
            )
        self._dirty_orders.clear()
        self._new_fills = []
        self._dirty_positions.clear()
        self._evict()
        out, self._out = self._out, []
        for event in out:
            self._sink(event)

    def _known(self, cid: str) -> bool:
        return cid in self._orders or (self._store is not None
                                       and self._store.order(cid) is not None)

    def _evict(self) -> None:
        """Ended orders beyond ``retain_done`` leave memory (they are committed: this
        runs after the save). Without a store there is nowhere else to keep them."""
        if self._store is None:
            return
        while len(self._ended) > self._retain_done:
            cid, _ = self._ended.popitem(last=False)
            self._orders.pop(cid, None)

    # -- money -------------------------------------------------------------------------

    def _commission(self, qty: int) -> Decimal:
        return max(self._cps * qty, self._min_commission) if self._cps > 0 else ZERO

    def _reservation(self, po: PaperOrder) -> Decimal:
        leaves = po.leaves_qty
        if po.side is OrderSide.SELL or po.status in TERMINAL or leaves <= 0:
            return ZERO
        return leaves * po.reserve_px + self._commission(leaves)

    def _update_reserve(self, po: PaperOrder) -> None:
        new = self._reservation(po)
        self._reserved += new - po.reserve
        po.reserve = new

    def _mark(self, symbol: str) -> Decimal:
        last = self._marks.get(symbol)
        return to_price(last) if last is not None else self._positions[symbol].avg_price

    def _buying_power(self) -> Decimal:
        short_value = sum(
            (-self._positions[s].qty * self._mark(s)
             for s in self._held if self._positions[s].qty < 0), ZERO)
        return self._cash - short_value - self._reserved

    def _check_buying_power(self, po: PaperOrder, *, credit: Decimal) -> None:
        need = self._reservation(po)
        if need > 0 and need > self._buying_power() + credit:
            self._reject(po.client_order_id,
                         f"insufficient buying power: need {need}, have "
                         f"{self._buying_power() + credit}", status=403)

    # -- validation --------------------------------------------------------------------

    def _check_prices(
        self, cid: str, kind: OrderType, limit: Decimal | None, stop: Decimal | None
    ) -> None:
        if kind in _NEEDS_LIMIT and (limit is None or limit <= 0):
            self._reject(cid, f"a {kind.value} order needs a positive limit_price")
        if kind in _NEEDS_STOP and (stop is None or stop <= 0):
            self._reject(cid, f"a {kind.value} order needs a positive stop_price")

    def _open_order(self, cid: str) -> PaperOrder:
        po = self._orders.get(cid) or (self._store.order(cid) if self._store else None)
        if po is None:
            self._reject(cid, f"order {cid!r} not found", status=404)
        if po.status in TERMINAL:
            self._reject(cid, f'order is already in "{po.status.value}" state')
        return po

    @staticmethod
    def _reject(cid: str, reason: str, *, status: int = 422) -> NoReturn:
        log.info("paper.reject", client_order_id=cid, reason=reason)
        raise BrokerRejected(reason, status=status)

    # -- queries -----------------------------------------------------------------------

    async def get_order(self, client_order_id: str) -> BrokerOrder | None:
        """The order in any status; None if this account never had it."""
        po = self._orders.get(client_order_id)
        if po is None and self._store is not None:
            po = self._store.order(client_order_id)
        return None if po is None else po.view()

    async def open_orders(self) -> list[BrokerOrder]:
        """Working orders, oldest first."""
        return [po.view() for po in sorted(self._iter_working(), key=lambda o: o.seq)]

    async def fills_since(self, since: datetime) -> list[BrokerFill]:
        """Fills with ``ts >= since`` (inclusive: reconciliation de-duplicates them)."""
        if self._store is not None:
            listed = [*self._store.fills_since(since),
                      *(f for f in self._new_fills if f.ts >= since)]  # not yet committed
        else:
            listed = [f for f in self._fills if f.ts >= since]
        return [
            BrokerFill(f.execution_id, f.client_order_id, f.symbol, f.side, f.qty, f.price,
                       f.ts, commission=f.commission, cum_qty=f.cum_qty)
            for f in listed
        ]

    async def positions(self) -> list[BrokerPosition]:
        """Non-zero positions, by symbol."""
        return [
            BrokerPosition(s, self._positions[s].qty, self._positions[s].avg_price)
            for s in sorted(self._held)
        ]

    async def account(self) -> AccountSnapshot:
        """Cash, equity (cash + positions marked at their last close, or at average cost
        before any close) and buying power (module doc; never below zero)."""
        equity = self._cash + sum(
            (self._positions[s].qty * self._mark(s) for s in self._held), ZERO)
        return AccountSnapshot(
            ts=self._clock.now(), cash=self._cash, equity=equity,
            buying_power=max(self._buying_power(), ZERO),
            positions=tuple(await self.positions()),
        )

    async def clock(self) -> MarketClock | None:
        """None: the paper broker has no market clock (the gate uses the calendar)."""
        return None

    def realized_pnl(self, symbol: str | None = None) -> Decimal:
        """Realized P&L of one symbol, or of the whole account (excluding commissions)."""
        if symbol is not None:
            pos = self._positions.get(symbol)
            return pos.realized_pnl if pos else ZERO
        return sum((p.realized_pnl for p in self._positions.values()), ZERO)

