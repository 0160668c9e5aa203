"""The outgoing buffer's overflow policy and the event encoding (no broker)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

from structlog.testing import capture_logs

from kernel.events import OrderFilled, OrderSubmitted, PositionChanged
from kernel.model import Fill, OrderSide
from signals._mqtt_outbox import Outbox, Outgoing, encode_event, kind_of

T0 = datetime(2024, 3, 4, 14, 40, tzinfo=UTC)


def keep(i: int) -> Outgoing:
    return Outgoing("orders", "t/events/orders", body={"i": i})


def lossy(i: int) -> Outgoing:
    return Outgoing("positions", "t/events/positions", body={"i": i}, qos=0)


def drain(box: Outbox) -> list[tuple[str, int]]:
    out = []
    while (m := box.pop()) is not None:
        assert isinstance(m.body, dict)
        out.append((m.kind, m.body["i"]))
    return out


class TestOutbox:
    def test_messages_when_mixed_then_leave_in_arrival_order(self) -> None:
        box = Outbox(10)
        for m in (keep(1), lossy(2), keep(3), lossy(4)):
            box.put(m)
        assert drain(box) == [("orders", 1), ("positions", 2), ("orders", 3), ("positions", 4)]

    def test_full_when_keep_arrives_then_oldest_lossy_dropped(self) -> None:
        box = Outbox(3)
        for m in (lossy(1), keep(2), lossy(3), keep(4)):
            box.put(m)
        assert drain(box) == [("orders", 2), ("positions", 3), ("orders", 4)]
        assert box.dropped == {"positions": 1}

    def test_full_of_keep_when_lossy_arrives_then_new_lossy_dropped(self) -> None:
        box = Outbox(2)
        for m in (keep(1), keep(2), lossy(3)):
            box.put(m)
        assert drain(box) == [("orders", 1), ("orders", 2)]
        assert box.dropped == {"positions": 1}

    def test_full_of_keep_when_keep_arrives_then_oldest_dropped_counted_and_logged(
        self,
    ) -> None:
        box = Outbox(2)
        with capture_logs() as logs:
            for i in range(5):
                box.put(keep(i))
        assert drain(box) == [("orders", 3), ("orders", 4)]
        assert box.dropped == {"orders": 3}
        assert [e["event"] for e in logs] == ["mqtt.outbox_overflow"]  # first, not each

    def test_requeue_when_publish_failed_then_message_is_next_again(self) -> None:
        box = Outbox(5)
        box.put(keep(1))
        box.put(keep(2))
        first = box.pop()
        assert first is not None
        box.requeue(first)
        assert drain(box) == [("orders", 1), ("orders", 2)]

    def test_requeue_when_several_failed_out_of_order_then_original_order(self) -> None:
        box = Outbox(10)
        for i in range(4):
            box.put(keep(i))
        taken = [box.pop() for _ in range(3)]
        for m in reversed(taken):  # the failures come back in any order
            assert m is not None
            box.requeue(m)
        assert drain(box) == [("orders", 0), ("orders", 1), ("orders", 2), ("orders", 3)]

    def test_lossy_when_faster_than_rate_then_throttled_keep_never(self) -> None:
        now = [0.0]
        box = Outbox(10_000, lossy_per_sec=100, now=lambda: now[0])
        for i in range(300):
            box.put(lossy(i))
            box.put(keep(i))
        assert box.throttled == {"positions": 200}
        now[0] = 0.5  # half a second refills half the bucket
        for i in range(100):
            box.put(lossy(i))
        assert box.throttled == {"positions": 250}
        assert len(box) == 300 + 100 + 50

    def test_never_blocks_when_flooded_then_bounded(self) -> None:
        box = Outbox(100, lossy_per_sec=1e9)
        for i in range(100_000):
            box.put(keep(i) if i % 3 else lossy(i))
        assert len(box) == 100
        assert sum(box.dropped.values()) == 100_000 - 100


class TestEncoding:
    def test_fill_when_encoded_then_exact_decimals_and_iso_times(self) -> None:
        fill = Fill("x-1", "td-1", "AAPL", OrderSide.BUY, 5, Decimal("150.0300"), T0)
        event = OrderFilled(client_order_id="td-1", ts=T0, fill=fill)
        data = json.loads(encode_event(event, {"order": {"qty": 5}}))
        assert kind_of(event) == "fills"
        assert data == {"type": "OrderFilled", "client_order_id": "td-1",
                        "ts": "2024-03-04T14:40:00+00:00",
                        "fill": {"execution_id": "x-1", "client_order_id": "td-1",
                                 "symbol": "AAPL", "side": "buy", "qty": 5,
                                 "price": "150.0300", "ts": "2024-03-04T14:40:00+00:00",
                                 "commission": "0", "cum_qty": None},
                        "order": {"qty": 5}}

    def test_kinds_when_events_then_topics(self) -> None:
        assert kind_of(OrderSubmitted(client_order_id="c", ts=T0)) == "orders"
        assert kind_of(PositionChanged(symbol="A", qty=1, avg_price=Decimal(1),
                                       realized_pnl=Decimal(0), ts=T0)) == "positions"
