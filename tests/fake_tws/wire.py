"""The TWS socket protocol as the fake speaks it: framing, and the field layouts of the
messages at server version 178 (what a real Gateway negotiates with ib_async 2.1, whose
client range is 157..178).

Framing: the client opens with ``API\\0`` and a length-prefixed ``v157..178``; the
server answers ``<version>\\0<connection time>\\0``. After that every message is a
4-byte big-endian length and null-terminated ASCII fields, the first the message id.
The layouts follow ib_async's ``decoder.py`` (the reference for what the client
expects): at 178 there is no ``faProfile`` (gone at 177), the error message carries an
``advancedOrderRejectJson`` (166+), ``openOrder``/``completedOrder`` end with the
PEG BEST/MID fields (170+) and ``execDetails`` with ``pendingPriceRevision`` (178).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

SERVER_VERSION = 178
MIN_CLIENT_VERSION = 157  # the oldest version the fake accepts in a client's range

# Message ids, server -> client.
ORDER_STATUS, ERR, OPEN_ORDER, ACCT_VALUE, PORTFOLIO, ACCT_TIME = 3, 4, 5, 6, 7, 8
NEXT_VALID_ID, EXEC_DETAILS, MANAGED_ACCTS, CURRENT_TIME = 9, 11, 15, 49
OPEN_ORDER_END, ACCT_DOWNLOAD_END, EXEC_DETAILS_END = 53, 54, 55
COMMISSION_REPORT, POSITION, POSITION_END = 59, 61, 62
ACCT_SUMMARY, ACCT_SUMMARY_END, ACCT_UPDATE_MULTI, ACCT_UPDATE_MULTI_END = 63, 64, 73, 74
COMPLETED_ORDER, COMPLETED_ORDERS_END = 101, 102


def text(value: Any) -> str:
    """One field as TWS writes it: booleans 1/0, decimals without exponent, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f") if value else "0"
    return str(value)


def frame(fields: Iterable[Any]) -> bytes:
    payload = "".join(text(f) + "\0" for f in fields).encode()
    return struct.pack(">I", len(payload)) + payload


def split(payload: bytes) -> list[str]:
    fields = payload.decode(errors="backslashreplace").split("\0")
    return fields[:-1] if fields and fields[-1] == "" else fields


def negotiate(hello: str) -> int | None:
    """The version to speak for a client's ``v<min>..<max>[ options]``; None if none."""
    try:
        lo, hi = hello.split(" ", 1)[0].removeprefix("v").split("..")
        low, high = int(lo), int(hi)
    except ValueError:
        return None
    version = min(high, SERVER_VERSION)
    return version if version >= max(low, MIN_CLIENT_VERSION) else None


# -- orders --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Placed:
    """The fields of a ``placeOrder`` the fake uses (the rest it ignores)."""

    order_id: int
    symbol: str
    sec_type: str
    exchange: str
    currency: str
    action: str
    qty: Decimal
    order_type: str
    lmt_price: Decimal | None
    aux_price: Decimal | None
    tif: str
    account: str
    order_ref: str
    transmit: bool
    outside_rth: bool


def _dec(field: str) -> Decimal | None:
    return Decimal(field) if field not in ("", "1.7976931348623157E308",
                                            "1.7976931348623157e+308") else None


def parse_place(f: list[str]) -> Placed:
    """``placeOrder``: id, the contract (12 fields), secIdType, secId, then the order."""
    return Placed(
        order_id=int(f[1]), symbol=f[3], sec_type=f[4], exchange=f[9], currency=f[11],
        action=f[16], qty=Decimal(f[17] or "0"), order_type=f[18], lmt_price=_dec(f[19]),
        aux_price=_dec(f[20]), tif=f[21], account=f[23], order_ref=f[26],
        transmit=f[27] != "0", outside_rth=f[33] == "1",
    )


def contract(con_id: int, symbol: str, exchange: str = "SMART") -> list[Any]:
    """conId, symbol, secType, lastTradeDate, strike, right, multiplier, exchange,
    currency, localSymbol, tradingClass (the layout of openOrder, execDetails, position)."""
    return [con_id, symbol, "STK", "", 0, "", "", exchange, "USD", symbol, "NMS"]


@dataclass(frozen=True, slots=True)
class OrderFields:
    """What ``openOrder`` and ``completedOrder`` say about an order."""

    order_id: int
    client_id: int
    perm_id: int
    con_id: int
    symbol: str
    action: str
    qty: Decimal
    order_type: str
    lmt_price: Decimal | None
    aux_price: Decimal | None
    tif: str
    account: str
    order_ref: str
    outside_rth: bool
    status: str
    filled: Decimal
    completed_time: str = ""
    completed_status: str = ""


