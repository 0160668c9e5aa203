"""Structured logging: JSON lines when stdout is not a terminal (journald), readable
console output on a terminal. Every decision is an event with a stable name.

Secrets registered with ``register_secret`` are scrubbed from every string value of
every event (and from rendered exceptions) before rendering, as a last line of defence.

Cost: the hot path logs a line per decision (every gate pass, order and fill), so a line
is rendered by one short processor chain (level and timestamp in one step, orjson) and
written with the lines around it: the writer buffers lines and writes them out once per
turn of the event loop, at the latest when a line finds the oldest buffered one 100 ms
old, at once from a thread without a running loop (SDK threads, tools), on ``flush()``
and at exit. A process killed outright (SIGKILL) loses at most the lines of the loop
turn it was in; every decision is in the journal as well.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
import structlog
from structlog.exceptions import DropEvent

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


_LEVEL_NAMES = {"warn": "warning", "exception": "error"}
_stamp_cache: list[Any] = [-1, ""]  # [whole UTC second, its "YYYY-MM-DDTHH:MM:SS"]


def _utc_stamp() -> str:
    """Now as ISO 8601 UTC with microseconds (``2024-03-05T15:00:00.123456Z``); the
    date part is formatted once a second."""
    t = time.time()
    sec = int(t)
    if sec != _stamp_cache[0]:
        _stamp_cache[0] = sec
        _stamp_cache[1] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_stamp_cache[1]}.{int((t - sec) * 1e6):06d}Z"


def _level_and_time(
    _logger: Any, name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """``level`` (as structlog's ``add_log_level``) and ``timestamp``, in one step."""
    event_dict["level"] = _LEVEL_NAMES.get(name, name)
    event_dict["timestamp"] = _utc_stamp()
    return event_dict


def _json_line(logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> str:
    """The whole JSON chain in one processor: level, timestamp, a rendered exception,
    secrets scrubbed, one line."""
    event_dict["level"] = _LEVEL_NAMES.get(name, name)
    event_dict["timestamp"] = _utc_stamp()
    if "exc_info" in event_dict:
        event_dict = structlog.processors.format_exc_info(logger, name, event_dict)
    if _SECRETS:
        event_dict = _scrub_processor(logger, name, event_dict)
    return _orjson_dumps(event_dict)


def _render_json(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> str:
    return _orjson_dumps(event_dict)


def _fast_method(name: str) -> Any:
    """A logger method that runs the processor chain itself: what structlog's
    ``_proxy_to_logger`` does, without its copies of the keyword arguments (a third of
    a line's cost). Same semantics: bound context first, ``DropEvent`` drops the line."""

    def meth(self: Any, event: str, *args: Any, **kw: Any) -> Any:
        if args:  # as structlog's ``_maybe_interpolate``
            event = event % (args[0] if len(args) == 1 and isinstance(args[0], dict)
                             and args[0] else args)
        context = self._context
        event_dict: Any = {**context, **kw} if context else kw
        event_dict["event"] = event
        logger = self._logger
        try:
            for proc in self._processors:
                event_dict = proc(logger, name, event_dict)
        except DropEvent:
            return None
        if isinstance(event_dict, str | bytes | bytearray):
            return getattr(logger, name)(event_dict)
        if isinstance(event_dict, tuple):
            return getattr(logger, name)(*event_dict[0], **event_dict[1])
        return getattr(logger, name)(**event_dict)

    meth.__name__ = name
    return meth


def _wrapper_class(min_level: int) -> type[Any]:
    """structlog's filtering bound logger for ``min_level``, with the enabled level
    methods replaced by ``_fast_method`` (filtered ones stay a bare ``return None``)."""
    base = structlog.make_filtering_bound_logger(min_level)
    names = {logging.DEBUG: ("debug",), logging.INFO: ("info", "msg"),
             logging.WARNING: ("warning", "warn"), logging.ERROR: ("error",),
             logging.CRITICAL: ("critical", "fatal")}
    methods = {alias: _fast_method(aliases[0]) for level, aliases in names.items()
               if level >= min_level for alias in aliases}
    return type(f"Fast{base.__name__}", (base,), methods)


FLUSH_AFTER_SECS = 0.1
_MAX_BUFFERED = 1024


class LineWriter:
    """Writes whole lines under one lock. structlog (the loop thread) and stdlib logging
    (SDK threads) share it, so two JSON lines can never be interleaved into one.

    Lines are buffered and written together (see the module doc): once per loop turn,
    at the latest ``FLUSH_AFTER_SECS`` after the oldest buffered line when another line
    comes, at once from a thread without a running loop, on ``flush`` and at exit.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._oldest = 0.0
        # The loop a flush is scheduled on (a loop closed before it ran is another loop).
        self._scheduled: asyncio.AbstractEventLoop | None = None

    def write_line(self, line: str) -> None:
        with self._lock:
            lines = self._lines
            lines.append(line)
            if len(lines) == 1:
                self._oldest = time.monotonic()
            elif (len(lines) >= _MAX_BUFFERED
                  or time.monotonic() - self._oldest >= FLUSH_AFTER_SECS):
                self._write_out()
                return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a thread without a loop: nobody would flush it later
            self.flush()
            return
        if self._scheduled is not loop:
            self._scheduled = loop
            loop.call_soon(self._flush_scheduled)

    def _flush_scheduled(self) -> None:
        self._scheduled = None
        self.flush()

    def flush(self) -> None:
        """Write out every buffered line now."""
        with self._lock:
            if self._lines:
                self._write_out()

    def _write_out(self) -> None:
        lines, self._lines = self._lines, []
        lines.append("")
        try:
            self._stream.write("\n".join(lines))
            self._stream.flush()
        except ValueError:  # the stream was closed (interpreter exit): nowhere to write
            pass


_writers: list[LineWriter] = []


def flush() -> None:
    """Write out the lines every configured writer still buffers."""
    for writer in _writers:
        writer.flush()


atexit.register(flush)


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


# Whether debug lines are written (False once ``configure`` set a higher level). Before
# ``configure``, structlog's defaults write everything: True.
_debug = [True]


def debug_enabled() -> bool:
    """True when debug lines are written. Hot paths test it before building a debug
    line's fields (the filtered ``debug`` is a no-op, but its arguments are not)."""
    return _debug[0]


def configure(level: str = "info", stream: TextIO | None = None, json: bool | None = None) -> None:
    """Configure structlog (and route stdlib logging of libraries through it)."""
    _debug[0] = _LEVELS[level] <= logging.DEBUG
    out = stream or sys.stdout
    as_json = (not out.isatty()) if json is None else json
    # Context is bound on loggers (``log.bind``); nothing binds structlog contextvars, so
    # their merge (a walk over the context per line) is not in the chain.
    shared: list[Any] = [
        _level_and_time,
        structlog.processors.format_exc_info,
        _scrub_processor,
    ]
    renderer: Any = (_render_json if as_json
                     else structlog.dev.ConsoleRenderer(colors=out.isatty()))
    flush()  # lines of a previous configuration go out before the new one writes
    writer = LineWriter(out)
    _writers[:] = [writer]
    structlog.configure(
        processors=[_json_line] if as_json else [*shared, renderer],
        wrapper_class=_wrapper_class(_LEVELS[level]),
        logger_factory=lambda *_args: _LineLogger(writer),
        cache_logger_on_first_use=True,
    )
    # Libraries (alpaca, websockets, aiomqtt) log through stdlib logging: send their
    # warnings through the same renderer, scrubber and writer.
    handler = _LineHandler(writer)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        processor=renderer, foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.WARNING))
