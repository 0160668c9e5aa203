"""The one exception tree of tradingd.

Risk refusals are *events* (``OrderDenied``), never exceptions. Exceptions are for
programming errors, invalid input at a boundary, and broker failures::

    TradingdError
    ├── ConfigError                 invalid configuration (names key, value, expectation)
    ├── OrderError
    │   ├── InvalidOrderTransition  an event is not legal in the order's current status
    │   └── OverfillError           a fill would take filled qty above the order qty
    ├── BusError
    │   └── HandlerFailed           a subscriber raised: the daemon stops in order
    └── BrokerError                 anything a broker adapter raises (vendor errors mapped here)
        ├── BrokerAuthError         keys missing or rejected: not retried
        ├── BrokerRejected          the broker refused a request (4xx with a reason)
        ├── BrokerUnavailable       transient: 5xx, 429, connection refused; safe to retry
        └── AmbiguousSubmission     a submit may or may not have taken effect: look it up
"""

from __future__ import annotations


class TradingdError(Exception):
    """Root of every exception tradingd raises on purpose."""


class ConfigError(TradingdError):
    """Invalid configuration; the message names the key, the value and what is expected."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        self.key = key
        self.value = value
        self.expected = expected
        super().__init__(f"config error: {key}={value!r}: {expected}")


class OrderError(TradingdError):
    """An order could not take an event."""

    def __init__(self, message: str, *, client_order_id: str) -> None:
        self.client_order_id = client_order_id
        super().__init__(f"{client_order_id}: {message}")


class InvalidOrderTransition(OrderError):
    """The event is not legal from the order's current status (see ``ORDER_TRANSITIONS``)."""


class OverfillError(OrderError):
    """A fill would take the filled quantity above the order quantity."""


class BusError(TradingdError):
    """Something went wrong on the event bus."""


class HandlerFailed(BusError):
    """A handler raised while processing a message; the daemon stops in order."""

    def __init__(self, handler: str, message: object, cause: BaseException) -> None:
        self.handler = handler
        self.message_type = type(message).__name__
        super().__init__(f"handler {handler} failed on {self.message_type}: {cause!r}")


class BrokerError(TradingdError):
    """A broker call failed. ``retryable`` says whether the same call may simply be repeated."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class BrokerAuthError(BrokerError):
    """Credentials missing or rejected. Never retried: a retry storm helps nobody."""


class BrokerRejected(BrokerError):
    """The broker refused the request for a stated reason (insufficient buying power, ...)."""


class BrokerUnavailable(BrokerError):
    """A transient failure (5xx before effect, 429, connection refused)."""

    retryable = True


class AmbiguousSubmission(BrokerError):
    """A submit may have taken effect (timeout, reset, 5xx after sending).

    The order stays in flight and is resolved by looking it up by ``client_order_id``;
    it is never re-sent blindly.
    """
