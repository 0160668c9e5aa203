"""Signed control messages (no broker): signature, target, freshness, replay."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr

from kernel.clock import ReplayClock
from signals.mqtt_control import ControlRefused, ControlVerifier, sign_control

SECRET = "s3cret-control-key-0123"
NOW = datetime(2024, 3, 4, 14, 40, tzinfo=UTC)
COMMANDS = ("halt", "resume", "emergency-stop", "liquidate")


def verifier(secret: str | None = SECRET, clock: ReplayClock | None = None) -> ControlVerifier:
    return ControlVerifier(SecretStr(secret) if secret is not None else None,
                           target="tradingd", commands=COMMANDS, max_skew_secs=30,
                           wall_clock=clock or ReplayClock(NOW))


def signed(**kw: object) -> bytes:
    args: dict[str, object] = {"target": "tradingd", "cmd": "halt", "ts": NOW.timestamp(),
                               "nonce": "n" * 16, **kw}
    return sign_control(SECRET, **args)  # type: ignore[arg-type]


def refusal(v: ControlVerifier, payload: bytes) -> str:
    with pytest.raises(ControlRefused) as info:
        v.verify(payload)
    return info.value.reason


class TestControlVerifier:
    def test_signed_when_fresh_then_command_with_args(self) -> None:
        cmd = verifier().verify(signed(args={"why": "drill"}))
        assert (cmd.cmd, cmd.args, cmd.nonce) == ("halt", {"why": "drill"}, "n" * 16)

    def test_signature_when_forged_or_wrong_key_then_bad_signature(self) -> None:
        forged = json.loads(signed())
        forged["sig"] = "0" * 64
        assert refusal(verifier(), json.dumps(forged).encode()) == "BAD_SIGNATURE"
        other = sign_control("another-key-xyz", target="tradingd", cmd="halt",
                             ts=NOW.timestamp())
        assert refusal(verifier(), other) == "BAD_SIGNATURE"

    def test_body_when_altered_after_signing_then_bad_signature(self) -> None:
        env = json.loads(signed())
        env["body"] = env["body"].replace("halt", "liquidate")
        assert refusal(verifier(), json.dumps(env).encode()) == "BAD_SIGNATURE"

    def test_same_message_when_seen_twice_then_replay(self) -> None:
        v = verifier()
        v.verify(signed())
        assert refusal(v, signed()) == "REPLAY"

    def test_ts_when_outside_skew_then_stale(self) -> None:
        assert refusal(verifier(), signed(ts=NOW.timestamp() - 31)) == "STALE"
        assert refusal(verifier(), signed(ts=NOW.timestamp() + 31)) == "STALE"

    def test_old_nonces_when_window_passed_then_forgotten_and_ts_refuses(self) -> None:
        clock = ReplayClock(NOW)
        v = verifier(clock=clock)
        v.verify(signed())
        clock.advance(61)
        v.verify(signed(ts=clock.now().timestamp(), nonce="m" * 16))  # purges the first
        assert refusal(v, signed()) == "STALE"

    def test_target_when_other_daemon_then_wrong_target(self) -> None:
        assert refusal(verifier(), signed(target="desk-b")) == "WRONG_TARGET"

    def test_command_when_not_allowed_then_unknown_command(self) -> None:
        assert refusal(verifier(), signed(cmd="mode")) == "UNKNOWN_COMMAND"

    @pytest.mark.parametrize("payload", [b"", b"halt", b"{}", b'{"body": 1, "sig": "x"}',
                                         b"[" * 10])
    def test_envelope_when_malformed_then_malformed(self, payload: bytes) -> None:
        assert refusal(verifier(), payload) == "MALFORMED"

    def test_no_secret_when_configured_then_everything_refused(self) -> None:
        assert refusal(verifier(secret=None), signed()) == "NO_SECRET"
        assert refusal(verifier(secret=""), signed()) == "NO_SECRET"

    def test_huge_payload_then_too_large_before_parsing(self) -> None:
        assert refusal(verifier(), b"{" + b" " * 10_000 + b"}") == "TOO_LARGE"

    def test_repr_when_printed_then_no_secret(self) -> None:
        assert SECRET not in repr(verifier()) and "enabled=True" in repr(verifier())
