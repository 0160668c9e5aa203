"""Validation of signal payloads received on ``<prefix>/signals``.

Two shapes are accepted, both JSON objects (UTF-8):

* one signal: ``{"id", "symbol", "strength", "price", "ts", "source"}``;
* a batch: ``{"ts", "source", "signals": {"AAPL": 0.15, ...}, "prices": {"AAPL": 150.0,
  ...}}`` with an optional ``"id"``. Every symbol in ``signals`` needs a price. Each
  signal's id is ``<id>:<symbol>`` when the batch has an id, else
  ``<source>:<ts ISO-8601>:<symbol>``, so a re-sent batch carries the same ids.

``ts`` is an ISO-8601 string with a UTC offset, or epoch seconds. Strength is in
[-1, 1], prices in (0, 1,000,000]. Unknown keys are refused: a typo must not pass
silently as a default.

Every refusal is a ``PayloadRejected`` with a stable reason code (``REASONS``). The order
of checks matters: the size is checked on the raw bytes *before* anything is parsed, so
a 1 MB body costs a ``len()``, not a parse.

Two paths, one answer: a single signal that is valid in every respect is taken by a fast
path (orjson, then the same checks written out: exact keys, patterns, finite numbers in
range, the same timestamp rules), about a quarter of the cost of pydantic. Anything it is
not sure of, including everything invalid, goes to the validating path, which alone
decides the reason code. The fast path accepts only what the validating path accepts,
with the same result (``tests/signals/test_mqtt_schema.py`` checks them against each
other).
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from kernel.model import Signal

MALFORMED_JSON = "MALFORMED_JSON"
SCHEMA = "SCHEMA"
TOO_LARGE = "TOO_LARGE"
NON_FINITE = "NON_FINITE"
OUT_OF_RANGE = "OUT_OF_RANGE"
QUEUE_FULL = "QUEUE_FULL"
REASONS = (MALFORMED_JSON, SCHEMA, TOO_LARGE, NON_FINITE, OUT_OF_RANGE, QUEUE_FULL)

MAX_PRICE = 1_000_000.0
# Epoch seconds accepted for ``ts``: 2000-01-01 .. 2100-01-01. Anything else is far more
# likely milliseconds or garbage than a real signal time.
_EPOCH_MIN, _EPOCH_MAX = 946_684_800, 4_102_444_800
_MAX_INT_DIGITS = 20
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal",
                           "out_of_range", "too_long"})


class PayloadRejected(Exception):
    """A payload that does not become a signal: ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, detail: str, *, source: str | None = None,
                 signal_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.source = source
        self.signal_id = signal_id


class _NonFinite(ValueError):
    pass


class _TooBig(ValueError):
    pass


def _parse_constant(name: str) -> float:
    raise _NonFinite(name)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise _NonFinite(text[:32])
    return value


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:  # would also hit the 4300-digit guard
        raise _TooBig(f"{text[:16]}... ({len(text)} digits)")
    return int(text)


def _to_datetime(value: Any) -> datetime:
    if isinstance(value, bool):
        raise PydanticCustomError("ts_type", "ts must be ISO-8601 text or epoch seconds")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not _EPOCH_MIN <= value <= _EPOCH_MAX:
            raise PydanticCustomError("out_of_range", "epoch seconds out of range")
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str) and len(value) <= 40:
        try:
            ts = datetime.fromisoformat(value)
        except ValueError:
            raise PydanticCustomError("ts_format", "ts is not ISO-8601") from None
        if ts.tzinfo is None:
            raise PydanticCustomError("ts_naive", "ts needs a UTC offset (e.g. Z or +00:00)")
        return ts.astimezone(UTC)
    raise PydanticCustomError("ts_type", "ts must be ISO-8601 text or epoch seconds")


Symbol = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9.\-]{0,14}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$")]
SignalId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:\-]{1,128}$")]
Strength = Annotated[float, Field(ge=-1.0, le=1.0, allow_inf_nan=False)]
Price = Annotated[float, Field(gt=0.0, le=MAX_PRICE, allow_inf_nan=False)]
Timestamp = Annotated[datetime, BeforeValidator(_to_datetime)]


class _Strict(BaseModel):
    # strict: "0.15" is not a number and true is not 1; forbid: unknown keys are typos.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class SignalIn(_Strict):
    """One signal on the wire."""

    id: SignalId
    symbol: Symbol
    strength: Strength
    price: Price
    ts: Timestamp
    source: Name


class BatchIn(_Strict):
    """A batch of strengths with their reference prices, all made at ``ts``."""

    ts: Timestamp
    source: Name
    signals: dict[Symbol, Strength] = Field(min_length=1)
    prices: dict[Symbol, Price]
    id: SignalId | None = None

    @model_validator(mode="after")
    def _every_signal_priced(self) -> BatchIn:
        missing = sorted(set(self.signals) - set(self.prices))
        if missing:
            raise PydanticCustomError("missing_price", "no price for {symbols}",
                                      {"symbols": ",".join(missing[:5])})
        return self


@dataclass(frozen=True, slots=True)
class Parsed:
    """The signals of one accepted payload (``source`` as the producer named it)."""

    ts: datetime
    source: str
    signals: tuple[Signal, ...]


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 64 * 1024
    max_batch_symbols: int = 1000
    source_prefix: str = "mqtt:"


