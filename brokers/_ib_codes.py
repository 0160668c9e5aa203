"""TWS message codes: what each means for an order or the session, and the mapping of
codes to the project's exception tree (ib-protocol.md, "Errors that matter").

No ``ib_async`` import: codes arrive as plain ints from the adapter's error callback.

=========================  ==============================================================
kind                       codes and handling
=========================  ==============================================================
``REJECTED``               201, 203, 10289, 10293: the order was refused (definite):
                           ``OrderRejected`` with the code and message
``CANCELED``               202: the order was cancelled (``OrderCanceled``)
``CANCEL_REFUSED``         161, 10147, 10148: a cancel came too late or for an unknown
                           order (``OrderCancelRejected``; the order's own status decides)
``DUPLICATE_ID``           103: the orderId was used before; the order is looked up by
                           orderRef and, if absent, placed again under a new orderId
``CLIENT_ID_IN_USE``       326: another session holds the client id: a clear error, no
                           fight (``BrokerAuthError`` at start, slow retries later)
``LINK_LOST``              1100, 1300, 2110: TWS lost IB's servers: stop submitting
``LINK_RESTORED``          1101, 1102: back: catch up and reconcile
``INFO``                   2104, 2106, 2107, 2108, 2158 (farm notices) and 2100-2199
``WARNING``                105, 110, 165, 321, 329, 399, 404, 434, 492, 10167: the order
                           stays live; logged (110 refuses an order not yet acknowledged)
``ERROR``                  anything else: for an unacknowledged order a refusal, else logged
=========================  ==============================================================
"""

from __future__ import annotations

import enum

from kernel.errors import (
    AmbiguousSubmission,
    BrokerAuthError,
    BrokerError,
    BrokerRejected,
    BrokerUnavailable,
)

DUPLICATE_ORDER_ID = 103
CLIENT_ID_IN_USE = 326
ORDER_CANCELED = 202


class IbCode(enum.StrEnum):
    REJECTED = "rejected"
    CANCELED = "canceled"
    CANCEL_REFUSED = "cancel_refused"
    DUPLICATE_ID = "duplicate_id"
    CLIENT_ID_IN_USE = "client_id_in_use"
    LINK_LOST = "link_lost"
    LINK_RESTORED = "link_restored"
    NOT_CONNECTED = "not_connected"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


_KINDS: dict[int, IbCode] = {
    **dict.fromkeys((201, 203, 10289, 10293), IbCode.REJECTED),
    ORDER_CANCELED: IbCode.CANCELED,
    **dict.fromkeys((161, 10147, 10148), IbCode.CANCEL_REFUSED),
    DUPLICATE_ORDER_ID: IbCode.DUPLICATE_ID,
    CLIENT_ID_IN_USE: IbCode.CLIENT_ID_IN_USE,
    **dict.fromkeys((1100, 1300, 2110), IbCode.LINK_LOST),
    **dict.fromkeys((1101, 1102), IbCode.LINK_RESTORED),
    **dict.fromkeys((502, 504), IbCode.NOT_CONNECTED),
    **dict.fromkeys((105, 110, 165, 321, 329, 399, 404, 434, 492, 10167), IbCode.WARNING),
}
# Farm and connection notices that come with every healthy session.
_INFO = frozenset({2104, 2106, 2107, 2108, 2119, 2158})


def classify(code: int) -> IbCode:
    """What a TWS message code means (see the module table)."""
    kind = _KINDS.get(code)
    if kind is not None:
        return kind
    if code in _INFO:
        return IbCode.INFO
    if 2100 <= code < 2200:
        return IbCode.WARNING
    return IbCode.ERROR


def is_refusal(code: int) -> bool:
    """A code that means an order TWS has not yet acknowledged was not taken: any error
    that is not a warning, a notice or 103, and 110 (a price off the tick grid: a live
    order keeps working, a new one is refused, as ib_async also reads it)."""
    return code == 110 or classify(code) in (IbCode.REJECTED, IbCode.ERROR,
                                              IbCode.NOT_CONNECTED)


def error_for(code: int, message: str, *, what: str) -> BrokerError:
    """The project exception for a TWS error code met while doing ``what``."""
    text = f"IB {what}: error {code}: {message}"
    match classify(code):
        case IbCode.CLIENT_ID_IN_USE:
            return BrokerAuthError(text, code=code)
        case IbCode.LINK_LOST | IbCode.NOT_CONNECTED:
            return BrokerUnavailable(text, code=code)
        case IbCode.DUPLICATE_ID:
            return AmbiguousSubmission(text, code=code)
        case _:
            return BrokerRejected(text, code=code)


__all__ = ["CLIENT_ID_IN_USE", "DUPLICATE_ORDER_ID", "ORDER_CANCELED", "IbCode", "classify",
           "error_for", "is_refusal"]
