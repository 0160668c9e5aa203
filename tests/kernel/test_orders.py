"""The order state machine: the transition table is the law, fills are de-duplicated by
execution id or by the quantity interval they cover, no fill sequence can overfill, and a
refused event changes nothing."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.errors import InvalidOrderTransition, OverfillError
from kernel.events import (
    OrderAbandoned,
    OrderAccepted,
    OrderCanceled,
    OrderCancelRejected,
    OrderDoneForDay,
    OrderEvent,
    OrderExpired,
    OrderFilled,
    OrderIntent,
    OrderNew,
    OrderPendingCancel,
    OrderPendingReplace,
    OrderRejected,
    OrderReplaced,
    OrderSubmitted,
)
from kernel.model import Fill, OrderSide, OrderType, TimeInForce
from kernel.orders import OPEN, ORDER_TRANSITIONS, TERMINAL, Order, OrderStatus

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)
CID = "td-test"
ORDER_QTY = 10

NON_FILL_EVENTS: tuple[type[OrderEvent], ...] = (
    OrderSubmitted, OrderAccepted, OrderNew, OrderRejected, OrderCanceled, OrderExpired,
    OrderPendingCancel, OrderPendingReplace, OrderCancelRejected, OrderReplaced,
    OrderDoneForDay, OrderAbandoned,
)


def make_order(qty: int = ORDER_QTY, side: OrderSide = OrderSide.BUY) -> Order:
    intent = OrderIntent(
        client_order_id=CID, symbol="AAPL", side=side, qty=qty,
        order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY, ts=T0,
        reference_price=Decimal("150.00"),
    )
    return Order.from_intent(intent)


def fill(exec_id: str, qty: int, price: str = "100", ts: datetime = T0,
         cum: int | None = None) -> OrderFilled:
    return OrderFilled(
        client_order_id=CID, ts=ts,
        fill=Fill(execution_id=exec_id, client_order_id=CID, symbol="AAPL",
                  side=OrderSide.BUY, qty=qty, price=Decimal(price), ts=ts, cum_qty=cum),
    )


def event(kind: type[OrderEvent], ts: datetime = T0) -> OrderEvent:
    return kind(client_order_id=CID, ts=ts)


def state_of(order: Order) -> Order:
    return copy.deepcopy(order)


def walk(order: Order, *events: OrderEvent) -> Order:
    for e in events:
        order.apply(e)
    return order


# -- an independent oracle for one step ---------------------------------------------------

DUPLICATE = "duplicate"
LATE_FILL_STATUSES = {OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.REPLACED}
# an abandoned order the broker shows after all takes its events like a new one
REVIVED_BY = {OrderAccepted, OrderNew, OrderFilled, OrderRejected, OrderCanceled, OrderExpired}


class Taken:
    """The oracle's own record of the fills an order took: execution ids and intervals."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.ranges: set[tuple[int, int]] = set()  # (low, high]: quantity interval

    def seen(self, f: Fill) -> bool:
        return f.execution_id in self.ids or (
            f.cum_qty is not None and (f.cum_qty - f.qty, f.cum_qty) in self.ranges)

    def clashes(self, f: Fill) -> bool:
        if f.cum_qty is None:
            return False
        lo, hi = f.cum_qty - f.qty, f.cum_qty
        return lo < 0 or hi > ORDER_QTY or any(lo < h and a < hi for a, h in self.ranges)

    def take(self, f: Fill) -> None:
        self.ids.add(f.execution_id)
        if f.cum_qty is not None:
            self.ranges.add((f.cum_qty - f.qty, f.cum_qty))