def parse_payload(payload: bytes, limits: Limits) -> Parsed:
    """Turn one message body into signals, or raise ``PayloadRejected``."""
    if len(payload) > limits.max_bytes:
        raise PayloadRejected(TOO_LARGE, f"{len(payload)} bytes > {limits.max_bytes}")
    return _fast_single(payload, limits.source_prefix) or validate_payload(payload, limits)


def validate_payload(payload: bytes, limits: Limits) -> Parsed:
    """The validating path (pydantic): every payload the fast path does not take."""
    data = _load_json(payload)
    if not isinstance(data, dict):
        raise PayloadRejected(SCHEMA, f"expected a JSON object, got {type(data).__name__}")
    source, sid = _label(data.get("source")), _label(data.get("id"))
    try:
        if "signals" in data:
            signals = data["signals"]
            if isinstance(signals, dict) and len(signals) > limits.max_batch_symbols:
                raise PayloadRejected(OUT_OF_RANGE, f"{len(signals)} symbols in one batch > "
                                      f"{limits.max_batch_symbols}", source=source, signal_id=sid)
            return _from_batch(BatchIn.model_validate(data), limits.source_prefix)
        return _from_single(SignalIn.model_validate(data), limits.source_prefix)
    except ValidationError as exc:
        reason, detail = _classify(exc)
        raise PayloadRejected(reason, detail, source=source, signal_id=sid) from None


def _load_json(payload: bytes) -> Any:
    try:
        text = payload.decode("utf-8")
        return json.loads(text, parse_constant=_parse_constant, parse_float=_parse_float,
                          parse_int=_parse_int)
    except _NonFinite as exc:
        raise PayloadRejected(NON_FINITE, f"non-finite number {exc}") from None
    except _TooBig as exc:
        raise PayloadRejected(OUT_OF_RANGE, f"integer too large: {exc}") from None
    except UnicodeDecodeError as exc:
        raise PayloadRejected(MALFORMED_JSON, f"not UTF-8 at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise PayloadRejected(MALFORMED_JSON, f"{exc.msg} at {exc.pos}") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, other number errors
        raise PayloadRejected(MALFORMED_JSON, type(exc).__name__) from None


def _label(value: Any) -> str | None:
    """A producer-supplied name, kept only if it is a short string (for reject reports)."""
    return value[:64] if isinstance(value, str) else None


def _classify(exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    kinds = {e["type"] for e in errors}
    if "finite_number" in kinds:
        reason = NON_FINITE
    elif kinds <= _RANGE_ERRORS:
        reason = OUT_OF_RANGE
    else:
        reason = SCHEMA
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return reason, f"{loc}: {first['msg']}{more}"[:200]


_SINGLE_KEYS = frozenset(SignalIn.model_fields)
# The patterns of the Symbol, Name and SignalId types, matched against the whole string.
_SYMBOL = re.compile(r"[A-Z][A-Z0-9.\-]{0,14}")
_NAME = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")
_SIGNAL_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


def _fast_single(payload: bytes, prefix: str) -> Parsed | None:
    """A single signal valid in every respect, or None (see the module doc).

    orjson refuses what ``_load_json`` would call NON_FINITE (NaN, Infinity, 1e999) and
    reads integers beyond 64 bits as floats, which no range here accepts: both end up on
    the validating path, which names the reason."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(data) is not dict or data.keys() != _SINGLE_KEYS:
        return None
    sid, symbol, source = data["id"], data["symbol"], data["source"]
    strength, price = data["strength"], data["price"]
    if not (type(sid) is str and type(symbol) is str and type(source) is str
            and type(strength) in (float, int) and type(price) in (float, int)
            and -1.0 <= strength <= 1.0 and 0.0 < price <= MAX_PRICE
            and _SIGNAL_ID.fullmatch(sid) and _SYMBOL.fullmatch(symbol)
            and _NAME.fullmatch(source)):
        return None  # also NaN: every comparison with it is False
    stamp = data["ts"]
    ts = _fast_ts(stamp) if type(stamp) in (str, int, float) else None  # hashable only
    if ts is None:
        return None
    source = prefix + source
    sig = Signal(id=sid, symbol=symbol, strength=float(strength), price=float(price), ts=ts,
                 source=source)
    return Parsed(ts=ts, source=source, signals=(sig,))


@functools.lru_cache(maxsize=64, typed=True)  # typed: True and 1 are different inputs
def _fast_ts(value: object) -> datetime | None:
    """``_to_datetime`` or None; producers repeat timestamps, hence the cache."""
    try:
        return _to_datetime(value)
    except PydanticCustomError:
        return None


def _from_single(m: SignalIn, prefix: str) -> Parsed:
    source = prefix + m.source
    sig = Signal(id=m.id, symbol=m.symbol, strength=m.strength, price=m.price, ts=m.ts,
                 source=source)
    return Parsed(ts=m.ts, source=source, signals=(sig,))


def _from_batch(m: BatchIn, prefix: str) -> Parsed:
    source = prefix + m.source
    stem = m.id or f"{m.source}:{m.ts.isoformat()}"
    signals = tuple(
        Signal(id=f"{stem}:{sym}", symbol=sym, strength=strength, price=m.prices[sym],
               ts=m.ts, source=source)
        for sym, strength in m.signals.items()
    )
    return Parsed(ts=m.ts, source=source, signals=signals)


def excerpt(payload: bytes, limit: int = 160) -> str:
    """The start of a payload, printable, for reject reports (never the whole body)."""
    head = payload[:limit].decode("utf-8", errors="backslashreplace")
    return head + ("..." if len(payload) > limit else "")
