"""Structured logging: JSON lines when stdout is not a terminal (journald), readable
console output on a terminal. Every decision is an event with a stable name.

Secrets registered with ``register_secret`` are scrubbed from every string value of
every event (and from rendered exceptions) before rendering, as a last line of defence.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import MutableMapping
from typing import Any, TextIO

import orjson
import structlog

_SECRETS: set[str] = set()
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def register_secret(value: str | None) -> None:
    """Never let ``value`` appear in a log line (values shorter than 6 chars are ignored)."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def scrub(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, BaseException):
        return scrub(repr(value))
    # Containers are rendered element by element (JSON), so scrub inside them too.
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrub_value(v) for v in value]
    return value


def _scrub_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if _SECRETS:
        for key, value in event_dict.items():
            event_dict[key] = _scrub_value(value)
    return event_dict


def _orjson_dumps(obj: Any, **_kw: Any) -> str:
    # orjson renders a decision line in ~2 µs where json.dumps takes ~8: it matters when
    # every gate decision of a 53-symbol batch is logged on the hot path.
    return orjson.dumps(obj, default=str).decode()


class LineWriter:
    """Writes whole lines under one lock. structlog (the loop thread) and stdlib logging
    (SDK threads) share it, so two JSON lines can never be interleaved into one."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write_line(self, line: str) -> None:
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


class _LineLogger:
    """The structlog logger: every method writes the rendered line."""

    def __init__(self, writer: LineWriter) -> None:
        self._writer = writer

    def msg(self, message: str) -> None:
        self._writer.write_line(message)

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg


class _LineHandler(logging.Handler):
    """stdlib logging (alpaca, websockets, aiomqtt) into the same writer and renderer."""

    def __init__(self, writer: LineWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._writer.write_line(self.format(record))
        except Exception:
            self.handleError(record)


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Configure structlog (and route stdlib logging of libraries through it)."""
    out = stream or sys.stdout
    as_json = (not out.isatty()) if json is None else json
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _scrub_processor,
    ]
    renderer: Any = (structlog.processors.JSONRenderer(serializer=_orjson_dumps) if as_json
                     else structlog.dev.ConsoleRenderer(colors=out.isatty()))
    writer = LineWriter(out)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_args: _LineLogger(writer),
        cache_logger_on_first_use=True,
    )
    # Libraries (alpaca, websockets, aiomqtt) log through stdlib logging: send their
    # warnings through the same renderer, scrubber and writer.
    handler = _LineHandler(writer)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer, foreign_pre_chain=shared[1:]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.WARNING))