def expected_step(order: Order, e: OrderEvent, taken: Taken) -> object:
    """What one event must do, written from the module's contract, not from its code:
    a fill already taken (same execution id, or the same quantity interval) is a no-op;
    anything else must be in the table; a fill lands on FILLED when complete, else stays
    on a pending cancel/replace or on the status of an ended order, else
    PARTIALLY_FILLED; a cancel-reject returns to PARTIALLY_FILLED when something filled,
    else NEW."""
    if isinstance(e, OrderFilled) and taken.seen(e.fill):
        return DUPLICATE
    if type(e) not in ORDER_TRANSITIONS[order.status]:
        return InvalidOrderTransition
    if isinstance(e, OrderFilled):
        q = e.fill.qty
        if q <= 0 or order.filled_qty + q > order.qty or taken.clashes(e.fill):
            return OverfillError
        if order.filled_qty + q == order.qty:
            return OrderStatus.FILLED
        if order.status in (OrderStatus.PENDING_CANCEL, OrderStatus.PENDING_REPLACE,
                            *LATE_FILL_STATUSES):
            return order.status
        return OrderStatus.PARTIALLY_FILLED  # also an abandoned order that landed late
    if isinstance(e, OrderCancelRejected):
        return OrderStatus.PARTIALLY_FILLED if order.filled_qty else OrderStatus.NEW
    return ORDER_TRANSITIONS[order.status][type(e)]


@st.composite
def order_events(draw: st.DrawFn) -> OrderEvent:
    ts = T0 + timedelta(seconds=draw(st.integers(0, 3600)))
    if draw(st.booleans()):
        # A small pool of execution ids makes duplicates common; qty may be 0 or too big.
        exec_id = draw(st.sampled_from(["x1", "x2", "x3", "x4", "x5", "x6"]))
        qty = draw(st.integers(-1, ORDER_QTY + 2))
        price = draw(st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000"),
                                 places=2))
        # Half the fills say where they end (cumulative qty), as brokers that know do.
        cum = draw(st.one_of(st.none(), st.integers(0, ORDER_QTY + 1)))
        return fill(exec_id, qty, str(price), ts, cum)
    kind = draw(st.sampled_from(NON_FILL_EVENTS))
    if kind in (OrderAccepted, OrderNew):
        return kind(client_order_id=CID, ts=ts,
                    broker_order_id=draw(st.sampled_from(["", "b-1", "b-2"])))
    return kind(client_order_id=CID, ts=ts)


