"""Transport policy for the Alpaca adapter: error mapping, rate budget, secret scrubbing,
and the bounded timing rings the round-trip benchmark reads.

Kept free of ``alpaca`` imports: the adapter hands in what it caught (HTTP status and
body text, or a ``requests`` exception) and gets one of our ``BrokerError``s back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

from kernel.errors import (
    AmbiguousSubmission,
    BrokerAuthError,
    BrokerError,
    BrokerRejected,
    BrokerUnavailable,
)

# Alpaca's code for a duplicate client_order_id, and for many plain validation errors.
DUPLICATE_CID_CODE = 40010001
_DUPLICATE_MESSAGES = ("client_order_id must be unique", "client order id must be unique")
_AUTH_HINT = "check APCA_API_KEY_ID / APCA_API_SECRET_KEY and that base_url matches the keys"


class Scrubber:
    """Replaces secrets in any text with ``***`` (keys must never reach logs or errors)."""

    def __init__(self, *secrets: str | None) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text


class ScrubFilter(logging.Filter):
    """A logging filter that scrubs secrets from the rendered message of every record.

    Installed on the third-party loggers that could see them (websockets frame debug
    logs carry the auth message; urllib3 logs URLs).
    """

    LOGGERS = (
        "alpaca", "alpaca.trading.stream", "alpaca.data.live.websocket",
        "alpaca.common.rest", "websockets", "websockets.client", "websockets.protocol",
        "urllib3", "urllib3.connectionpool", "requests",
    )

    def __init__(self, scrub: Scrubber) -> None:
        super().__init__("tradingd.scrub")
        self._scrub = scrub

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed third-party record: leave it as it is
            return True
        clean = self._scrub(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_text:
            record.exc_text = self._scrub(record.exc_text)
        return True

    def install(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)

    def uninstall(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


def parse_error_body(text: str) -> tuple[int | None, str]:
    """``(code, message)`` from an Alpaca error body; tolerant of non-JSON bodies
    (``APIError.code``/``.message`` raise on those, so we never call them)."""
    try:
        body = json.loads(text)
    except (ValueError, TypeError):
        return None, text.strip()[:200]
    if not isinstance(body, dict):
        return None, text.strip()[:200]
    code = body.get("code")
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    return code, str(body.get("message") or text.strip()[:200])


def is_duplicate_cid(err: BrokerError) -> bool:
    """True only when the refusal says the ``client_order_id`` is taken (an earlier try
    landed: look it up). The code alone proves nothing: Alpaca answers validation errors
    ("qty must be > 0", ...) with the same 422/40010001, and those are refusals."""
    msg = str(err).lower()
    return err.status == 422 and any(m in msg for m in _DUPLICATE_MESSAGES)


def map_http_error(
    status: int, body: str, *, what: str, effectful: bool, scrub: Scrubber
) -> BrokerError:
    """One place that turns an HTTP error into our tree.

    ``effectful`` marks calls that change state (POST/PATCH): a 5xx there may have
    taken effect, so it is ambiguous rather than merely unavailable.
    """
    code, message = parse_error_body(scrub(body))
    text = f"{what}: HTTP {status}: {message}"
    if status == 401 or (status == 403 and code is None):
        return BrokerAuthError(f"{text} ({_AUTH_HINT})", status=status, code=code)
    if status == 429:
        return BrokerUnavailable(f"{text} (rate limited)", status=status, code=code)
    if status >= 500:
        cls = AmbiguousSubmission if effectful else BrokerUnavailable
        return cls(text, status=status, code=code)
    return BrokerRejected(text, status=status, code=code)


def map_transport_error(
    exc: BaseException, *, what: str, effectful: bool, scrub: Scrubber
) -> BrokerError:
    """``requests`` failures: a refused connection certainly sent nothing; a read
    timeout or a reset after sending may have taken effect."""
    text = f"{what}: {type(exc).__name__}: {scrub(str(exc))[:300]}"
    if isinstance(exc, requests.ConnectTimeout) or _refused(exc):
        return BrokerUnavailable(text)
    if effectful:
        return AmbiguousSubmission(text)
    return BrokerUnavailable(text)


def _refused(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: Any = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError) or type(cur).__name__ == "NewConnectionError":
            return True
        nxt = getattr(cur, "reason", None) or cur.__cause__ or cur.__context__
        if nxt is None and cur.args and isinstance(cur.args[0], BaseException):
            nxt = cur.args[0]
        cur = nxt
    return False


class RateBudget:
    """At most ``per_minute`` requests in any rolling 60 s (Alpaca's per-key limit).

    A sliding log rather than a refilling bucket, because the server counts requests
    per rolling minute: a bucket of full capacity would allow twice the limit in the
    first minute. Callers wait (on the loop) instead of being answered 429.
    """

    def __init__(self, per_minute: int, window: float = 60.0) -> None:
        self._limit = per_minute
        self._window = window
        self._stamps: deque[float] = deque()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                while self._stamps and now - self._stamps[0] >= self._window:
                    self._stamps.popleft()
                if len(self._stamps) < self._limit:
                    self._stamps.append(now)
                    return
                await asyncio.sleep(self._window - (now - self._stamps[0]))


def ws_url(http_url: str, path: str, *, data: bool = False) -> str:
    """``http(s)://host[:port]`` to ``ws(s)://host[:port]<path>``.

    Alpaca's public market-data socket lives on ``stream.<data host>``; any other host
    (an emulator, a proxy) serves it on the same host.
    """
    parts = urlsplit(http_url.rstrip("/"))
    scheme = "wss" if parts.scheme == "https" else "ws"
    host = parts.netloc
    if data and host in ("data.alpaca.markets", "data.sandbox.alpaca.markets"):
        host = "stream." + host
    return urlunsplit((scheme, host, path, "", ""))


class Ring(list[int]):
    """A list that keeps only its newest ``size`` to ``2 x size`` values (diagnostics
    must not grow with the session); slicing and ``len`` work on what is kept."""

    def __init__(self, size: int = 4096) -> None:
        super().__init__()
        self._size = size

    def append(self, value: int) -> None:
        super().append(value)
        if len(self) > 2 * self._size:
            del self[: self._size]


@dataclass(slots=True)
class Timings:
    """Where submit/event time goes (for the benchmark; all in ns, newest values only).

    ``io_ns`` is measured inside the worker thread around the SDK call (SDK + HTTP +
    emulator); ``call_ns`` around the whole awaited call on the loop. ``event_ns`` is
    the loop-side handling of one stream update (mapping, FSM check, sink).
    """

    call_ns: Ring = field(default_factory=Ring)
    io_ns: Ring = field(default_factory=Ring)
    event_ns: Ring = field(default_factory=Ring)
    hop_ns: Ring = field(default_factory=Ring)
