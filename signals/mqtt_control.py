"""Signed control messages for ``<prefix>/control``.

The broker's passwords and ACLs (``config/mosquitto.conf``) decide who may *publish* on
the control topic; the daemon does not rely on that alone. Every control message must
carry an HMAC-SHA256, keyed with the shared ``control_secret``, over the exact bytes of
its body::

    {"body": "<JSON text>", "sig": "<hex HMAC-SHA256(secret, body UTF-8)>"}

    body = {"target": "<prefix>", "cmd": "halt", "args": {...},
            "ts": <epoch seconds>, "nonce": "<16-64 chars [A-Za-z0-9_-]>"}

The body travels as a string so that the signature covers bytes, not a re-serialisation
(JSON has no canonical form). ``target`` binds the message to one daemon, so a message
captured from one prefix cannot be replayed at another. ``ts`` must be within
``max_skew_secs`` of the daemon's wall clock, and a nonce is accepted once: every nonce
seen is remembered for twice the skew window, after which its ``ts`` alone refuses it.

Refusal reasons (``ControlRefused.reason``): ``NO_SECRET`` (control is disabled),
``TOO_LARGE``, ``MALFORMED``, ``BAD_SIGNATURE``, ``WRONG_TARGET``, ``STALE``,
``REPLAY``, ``UNKNOWN_COMMAND``, ``RATE_LIMITED``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from kernel.clock import Clock, WallClock

MAX_CONTROL_BYTES = 8 * 1024
MAX_NONCES = 10_000
_NONCE = re.compile(r"^[A-Za-z0-9_\-]{16,64}$")


class ControlRefused(Exception):
    """A control message that will not be executed; ``reason`` is a stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """A verified control message."""

    cmd: str
    args: dict[str, Any]
    ts: float
    nonce: str


def _key(secret: SecretStr | str | bytes) -> bytes:
    if isinstance(secret, SecretStr):
        secret = secret.get_secret_value()
    return secret.encode() if isinstance(secret, str) else secret


def sign_control(
    secret: SecretStr | str | bytes,
    *,
    target: str,
    cmd: str,
    ts: float,
    args: dict[str, Any] | None = None,
    nonce: str | None = None,
) -> bytes:
    """Build a signed control payload (for operators' tools, producers and tests)."""
    body = json.dumps({"target": target, "cmd": cmd, "args": args or {}, "ts": ts,
                       "nonce": nonce or secrets.token_hex(16)},
                      separators=(",", ":"), sort_keys=True)
    sig = hmac.new(_key(secret), body.encode(), hashlib.sha256).hexdigest()
    return json.dumps({"body": body, "sig": sig}).encode()


class ControlVerifier:
    """Checks signature, target, freshness and nonce of control payloads."""

    def __init__(
        self,
        secret: SecretStr | None,
        *,
        target: str,
        commands: tuple[str, ...],
        max_skew_secs: float = 30.0,
        wall_clock: Clock | None = None,
    ) -> None:
        self._key = _key(secret) if secret is not None and secret.get_secret_value() else None
        self._target = target
        self._commands = frozenset(commands)
        self._skew = max_skew_secs
        self._wall = wall_clock or WallClock()
        self._nonces: OrderedDict[str, float] = OrderedDict()

    def __repr__(self) -> str:  # never the key
        return f"ControlVerifier(target={self._target!r}, enabled={self._key is not None})"

    def verify(self, payload: bytes) -> ControlCommand:
        """The command in ``payload``, or raise ``ControlRefused``."""
        if self._key is None:
            raise ControlRefused("NO_SECRET", "no control_secret configured")
        if len(payload) > MAX_CONTROL_BYTES:
            raise ControlRefused("TOO_LARGE", f"{len(payload)} bytes")
        body, sig = self._envelope(payload)
        expected = hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig):
            raise ControlRefused("BAD_SIGNATURE")
        cmd = self._body(body)
        self._check_fresh(cmd)
        return cmd

    def _envelope(self, payload: bytes) -> tuple[str, str]:
        try:
            env = json.loads(payload)
            body, sig = env["body"], env["sig"]
        except (ValueError, KeyError, TypeError):
            raise ControlRefused("MALFORMED", "expected {\"body\": ..., \"sig\": ...}") from None
        if not isinstance(body, str) or not isinstance(sig, str) or len(sig) != 64:
            raise ControlRefused("MALFORMED", "body must be a string, sig 64 hex chars")
        return body, sig

    def _body(self, body: str) -> ControlCommand:
        # Signed by a holder of the secret, so a malformed body is a client bug, not an
        # attack; it is still refused with a reason rather than half-executed.
        try:
            data = json.loads(body)
            target, cmd, ts, nonce = data["target"], data["cmd"], data["ts"], data["nonce"]
            args = data.get("args") or {}
        except (ValueError, KeyError, TypeError):
            raise ControlRefused("MALFORMED", "body needs target, cmd, ts, nonce") from None
        if target != self._target:
            raise ControlRefused("WRONG_TARGET", f"for {str(target)[:64]!r}")
        if not (isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts)):
            raise ControlRefused("MALFORMED", "ts must be epoch seconds")
        if not (isinstance(nonce, str) and _NONCE.match(nonce)) or not isinstance(args, dict):
            raise ControlRefused("MALFORMED", "nonce must be 16-64 of [A-Za-z0-9_-]")
        if cmd not in self._commands:
            raise ControlRefused("UNKNOWN_COMMAND", f"{str(cmd)[:32]!r}")
        return ControlCommand(cmd=cmd, args=args, ts=float(ts), nonce=nonce)

    def _check_fresh(self, cmd: ControlCommand) -> None:
        now = self._wall.now().timestamp()
        if abs(now - cmd.ts) > self._skew:
            raise ControlRefused("STALE", f"ts is {now - cmd.ts:+.1f}s from now")
        nonces = self._nonces
        while nonces and next(iter(nonces.values())) < now - 2 * self._skew:
            nonces.popitem(last=False)
        if cmd.nonce in nonces:
            raise ControlRefused("REPLAY", "nonce already used")
        if len(nonces) >= MAX_NONCES:
            raise ControlRefused("RATE_LIMITED", f"{MAX_NONCES} commands in the skew window")
        nonces[cmd.nonce] = now