class TestOrderStateMachineProperties:
    @settings(max_examples=400, deadline=None)
    @given(st.lists(order_events(), max_size=25))
    def test_apply_when_random_events_then_follows_table_or_raises_unchanged(
        self, events: list[OrderEvent]
    ) -> None:
        order = make_order()
        taken = Taken()
        for e in events:
            # Arrange
            before = state_of(order)
            expected = expected_step(order, e, taken)

            # Act
            raised: type[Exception] | None = None
            result = None
            try:
                result = order.apply(e)
            except (InvalidOrderTransition, OverfillError) as exc:
                raised = type(exc)

            # Assert
            if expected in (InvalidOrderTransition, OverfillError):
                assert raised is expected, (before.status, e)
                assert order == before, "a refused event must leave the order unchanged"
            elif expected == DUPLICATE:
                assert raised is None and result is False
                assert order == before, "a duplicate fill must change nothing"
            else:
                assert raised is None and result is True, (before.status, e)
                assert order.status is expected
                if isinstance(e, OrderFilled):
                    taken.take(e.fill)
                assert len(order.log) == len(before.log) + 1
                assert order.log[-1].status is expected
                assert order.log[-1].ts == e.ts
            assert 0 <= order.filled_qty <= order.qty

    @settings(max_examples=200, deadline=None)
    @given(st.lists(order_events(), max_size=25))
    def test_apply_when_random_events_then_fill_books_match_accepted_fills(
        self, events: list[OrderEvent]
    ) -> None:
        order = make_order()
        accepted: dict[str, Fill] = {}
        for e in events:
            try:
                changed = order.apply(e)
            except (InvalidOrderTransition, OverfillError):
                continue
            if changed and isinstance(e, OrderFilled):
                accepted[e.fill.execution_id] = e.fill

        assert order.execution_ids == set(accepted)
        assert order.filled_qty == sum(f.qty for f in accepted.values())
        assert order.filled_notional == sum((f.price * f.qty for f in accepted.values()),
                                            Decimal(0))
        assert (order.status is OrderStatus.FILLED) == (order.filled_qty == order.qty)

    @pytest.mark.parametrize(("status", "kind"), [
        (s, k) for s in sorted(TERMINAL) for k in (*NON_FILL_EVENTS, OrderFilled)
        if not (k is OrderFilled and s in LATE_FILL_STATUSES)
        and not (s is OrderStatus.ABANDONED and k in REVIVED_BY)])
    def test_apply_when_terminal_then_every_event_but_a_late_fill_is_refused(
        self, status: OrderStatus, kind: type[OrderEvent]
    ) -> None:
        # Arrange
        order = make_order()
        order.status = status  # placed directly: we test what a terminal order accepts
        before = state_of(order)
        e = fill("fresh", 1) if kind is OrderFilled else event(kind)

        # Act / Assert
        with pytest.raises(InvalidOrderTransition):
            order.apply(e)
        assert order == before

    def test_apply_when_duplicate_fill_on_filled_order_then_false_and_unchanged(self) -> None:
        # Arrange
        order = walk(make_order(), event(OrderNew), fill("x1", ORDER_QTY))
        before = state_of(order)

        # Act
        changed = order.apply(fill("x1", ORDER_QTY))

        # Assert
        assert changed is False
        assert order == before

    def test_table_when_read_then_open_and_terminal_partition_all_statuses(self) -> None:
        assert set(ORDER_TRANSITIONS) == set(OrderStatus)
        assert set(OrderStatus) == OPEN | TERMINAL
        assert not OPEN & TERMINAL
        assert all(set(ORDER_TRANSITIONS[s]) <= {OrderFilled} for s in LATE_FILL_STATUSES)
        assert set(ORDER_TRANSITIONS[OrderStatus.ABANDONED]) == REVIVED_BY
        assert {s for s in TERMINAL if ORDER_TRANSITIONS[s]} == {
            *LATE_FILL_STATUSES, OrderStatus.ABANDONED}
        assert all(OrderFilled in ORDER_TRANSITIONS[s] for s in OPEN)


class TestOrderExamples:
    def test_apply_when_partial_then_full_fill_then_filled_with_weighted_avg(self) -> None:
        # Arrange
        order = walk(make_order(), event(OrderAccepted), event(OrderNew))

        # Act
        order.apply(fill("x1", 4, "100.00"))
        status_after_partial = order.status
        order.apply(fill("x2", 6, "101.00"))

        # Assert: (4 x 100 + 6 x 101) / 10 = 100.60
        assert status_after_partial is OrderStatus.PARTIALLY_FILLED
        assert order.status is OrderStatus.FILLED
        assert order.filled_qty == 10
        assert order.avg_fill_price == Decimal("100.60")
        assert order.leaves_qty == 0
        assert not order.is_open
        assert [e.status for e in order.log] == [
            OrderStatus.PENDING_NEW, OrderStatus.ACCEPTED, OrderStatus.NEW,
            OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED,
        ]

    def test_apply_when_cancel_rejected_without_fills_then_back_to_new(self) -> None:
        order = walk(make_order(), event(OrderNew), event(OrderPendingCancel))

        order.apply(event(OrderCancelRejected))

        assert order.status is OrderStatus.NEW

    def test_apply_when_cancel_rejected_after_partial_fill_then_partially_filled(self) -> None:
        # Arrange: a fill that does not complete leaves the cancel request pending
        order = walk(make_order(), event(OrderNew), event(OrderPendingCancel),
                     fill("x1", 3))
        assert order.status is OrderStatus.PENDING_CANCEL

        # Act
        order.apply(event(OrderCancelRejected))

        # Assert
        assert order.status is OrderStatus.PARTIALLY_FILLED
        assert order.leaves_qty == 7

    def test_apply_when_replace_rejected_after_partial_fill_then_partially_filled(self) -> None:
        order = walk(make_order(), event(OrderNew), fill("x1", 2),
                     event(OrderPendingReplace))

        order.apply(event(OrderCancelRejected))

        assert order.status is OrderStatus.PARTIALLY_FILLED

    def test_apply_when_fill_completes_pending_cancel_then_filled(self) -> None:
        order = walk(make_order(), event(OrderNew), event(OrderPendingCancel))

        order.apply(fill("x1", ORDER_QTY))

        assert order.status is OrderStatus.FILLED

    def test_apply_when_overfill_then_raises_and_keeps_earlier_fills(self) -> None:
        order = walk(make_order(), event(OrderNew), fill("x1", 8, "50"))
        before = state_of(order)

        with pytest.raises(OverfillError):
            order.apply(fill("x2", 3, "50"))

        assert order == before
        assert order.filled_qty == 8
        assert "x2" not in order.execution_ids

    def test_apply_when_accepted_with_broker_id_then_recorded(self) -> None:
        order = make_order()

        order.apply(OrderAccepted(client_order_id=CID, ts=T0, broker_order_id="b-42"))

        assert order.broker_order_id == "b-42"
        assert order.status is OrderStatus.ACCEPTED

    def test_leaves_qty_when_sell_partially_filled_then_remaining_quantity(self) -> None:
        order = walk(make_order(qty=5, side=OrderSide.SELL), event(OrderNew), fill("x1", 2))

        assert order.leaves_qty == 3
        assert order.is_open


