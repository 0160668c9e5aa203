"""The bus: one handler per command, every subscriber per event (base classes included),
run-to-completion FIFO dispatch, and a raising handler stops it in order."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from structlog.testing import capture_logs

from kernel.bus import Bus
from kernel.errors import BusError, HandlerFailed
from kernel.events import Command, Event, Heartbeat, OrderCanceled, OrderEvent, OrderNew

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Ping(Command):
    n: int


@dataclass(frozen=True, slots=True)
class Pong(Command):
    n: int


@dataclass(frozen=True, slots=True)
class Happened(Event):
    n: int


class Recorder:
    """A subscriber that records what it saw, in order, under a label."""

    def __init__(self, seen: list[tuple[str, object]], label: str) -> None:
        self.seen = seen
        self.label = label

    def __call__(self, msg: object) -> None:
        self.seen.append((self.label, msg))


class TestBusCommands:
    def test_register_when_second_handler_then_raises(self) -> None:
        bus = Bus()
        bus.register(Ping, lambda c: None)

        with pytest.raises(BusError, match="already has a handler"):
            bus.register(Ping, lambda c: None)

    def test_send_when_no_handler_then_raises(self) -> None:
        bus = Bus()

        with pytest.raises(BusError, match="no handler for Ping"):
            bus.send(Ping(1))

    def test_send_when_registered_then_only_that_handler_runs_once(self) -> None:
        # Arrange
        bus, seen = Bus(), []
        bus.register(Ping, Recorder(seen, "ping"))
        bus.register(Pong, Recorder(seen, "pong"))

        # Act
        bus.send(Ping(7))

        # Assert
        assert seen == [("ping", Ping(7))]

    def test_register_when_event_type_then_raises(self) -> None:
        with pytest.raises(BusError):
            Bus().register(Happened, lambda e: None)  # type: ignore[type-var]

    def test_subscribe_when_command_type_then_raises(self) -> None:
        with pytest.raises(BusError):
            Bus().subscribe(Ping, lambda c: None)  # type: ignore[type-var]


class TestBusEvents:
    def test_publish_when_several_subscribers_then_all_called_in_order(self) -> None:
        bus, seen = Bus(), []
        bus.subscribe(Happened, Recorder(seen, "a"))
        bus.subscribe(Happened, Recorder(seen, "b"))

        bus.publish(Happened(1))

        assert seen == [("a", Happened(1)), ("b", Happened(1))]

    def test_publish_when_base_class_subscriber_then_receives_subclass_events(self) -> None:
        # Arrange
        bus, seen = Bus(), []
        bus.subscribe(OrderNew, Recorder(seen, "new"))
        bus.subscribe(OrderEvent, Recorder(seen, "any_order"))
        bus.subscribe(Event, Recorder(seen, "everything"))
        new = OrderNew(client_order_id="c1", ts=T0)
        canceled = OrderCanceled(client_order_id="c1", ts=T0)

        # Act
        bus.publish(new)
        bus.publish(canceled)
        bus.publish(Heartbeat(ts=T0))

        # Assert
        assert seen == [
            ("new", new), ("any_order", new), ("everything", new),
            ("any_order", canceled), ("everything", canceled),
            ("everything", Heartbeat(ts=T0)),
        ]

    def test_subscribe_when_added_after_first_publish_then_also_called(self) -> None:
        bus, seen = Bus(), []
        bus.subscribe(Happened, Recorder(seen, "early"))
        bus.publish(Happened(1))

        bus.subscribe(Event, Recorder(seen, "late"))
        bus.publish(Happened(2))

        assert seen[-2:] == [("early", Happened(2)), ("late", Happened(2))]

    def test_publish_when_no_subscriber_then_nothing_happens(self) -> None:
        bus = Bus()

        bus.publish(Happened(1))

        assert bus.published == 1
        assert not bus.stopped


class TestBusDispatchOrder:
    def test_publish_during_dispatch_then_queued_after_current_message(self) -> None:
        # Arrange: the first subscriber publishes while the event is being dispatched
        bus = Bus()
        seen: list[str] = []
        depth = 0

        def first(e: Happened) -> None:
            nonlocal depth
            depth += 1
            seen.append(f"first:{e.n}:depth{depth}")
            if e.n == 1:
                bus.publish(Happened(2))
                bus.send(Ping(3))
                seen.append("first:returns")
            depth -= 1

        def second(e: Happened) -> None:
            seen.append(f"second:{e.n}")

        bus.subscribe(Happened, first)
        bus.subscribe(Happened, second)
        bus.register(Ping, lambda c: seen.append(f"ping:{c.n}"))

        # Act
        bus.publish(Happened(1))

        # Assert: Happened(1) reaches every subscriber before Happened(2) starts; FIFO;
        # no handler ever runs nested inside another one.
        assert seen == [
            "first:1:depth1", "first:returns", "second:1",
            "first:2:depth1", "second:2",
            "ping:3",
        ]


class TestBusFailure:
    def test_handler_raises_then_bus_stops_records_failure_and_calls_hook(self) -> None:
        # Arrange
        failures: list[HandlerFailed] = []
        bus = Bus(on_failure=failures.append)
        seen: list[tuple[str, object]] = []
        boom = ValueError("boom")

        def explode(e: Happened) -> None:
            if e.n == 2:
                bus.publish(Happened(99))  # queued before the raise: must be dropped
                raise boom

        bus.subscribe(Happened, explode)
        bus.subscribe(Happened, Recorder(seen, "after"))

        # Act
        with capture_logs() as logs:
            bus.publish(Happened(1))
            bus.publish(Happened(2))
            bus.publish(Happened(3))

        # Assert
        assert bus.stopped
        assert isinstance(bus.failure, HandlerFailed)
        assert bus.failure.__cause__ is boom
        assert bus.failure.message_type == "Happened"
        assert "explode" in bus.failure.handler
        assert failures == [bus.failure]
        # the failing message did not reach later subscribers; nothing after it ran
        assert seen == [("after", Happened(1))]
        assert [entry["event"] for entry in logs] == ["bus.handler_failed"]
        assert logs[0]["log_level"] == "error"

    def test_send_when_bus_stopped_then_command_dropped(self) -> None:
        bus, seen = Bus(), []
        bus.subscribe(Happened, lambda e: 1 / 0)  # type: ignore[func-returns-value]
        bus.register(Ping, Recorder(seen, "ping"))
        with capture_logs():
            bus.publish(Happened(1))

        bus.send(Ping(1))

        assert bus.stopped
        assert seen == []

    def test_handler_raises_when_no_hook_then_exception_does_not_escape_publish(self) -> None:
        bus = Bus()
        bus.subscribe(Happened, lambda e: 1 / 0)  # type: ignore[func-returns-value]

        with capture_logs():
            bus.publish(Happened(1))

        assert isinstance(bus.failure, HandlerFailed)
        assert isinstance(bus.failure.__cause__, ZeroDivisionError)
