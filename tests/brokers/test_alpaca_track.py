"""The Alpaca adapter's shadow book on its own: wire payloads in, domain events out.

Payloads are shaped as alpaca-protocol.md §7 shows them (``raw_data=True``)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from brokers._alpaca_http import is_duplicate_cid
from brokers._alpaca_map import account_snapshot, broker_fill
from brokers._alpaca_track import OrderTracker
from kernel.errors import BrokerRejected
from kernel.events import (
    Event,
    OrderCanceled,
    OrderFilled,
    OrderIntent,
    ReconcileRequested,
)
from kernel.model import OrderSide, OrderType, TimeInForce

T0 = datetime(2024, 3, 5, 14, 35, tzinfo=UTC)


def order_json(cid: str, status: str, filled: int, qty: int = 10) -> dict[str, Any]:
    return {"id": f"id-{cid}", "client_order_id": cid, "symbol": "AAPL", "side": "buy",
            "qty": str(qty), "filled_qty": str(filled), "type": "market",
            "order_type": "market", "time_in_force": "day", "status": status,
            "submitted_at": "2024-03-05T14:35:01.120000000Z", "filled_avg_price": None}


def update(event: str, cid: str, filled: int, qty: int | None = None,
           exec_id: str | None = None, status: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"event": event, "timestamp": "2024-03-05T14:35:02.5Z",
                            "order": order_json(cid, status or event, filled)}
    if qty is not None:
        data |= {"execution_id": exec_id or f"x-{cid}-{filled}", "qty": str(qty),
                 "price": "170.45", "position_qty": str(filled)}
    return data


def tracker() -> tuple[OrderTracker, list[Event]]:
    out: list[Event] = []
    return OrderTracker(out.append, lambda: T0), out


def intent(cid: str) -> OrderIntent:
    return OrderIntent(cid, "AAPL", OrderSide.BUY, 10, OrderType.MARKET, TimeInForce.DAY, T0,
                       Decimal("170"))


class TestOrderTracker:
    def test_fill_events_when_streamed_then_each_carries_its_cumulative_quantity(self) -> None:
        t, out = tracker()
        t.track_intent(intent("c1"))
        t.on_trade_update(update("new", "c1", 0))
        t.on_trade_update(update("partial_fill", "c1", 4, qty=4, status="partially_filled"))
        t.on_trade_update(update("fill", "c1", 10, qty=6, status="filled"))
        fills = [e.fill for e in out if isinstance(e, OrderFilled)]
        assert [(f.qty, f.cum_qty) for f in fills] == [(4, 4), (6, 10)]
        assert "c1" not in t.orders  # ended: the shadow is dropped

    def test_partial_lost_when_final_fill_shows_more_then_reconcile_requested(self) -> None:
        t, out = tracker()
        t.track_intent(intent("c1"))
        t.on_trade_update(update("new", "c1", 0))
        # the partial_fill (cum 4) never came; the fill says 10 of which it brought 6
        t.on_trade_update(update("fill", "c1", 10, qty=6, status="filled"))
        asks = [e for e in out if isinstance(e, ReconcileRequested)]
        assert [a.client_order_id for a in asks] == ["c1"]
        assert [e.fill.cum_qty for e in out if isinstance(e, OrderFilled)] == [10]

    def test_events_after_the_end_when_replayed_then_only_unseen_fills_pass(self) -> None:
        t, out = tracker()
        t.track_intent(intent("c1"))
        t.on_trade_update(update("new", "c1", 0))
        t.on_trade_update(update("partial_fill", "c1", 4, qty=4, status="partially_filled"))
        t.on_trade_update(update("canceled", "c1", 7))  # a fill (cum 7) was lost first
        n = len(out)
        t.on_trade_update(update("partial_fill", "c1", 4, qty=4, exec_id="dup"))  # replay
        t.on_trade_update(update("new", "c1", 4))  # stale
        t.on_trade_update(update("partial_fill", "c1", 7, qty=3))  # the lost one, late
        late = out[n:]
        assert [type(e) for e in late] == [OrderFilled]
        assert isinstance(late[0], OrderFilled) and late[0].fill.cum_qty == 7
        assert any(isinstance(e, OrderCanceled) for e in out[:n])

    def test_order_placed_in_an_earlier_life_when_streamed_then_adopted(self) -> None:
        t, out = tracker()
        t.on_trade_update(update("partial_fill", "old", 4, qty=4, status="partially_filled"))
        assert [type(e) for e in out] == [OrderFilled]
        assert t.orders["old"].filled_qty == 4

    def test_memory_when_many_orders_ended_then_bounded(self) -> None:
        t, _ = tracker()
        for n in range(5000):
            cid = f"c{n}"
            t.track_intent(intent(cid))
            t.on_trade_update(update("fill", cid, 10, qty=10, status="filled"))
        assert t.orders == {}
        assert len(t._finished) <= 4096 and len(t.cid_by_broker_id) <= 4096


class TestWireMapping:
    def test_duplicate_when_only_the_code_matches_then_not_a_duplicate(self) -> None:
        refused = BrokerRejected("submit_order: HTTP 422: qty must be > 0", status=422,
                                 code=40010001)
        taken = BrokerRejected("submit_order: HTTP 422: client_order_id must be unique",
                               status=422, code=40010001)
        assert not is_duplicate_cid(refused)
        assert is_duplicate_cid(taken)

    def test_fill_activity_when_mapped_then_identified_by_order_and_cum_qty(self) -> None:
        a = {"id": "20240305143503000::c0ffee", "activity_type": "FILL", "price": "170.48",
             "qty": "6", "side": "buy", "symbol": "AAPL", "leaves_qty": "0",
             "order_id": "id-c1", "cum_qty": "10", "transaction_time": "2024-03-05T14:35:03Z"}
        f = broker_fill(a, "c1")
        assert (f.broker_order_id, f.cum_qty, f.qty) == ("id-c1", 10, 6)
        assert f.execution_id == a["id"]  # its own channel's id, nothing assumed

    def test_account_when_mapped_then_last_equity_status_and_block(self) -> None:
        a = {"cash": "98295.3", "equity": "100005.3", "buying_power": "196590.6",
             "last_equity": "100000", "status": "ACTIVE", "trading_blocked": True}
        s = account_snapshot(a, [], T0)
        assert (s.last_equity, s.status, s.trading_blocked) == (Decimal(100000), "ACTIVE", True)
