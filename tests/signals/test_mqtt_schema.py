"""Signal payload validation (no broker): worked examples per reason, and properties."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signals._mqtt_schema import (
    MALFORMED_JSON,
    NON_FINITE,
    OUT_OF_RANGE,
    REASONS,
    SCHEMA,
    TOO_LARGE,
    Limits,
    PayloadRejected,
    excerpt,
    parse_payload,
    validate_payload,
)

LIMITS = Limits()
T0 = datetime(2024, 3, 4, 14, 40, tzinfo=UTC)
OK: dict[str, Any] = {"id": "a-1", "symbol": "AAPL", "strength": 0.15, "price": 150.0,
                      "ts": "2024-03-04T14:40:00Z", "source": "runbook"}


def reason_of(payload: bytes) -> str:
    with pytest.raises(PayloadRejected) as info:
        parse_payload(payload, LIMITS)
    return info.value.reason


def body(**changes: Any) -> bytes:
    return json.dumps({**OK, **changes}).encode()


class TestParsePayloadExamples:
    def test_single_signal_when_valid_then_one_signal_with_prefixed_source(self) -> None:
        parsed = parse_payload(body(), LIMITS)
        (sig,) = parsed.signals
        assert (sig.id, sig.symbol, sig.strength, sig.price, sig.ts) == (
            "a-1", "AAPL", 0.15, 150.0, T0)
        assert parsed.source == sig.source == "mqtt:runbook"

    def test_seed_batch_when_valid_then_ids_derived_from_source_and_ts(self) -> None:
        payload = json.dumps({"ts": T0.timestamp(), "source": "runbook",
                              "signals": {"AAPL": 0.15, "MSFT": -0.2},
                              "prices": {"AAPL": 150.0, "MSFT": 300.0}}).encode()
        parsed = parse_payload(payload, LIMITS)
        assert [(s.id, s.strength, s.price) for s in parsed.signals] == [
            ("runbook:2024-03-04T14:40:00+00:00:AAPL", 0.15, 150.0),
            ("runbook:2024-03-04T14:40:00+00:00:MSFT", -0.2, 300.0)]

    def test_batch_with_id_when_valid_then_ids_are_batch_id_and_symbol(self) -> None:
        payload = json.dumps({"id": "b7", "ts": "2024-03-04T09:40:00-05:00", "source": "m",
                              "signals": {"AAPL": 0.15}, "prices": {"AAPL": 150}}).encode()
        (sig,) = parse_payload(payload, LIMITS).signals
        assert sig.id == "b7:AAPL" and sig.ts == T0

    @pytest.mark.parametrize(("payload", "reason"), [
        (b"", MALFORMED_JSON),
        (b"\xff\xfe{}", MALFORMED_JSON),
        (b'{"id": ', MALFORMED_JSON),
        (b"[" * 5000 + b"]" * 5000, MALFORMED_JSON),
        (b"[]", SCHEMA),
        (b'"AAPL"', SCHEMA),
        (b'{"id":"a","symbol":"AAPL","strength":NaN,"price":1,"ts":1709563200,"source":"s"}',
         NON_FINITE),
        (b'{"id":"a","symbol":"AAPL","strength":0.1,"price":Infinity,"ts":1709563200,'
         b'"source":"s"}', NON_FINITE),
        (b'{"id":"a","symbol":"AAPL","strength":1e999,"price":1,"ts":1709563200,"source":"s"}',
         NON_FINITE),
        (b'{"id":"a","price":' + b"9" * 5000 + b"}", OUT_OF_RANGE),
        (b"{" + b" " * LIMITS.max_bytes + b"}", TOO_LARGE),
    ])
    def test_raw_payload_when_bad_then_reason(self, payload: bytes, reason: str) -> None:
        assert reason_of(payload) == reason

    @pytest.mark.parametrize(("changes", "reason"), [
        ({"strength": 1.01}, OUT_OF_RANGE),
        ({"strength": -1.5}, OUT_OF_RANGE),
        ({"price": 0}, OUT_OF_RANGE),
        ({"price": -150.0}, OUT_OF_RANGE),
        ({"price": 1e7}, OUT_OF_RANGE),
        ({"ts": 1709563200000}, OUT_OF_RANGE),  # milliseconds, not seconds
        ({"strength": "0.15"}, SCHEMA),
        ({"strength": True}, SCHEMA),
        ({"price": None}, SCHEMA),
        ({"symbol": "aapl"}, SCHEMA),
        ({"symbol": "AAPL/#"}, SCHEMA),
        ({"id": ""}, SCHEMA),
        ({"ts": "2024-03-04T14:40:00"}, SCHEMA),  # no offset: ambiguous
        ({"ts": "yesterday"}, SCHEMA),
        ({"ts": True}, SCHEMA),
        ({"extra": 1}, SCHEMA),
    ])
    def test_single_signal_when_field_bad_then_reason(self, changes: dict[str, Any],
                                                      reason: str) -> None:
        assert reason_of(body(**changes)) == reason

    def test_missing_field_when_single_then_schema_naming_it(self) -> None:
        with pytest.raises(PayloadRejected) as info:
            parse_payload(json.dumps({k: v for k, v in OK.items() if k != "price"}).encode(),
                          LIMITS)
        assert info.value.reason == SCHEMA and info.value.detail.startswith("price:")
        assert (info.value.source, info.value.signal_id) == ("runbook", "a-1")

    def test_batch_when_symbol_has_no_price_then_schema(self) -> None:
        payload = json.dumps({"ts": 1709563200, "source": "s", "signals": {"AAPL": 0.1},
                              "prices": {"MSFT": 300.0}}).encode()
        with pytest.raises(PayloadRejected) as info:
            parse_payload(payload, LIMITS)
        assert info.value.reason == SCHEMA and "no price for AAPL" in info.value.detail

    def test_batch_when_too_many_symbols_then_out_of_range_before_validation(self) -> None:
        syms = {f"S{i}": 0.1 for i in range(LIMITS.max_batch_symbols + 1)}
        payload = json.dumps({"ts": 1709563200, "source": "s", "signals": syms,
                              "prices": dict.fromkeys(syms, 1.0)}).encode()
        assert reason_of(payload) == OUT_OF_RANGE

    def test_excerpt_when_payload_long_then_truncated_and_printable(self) -> None:
        text = excerpt(b"\xff" + b"x" * 1000, limit=10)
        assert text == "\\xff" + "x" * 9 + "..."


json_values = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


class TestParsePayloadProperties:
    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes_then_signals_or_a_known_reason_never_another_error(
        self, payload: bytes
    ) -> None:
        try:
            parse_payload(payload, LIMITS)
        except PayloadRejected as exc:
            assert exc.reason in REASONS

    @settings(max_examples=500, deadline=None)
    @given(st.dictionaries(st.sampled_from([*OK, "signals", "prices", "x"]), json_values,
                           max_size=8))
    def test_any_json_object_then_every_accepted_signal_is_sane(
        self, data: dict[str, Any]
    ) -> None:
        try:
            parsed = parse_payload(json.dumps(data).encode(), LIMITS)
        except PayloadRejected as exc:
            assert exc.reason in REASONS
            return
        for s in parsed.signals:
            assert -1 <= s.strength <= 1 and math.isfinite(s.strength)
            assert 0 < s.price <= 1_000_000 and s.ts.tzinfo is not None

    @settings(max_examples=200, deadline=None)
    @given(strength=st.floats(-1, 1), price=st.floats(0.01, 1_000_000),
           ts=st.integers(946_684_800, 4_102_444_800))
    def test_valid_single_signal_then_values_kept_exactly(
        self, strength: float, price: float, ts: int
    ) -> None:
        (sig,) = parse_payload(body(strength=strength, price=price, ts=ts), LIMITS).signals
        assert (sig.strength, sig.price, sig.ts.timestamp()) == (strength, price, ts)


def outcome(fn: Any, payload: bytes) -> Any:
    """What a parser makes of ``payload``: the parsed signals, or the refusal in full."""
    try:
        return fn(payload, LIMITS)
    except PayloadRejected as exc:
        return (exc.reason, exc.detail, exc.source, exc.signal_id)


# Values a field of a single signal may be given: right and wrong types, edges of every
# range and pattern, numbers orjson and json read differently (big integers, NaN).
field_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-1.5, 1.5),
    st.integers(-3, 3), st.integers(-(2**70), 2**70), st.booleans(), st.none(),
    st.sampled_from(["AAPL", "BRK.B", "A" * 15, "A" * 16, "aapl", "AAPL\n", "", "x:y-1_2.3",
                     "2024-03-04T14:40:00Z", "2024-03-04T14:40:00", "2024-03-04T09:40:00-05:00",
                     "\u00c4PFEL", "id with space", "x" * 128, "x" * 129, "1709563200"]),
    st.sampled_from([946_684_800, 4_102_444_800, 946_684_799, 4_102_444_801, 1709563200.5,
                     1_000_000.0, 1_000_000.0000001, 5e-324, 0.0, -0.0, 1.0, -1.0]),
    st.lists(st.integers(), max_size=2), st.text(max_size=12),
)


class TestFastPathAgreesWithValidatingPath:
    @settings(max_examples=3000, deadline=None)
    @given(changes=st.dictionaries(st.sampled_from([*OK, "extra"]), field_values, max_size=3),
           dropped=st.lists(st.sampled_from(list(OK)), max_size=2))
    def test_single_signal_variants_then_same_signals_or_same_refusal(
        self, changes: dict[str, Any], dropped: list[str]
    ) -> None:
        data = {k: v for k, v in {**OK, **changes}.items() if k not in dropped}
        payload = json.dumps(data).encode()  # NaN and Infinity as JSON's extensions
        assert outcome(parse_payload, payload) == outcome(validate_payload, payload)

    @settings(max_examples=2000, deadline=None)
    @given(edits=st.lists(st.tuples(st.integers(0, 200), st.binary(max_size=3)), max_size=3))
    def test_valid_payload_with_bytes_edited_then_same_outcome(
        self, edits: list[tuple[int, bytes]]
    ) -> None:
        payload = bytearray(body())
        for at, raw in edits:
            payload[at:at + len(raw)] = raw
        assert outcome(parse_payload, bytes(payload)) == outcome(validate_payload,
                                                                 bytes(payload))

    @settings(max_examples=500, deadline=None)
    @given(strength=st.floats(-1, 1), price=st.floats(0.01, 1_000_000),
           ts=st.floats(946_684_800, 4_102_444_800))
    def test_valid_numbers_then_fast_path_keeps_them_exactly(
        self, strength: float, price: float, ts: float
    ) -> None:
        payload = body(strength=strength, price=price, ts=ts)
        (sig,) = parse_payload(payload, LIMITS).signals
        assert (sig.strength, sig.price) == (strength, price)
        assert parse_payload(payload, LIMITS) == validate_payload(payload, LIMITS)