class TestFillIdentity:
    def test_apply_when_same_fill_arrives_under_another_channels_id_then_taken_once(
            self) -> None:
        # Arrange: the stream's execution id and the REST activity id share nothing
        order = walk(make_order(), event(OrderNew), fill("stream-7e1a", 4, cum=4))

        # Act
        changed = order.apply(fill("20240305143502500::c0ffee", 4, cum=4))

        # Assert
        assert changed is False
        assert order.filled_qty == 4

    def test_apply_when_missed_earlier_partial_arrives_after_later_one_then_taken(
            self) -> None:
        # Arrange: the stream lost the first partial (cum 4); the second (cum 10) arrived
        order = walk(make_order(), event(OrderNew), fill("s-2", 6, "101", cum=10))
        assert order.status is OrderStatus.PARTIALLY_FILLED

        # Act: REST brings the first one later, under its own id
        changed = order.apply(fill("rest-1", 4, "100", cum=4))

        # Assert: (4 x 100 + 6 x 101) / 10
        assert changed is True
        assert order.status is OrderStatus.FILLED
        assert order.avg_fill_price == Decimal("100.60")
        assert order.fill_ranges == {4: 4, 10: 6}

    def test_apply_when_fill_overlaps_a_taken_interval_then_refused_unchanged(self) -> None:
        order = walk(make_order(), event(OrderNew), fill("a", 4, cum=4))
        before = state_of(order)

        with pytest.raises(OverfillError):
            order.apply(fill("b", 3, cum=6))  # (3, 6] overlaps (0, 4]

        assert order == before

    def test_apply_when_fill_reported_after_cancel_then_booked_and_still_canceled(
            self) -> None:
        # Arrange: an IOC canceled after a partial whose stream event was lost
        order = walk(make_order(), event(OrderNew), event(OrderCanceled))

        # Act
        changed = order.apply(fill("rest-1", 3, cum=3))

        # Assert
        assert changed is True
        assert order.status is OrderStatus.CANCELED
        assert (order.filled_qty, order.leaves_qty) == (3, 0)


class TestAbandonedLandsLate:
    def test_apply_when_broker_shows_abandoned_order_then_it_lives_again(self) -> None:
        order = walk(make_order(), event(OrderAbandoned))
        assert not order.is_open

        order.apply(event(OrderNew))
        order.apply(fill("late-1", 4, cum=4))

        assert order.status is OrderStatus.PARTIALLY_FILLED
        assert order.is_open and order.leaves_qty == 6