def open_order(o: OrderFields) -> list[Any]:
    head = [OPEN_ORDER, o.order_id, *contract(o.con_id, o.symbol), o.action, o.qty,
            o.order_type, o.lmt_price, o.aux_price, o.tif, "", o.account, "O", 0,
            o.order_ref, o.client_id, o.perm_id, o.outside_rth, False, 0, "", "",
            "", "", ""]
    # modelCode .. deltaNeutralAuxPrice (29 fields; deltaNeutralOrderType empty)
    middle = ["", "", "", "", "", 0, "", -1, 0, "", "", "", "", "", 0, False, False,
              False, "", 0, False, False, "", 0, 0, "", 0, "", ""]
    tail = [False, 0, "", "", "", "", "",  # continuousUpdate .. comboLegsDescrip
            0, 0, 0,  # combo legs, order combo legs, smart combo routing params
            "", "", "",  # scaleInitLevelSize, scaleSubsLevelSize, scalePriceIncrement
            "",  # hedgeType
            False, "", "", False, 0,  # optOutSmartRouting .. dncPresent
            "",  # algoStrategy
            False, False, o.status, "", "", "", "", "", "", "", "", "", "", "", "", "", "",
            False, False,  # randomizeSize, randomizePrice
            0,  # conditions
            "", "", "", "", "", "", "", 0, "", "", "", "", False, False, "", False,
            "", "", "",  # duration, postToAts, autoCancelParent
            "", "", "", "", ""]  # minTradeQty .. midOffsetAtHalf
    return head + middle + tail


def completed_order(o: OrderFields) -> list[Any]:
    head = [COMPLETED_ORDER, *contract(o.con_id, o.symbol), o.action, o.qty, o.order_type,
            o.lmt_price, o.aux_price, o.tif, "", o.account, "O", 0, o.order_ref, o.perm_id,
            o.outside_rth, False, 0, "", "", "", ""]
    # modelCode .. deltaNeutralAuxPrice (23 fields; deltaNeutralOrderType empty)
    middle = ["", "", "", "", "", 0, "", -1, "", "", "", "", "", 0, False, False, "", 0,
              0, "", 0, "", ""]
    tail = [False, 0, "", "", "",  # continuousUpdate .. comboLegsDescrip
            0, 0, 0, "", "", "", "",  # legs, params, scale sizes, increment, hedgeType
            "", "", False, 0, "",  # clearingAccount, clearingIntent, notHeld, dnc, algo
            False, o.status, False, False,  # solicited, status, randomize size/price
            0,  # conditions
            "", "", "", False, False, "", o.filled, "", False, "", False, False, "",
            o.completed_time, o.completed_status,
            "", "", "", "", ""]  # minTradeQty .. midOffsetAtHalf
    return head + middle + tail


def order_status(order_id: int, status: str, filled: Decimal, remaining: Decimal,
                 avg_price: Decimal, perm_id: int, last_price: Decimal,
                 client_id: int) -> list[Any]:
    return [ORDER_STATUS, order_id, status, filled, remaining, avg_price, perm_id, 0,
            last_price, client_id, "", ""]


@dataclass(frozen=True, slots=True)
class ExecFields:
    exec_id: str
    order_id: int
    client_id: int
    perm_id: int
    con_id: int
    symbol: str
    time: str
    account: str
    side: str  # BOT | SLD
    shares: Decimal
    price: Decimal
    cum_qty: Decimal
    avg_price: Decimal
    order_ref: str


def exec_details(req_id: int, e: ExecFields) -> list[Any]:
    return [EXEC_DETAILS, req_id, e.order_id, *contract(e.con_id, e.symbol, "ISLAND"),
            e.exec_id, e.time, e.account, "ISLAND", e.side, e.shares, e.price, e.perm_id,
            e.client_id, 0, e.cum_qty, e.avg_price, e.order_ref, "", "", "", 1, False]


def commission_report(exec_id: str, commission: Decimal) -> list[Any]:
    return [COMMISSION_REPORT, 1, exec_id, commission, "USD", "", "", ""]


def error(req_id: int, code: int, message: str) -> list[Any]:
    return [ERR, 2, req_id, code, message, ""]


# -- account -------------------------------------------------------------------------------


def position(account: str, con_id: int, symbol: str, qty: Decimal,
             avg_cost: Decimal) -> list[Any]:
    return [POSITION, 3, account, *contract(con_id, symbol), qty, avg_cost]


def portfolio(account: str, con_id: int, symbol: str, qty: Decimal, price: Decimal,
              avg_cost: Decimal) -> list[Any]:
    value = qty * price
    return [PORTFOLIO, 8, con_id, symbol, "STK", "", 0, "", "", "NASDAQ", "USD", symbol,
            "NMS", qty, price, value, avg_cost, value - qty * avg_cost, 0, account]


def account_value(account: str, tag: str, value: Any, currency: str = "USD") -> list[Any]:
    return [ACCT_VALUE, 2, tag, value, currency, account]


__all__ = ["SERVER_VERSION", "ExecFields", "OrderFields", "Placed", "account_value",
           "commission_report", "completed_order", "error", "exec_details", "frame",
           "negotiate", "open_order", "order_status", "parse_place", "portfolio",
           "position", "split", "text"]
