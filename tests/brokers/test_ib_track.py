"""The IB shadow book on its own (no socket): what TWS messages become as domain events.

A property test throws executions, commission reports and statuses at it duplicated
and in any order; worked examples pin the awkward cases (a cancel before the fill it
follows, a correction under a new execId, an orderId from an earlier connection)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from brokers._ib_map import IbExecution, IbOrderView, IbStatus
from brokers._ib_track import Ack, IbTracker
from kernel.events import OrderCanceled, OrderEvent, OrderFilled
from kernel.model import OrderSide
from kernel.orders import Order, OrderStatus
from tests.brokers.conftest import intent

T0 = datetime(2024, 3, 18, 14, 35, tzinfo=UTC)


class Harness:
    def __init__(self, wait: float = 1.0, kept: int = 2000) -> None:
        self.events: list[OrderEvent] = []
        self.acks: list[tuple[str, Ack]] = []
        self.mono = 0.0
        self.tracker = IbTracker(self.events.append, now=lambda: T0, mono=lambda: self.mono,
                                 on_ack=lambda cid, ack: self.acks.append((cid, ack)),
                                 commission_wait=wait, finished_kept=kept)
        self.tracker.new_connection(1)

    def place(self, cid: str, qty: int, order_id: int = 1) -> Order:
        it = intent(qty=qty, cid=cid)
        self.tracker.track_intent(it)
        self.tracker.sent(cid, order_id)
        mirror = Order.from_intent(it)
        return mirror

    def fills(self) -> list[OrderFilled]:
        return [e for e in self.events if isinstance(e, OrderFilled)]


def ex(cid: str, exec_id: str, shares: int, cum: int, perm: int = 500) -> IbExecution:
    return IbExecution(exec_id=exec_id, order_ref=cid, perm_id=perm, order_id=1, client_id=1,
                       account="DU1", symbol="AAPL", side=OrderSide.BUY, shares=shares,
                       price=Decimal("170.5"), cum_qty=cum, ts=T0)


def status(status_: str, filled: int, perm: int = 500, order_id: int = 1) -> IbStatus:
    return IbStatus(order_id=order_id, perm_id=perm, client_id=1, status=status_,
                    filled=filled, remaining=0, avg_fill_price=None)


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[int, list[tuple[str, object]]]:
    """A 1..40-share order split into executions; each execution, its commission and the
    status after it delivered one to three times, shuffled."""
    qty = draw(st.integers(1, 40))
    cuts = sorted(draw(st.sets(st.integers(1, qty - 1), max_size=5))) if qty > 1 else []
    bounds = [0, *cuts, qty]
    msgs: list[tuple[str, object]] = []
    for i in range(1, len(bounds)):
        shares, cum = bounds[i] - bounds[i - 1], bounds[i]
        for _ in range(draw(st.integers(1, 3))):
            msgs.append(("exec", ex("c", f"e{i}", shares, cum)))
        for _ in range(draw(st.integers(1, 2))):
            msgs.append(("fee", (f"e{i}", Decimal(i))))
        msgs.append(("status", status("Filled" if cum == qty else "Submitted", cum)))
    return qty, draw(st.permutations(msgs))


class TestProperties:
    @settings(max_examples=300, deadline=None, derandomize=True)
    @given(deliveries())
    def test_any_order_and_duplicates_then_each_fill_once_with_its_commission(
            self, case: tuple[int, list[tuple[str, object]]]) -> None:
        qty, msgs = case
        h = Harness()
        mirror = h.place("c", qty)
        for kind, msg in msgs:
            if kind == "exec":
                assert isinstance(msg, IbExecution)
                h.tracker.on_execution(msg)
            elif kind == "fee":
                assert isinstance(msg, tuple)
                h.tracker.on_commission(*msg)
            else:
                assert isinstance(msg, IbStatus)
                h.tracker.on_status(msg)
            assert sum(f.fill.qty for f in h.fills()) <= qty
        for event in h.events:
            mirror.apply(event)  # the daemon's state machine accepts every event
        fills = h.fills()
        assert len({f.fill.execution_id for f in fills}) == len(fills)
        assert sum(f.fill.qty for f in fills) == qty and mirror.status is OrderStatus.FILLED
        for f in fills:
            assert f.fill.commission == Decimal(f.fill.execution_id[1:])


class TestExamples:
    def test_fill_when_commission_comes_first_then_reported_at_once_with_it(self) -> None:
        h = Harness()
        h.place("c", 10)
        h.tracker.on_commission("e1", Decimal("1.25"))
        h.tracker.on_execution(ex("c", "e1", 10, 10))
        assert [f.fill.commission for f in h.fills()] == [Decimal("1.25")]

    def test_fill_when_commission_late_then_held_asked_once_then_released_at_zero(self) -> None:
        h = Harness(wait=1.0)
        h.place("c", 10)
        h.tracker.on_execution(ex("c", "e1", 10, 10))
        assert h.fills() == []
        h.mono = 1.5
        ask, released = h.tracker.expire()
        assert [e.exec_id for e in ask] == ["e1"] and released == []
        h.mono = 3.0
        ask, released = h.tracker.expire()
        assert ask == [] and [e.exec_id for e in released] == ["e1"]
        assert [f.fill.commission for f in h.fills()] == [0]

    def test_correction_when_same_cum_under_new_exec_id_then_one_fill(self) -> None:
        h = Harness()
        h.place("c", 10)
        for exec_id in ("e1.01", "e1.02"):
            h.tracker.on_execution(ex("c", exec_id, 10, 10))
            h.tracker.on_commission(exec_id, Decimal(1))
        assert [f.fill.execution_id for f in h.fills()] == ["e1.01"]

    def test_execution_when_beyond_cumulative_then_ignored(self) -> None:
        h = Harness()
        h.place("c", 10)
        h.tracker.on_status(status("Submitted", 4))
        h.tracker.on_execution(ex("c", "e1", 4, 4))
        h.tracker.on_execution(ex("c", "e2", 4, 0))  # no cumQty: capped by the status
        h.tracker.on_commission("e1", Decimal(1))
        h.tracker.on_commission("e2", Decimal(1))
        assert [f.fill.qty for f in h.fills()] == [4]

    def test_cancel_when_fill_missing_then_held_until_fill_then_both_in_order(self) -> None:
        h = Harness()
        h.place("c", 10)
        h.tracker.on_status(status("Cancelled", 4))
        assert not any(isinstance(e, OrderCanceled) for e in h.events)
        assert [o.client_order_id for o in h.tracker.missing_executions()] == ["c"]
        h.tracker.on_execution(ex("c", "e1", 4, 4))
        h.tracker.on_commission("e1", Decimal(1))
        assert [type(e).__name__ for e in h.events][-2:] == ["OrderFilled", "OrderCanceled"]

    def test_status_when_order_id_from_an_earlier_connection_then_not_ours(self) -> None:
        h = Harness()
        h.place("old", 5, order_id=7)
        h.tracker.new_connection(1)  # Gateway restarted: ids are issued again
        h.tracker.on_status(status("Cancelled", 0, perm=0, order_id=7))  # someone else's 7
        assert h.events == []

    def test_error_103_when_placed_then_duplicate_ack_and_id_unmapped(self) -> None:
        h = Harness()
        h.place("c", 5, order_id=3)
        assert h.tracker.on_error(3, 103, "Duplicate order id")
        assert h.acks == [("c", Ack.DUPLICATE_ID)] and h.events == []
        assert not h.tracker.on_error(3, 202, "Order Canceled")  # 3 is not ours any more

    def test_error_when_unacknowledged_order_refused_then_rejected_with_code(self) -> None:
        h = Harness()
        h.place("c", 5, order_id=3)
        h.tracker.on_error(3, 200, "No security definition has been found")
        assert [type(e).__name__ for e in h.events] == ["OrderRejected"]
        assert h.acks == [("c", Ack.REJECTED)]

    def test_price_off_tick_when_new_order_then_rejected_when_live_then_warning(
            self) -> None:
        h = Harness()
        h.place("new", 5, order_id=3)
        h.tracker.on_error(3, 110, "The price does not conform to the minimum variation")
        h.place("live", 5, order_id=4)
        h.tracker.on_status(status("Submitted", 0, perm=501, order_id=4))
        h.tracker.on_error(4, 110, "The price does not conform to the minimum variation")
        assert [(type(e).__name__, e.client_order_id) for e in h.events] == [
            ("OrderRejected", "new"), ("OrderNew", "live")]

    def test_warning_when_order_live_then_no_event(self) -> None:
        h = Harness()
        h.place("c", 5, order_id=3)
        h.tracker.on_error(3, 399, "Order held until the open")
        assert h.events == [] and h.acks == []

    def test_finished_orders_when_over_the_bound_then_pruned(self) -> None:
        h = Harness(kept=3)
        for i in range(10):
            cid = f"c{i}"
            h.place(cid, 1, order_id=i + 1)
            h.tracker.on_execution(ex(cid, f"e{i}", 1, 1, perm=100 + i))
            h.tracker.on_commission(f"e{i}", Decimal(1))
        assert len(h.tracker.orders) == 3 and len(h.fills()) == 10

    def test_snapshot_when_adopted_with_fills_then_earlier_executions_not_reported(
            self) -> None:
        h = Harness()
        view = IbOrderView(order_ref="c", perm_id=500, order_id=4, client_id=1, account="DU1",
                           symbol="AAPL", action="BUY", qty=10, order_type="MKT", tif="DAY",
                           limit_price=None, stop_price=None, status="Submitted")
        h.tracker.adopt(view, 6)
        h.tracker.on_execution(ex("c", "e1", 6, 6))  # counted in the 6 it had
        h.tracker.on_execution(ex("c", "e2", 4, 10))
        h.tracker.on_commission("e1", Decimal(1))
        h.tracker.on_commission("e2", Decimal(1))
        assert [(f.fill.execution_id, f.fill.qty) for f in h.fills()] == [("e2", 4)]
        assert h.tracker.avg_fill_price("c") is None  # 6 of its 10 filled before us
