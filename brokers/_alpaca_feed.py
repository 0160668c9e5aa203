"""The Alpaca minute-bar feed: the data stream as one ``BarBatch`` per minute, and the
history for warm-up (alpaca-py's ``StockDataStream`` and ``StockHistoricalDataClient``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Self

import numpy as np
import requests
import structlog
from alpaca.common.exceptions import APIError
from alpaca.data.enums import DataFeed
from alpaca.data.historical import StockHistoricalDataClient
from alpaca.data.live import StockDataStream
from alpaca.data.requests import StockBarsRequest
from alpaca.data.timeframe import TimeFrame

from brokers._alpaca_http import (
    Scrubber,
    ScrubFilter,
    map_http_error,
    map_transport_error,
    ws_url,
)
from brokers._alpaca_map import parse_ts
from brokers._alpaca_sdk import harden, sdk_keys, thread_stop
from brokers.config import AlpacaConfig
from kernel.events import BarBatch

log = structlog.get_logger("brokers.alpaca")


class AlpacaBarFeed:
    """Live minute bars from Alpaca's data stream, one ``BarBatch`` per minute.

    Bars of one minute (bar start ``ts``) are grouped across symbols and delivered to
    ``on_batch`` on the loop when every subscribed symbol has reported, when a bar of a
    later minute arrives, or ``flush_after_secs`` after the minute's first bar.

    Args:
        cfg: endpoints, keys and ``feed`` (iex or sip).
        symbols: what to subscribe to.
        on_batch: called on the loop's thread with each ``BarBatch``.
    """

    def __init__(
        self, cfg: AlpacaConfig, *, symbols: list[str], on_batch: Callable[[BarBatch], None],
        flush_after_secs: float = 2.0, loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._cfg = cfg
        self._symbols = list(dict.fromkeys(symbols))
        self._on_batch = on_batch
        self._flush_after = flush_after_secs
        self._loop = loop
        self._pending: dict[datetime, dict[str, tuple[float, float, float, float, float]]] = {}
        self._timers: dict[datetime, asyncio.TimerHandle] = {}
        self._stream: StockDataStream | None = None
        self._thread: threading.Thread | None = None
        self._hist: StockHistoricalDataClient | None = None
        self._last_flushed: datetime | None = None
        self._filter: ScrubFilter | None = None
        self._scrub = Scrubber()

    def __repr__(self) -> str:
        return f"AlpacaBarFeed(data_url={self._cfg.data_url!r}, feed={self._cfg.feed!r})"

    def _feed(self) -> DataFeed:
        return DataFeed.SIP if self._cfg.feed == "sip" else DataFeed.IEX

    def _historical(self) -> StockHistoricalDataClient:
        if self._hist is None:
            key, secret = sdk_keys(self._cfg)
            self._scrub = Scrubber(key, secret)
            self._hist = StockHistoricalDataClient(
                key, secret, raw_data=True, url_override=self._cfg.data_url.rstrip("/"))
            harden(self._hist, self._cfg.request_timeout_secs)
        return self._hist

    async def __aenter__(self) -> Self:
        self._loop = self._loop or asyncio.get_running_loop()
        key, secret = sdk_keys(self._cfg)
        self._scrub = Scrubber(key, secret)
        self._filter = ScrubFilter(self._scrub)
        self._filter.install()
        url = ws_url(self._cfg.data_url, f"/v2/{self._cfg.feed}", data=True)
        self._stream = StockDataStream(key, secret, feed=self._feed(), raw_data=True,
                                       url_override=url)
        self._stream._reconnect_min_backoff = self._cfg.reconnect_backoff_secs
        loop = self._loop

        async def on_bar(msg: dict[str, Any]) -> None:
            loop.call_soon_threadsafe(self._on_bar, msg)

        self._stream.subscribe_bars(on_bar, *self._symbols)  # type: ignore[arg-type]
        self._thread = threading.Thread(target=self._stream.run, name="alpaca.data_stream",
                                        daemon=True)
        self._thread.start()
        log.info("alpaca.data_started", url=url, symbols=len(self._symbols))
        return self

    async def __aexit__(self, *exc: object) -> None:
        stream, thread = self._stream, self._thread
        if stream is not None:
            async def shutdown() -> None:
                await stream.stop_ws()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(stream.close(), 1.0)

            def fallback() -> None:
                stream._should_run = False
                stream._stop_stream_queue.put_nowait({"should_stop": True})

            await asyncio.to_thread(thread_stop, lambda: stream._loop, shutdown, fallback,
                                    thread)
        for h in self._timers.values():
            h.cancel()
        for ts in sorted(self._pending):
            self._flush(ts)
        if self._filter is not None:
            self._filter.uninstall()
        self._stream = self._thread = None

    def _on_bar(self, msg: dict[str, Any]) -> None:
        t: Any = msg.get("t")
        ts = t.to_datetime() if hasattr(t, "to_datetime") else parse_ts(t)
        if ts is None or msg.get("S") is None:
            return
        ts = ts.astimezone(UTC)
        if self._last_flushed is not None and ts <= self._last_flushed:
            log.info("alpaca.late_bar", symbol=msg["S"], ts=ts.isoformat())
            return
        row = self._pending.setdefault(ts, {})
        row[str(msg["S"])] = (float(msg["o"]), float(msg["h"]), float(msg["l"]),
                              float(msg["c"]), float(msg["v"]))
        for older in [k for k in self._pending if k < ts]:
            self._flush(older)
        if len(row) >= len(self._symbols):
            self._flush(ts)
        elif ts not in self._timers and self._loop is not None:
            self._timers[ts] = self._loop.call_later(self._flush_after, self._flush, ts)

    def _flush(self, ts: datetime) -> None:
        row = self._pending.pop(ts, None)
        timer = self._timers.pop(ts, None)
        if timer is not None:
            timer.cancel()
        if not row:
            return
        self._last_flushed = max(ts, self._last_flushed or ts)
        self._on_batch(_batch(ts, row, time.perf_counter_ns()))

    async def warmup_bars(self, symbols: list[str], start: datetime,
                          end: datetime) -> list[BarBatch]:
        """Historical minute bars in ``[start, end]`` as batches, oldest first (the SDK
        follows ``next_page_token`` until the range is complete)."""
        hist = self._historical()
        req = StockBarsRequest(symbol_or_symbols=symbols, timeframe=TimeFrame.Minute,
                               start=start, end=end, feed=self._feed())
        try:
            raw: Any = await asyncio.to_thread(hist.get_stock_bars, req)
        except APIError as exc:
            raise map_http_error(exc.status_code or 0, str(exc), what="stock_bars",
                                 effectful=False, scrub=self._scrub) from exc
        except requests.RequestException as exc:
            raise map_transport_error(exc, what="stock_bars", effectful=False,
                                      scrub=self._scrub) from exc
        by_ts: dict[datetime, dict[str, tuple[float, float, float, float, float]]] = {}
        for sym, bars in (raw or {}).items():
            for b in bars:
                ts = parse_ts(b["t"])
                assert ts is not None
                by_ts.setdefault(ts, {})[sym] = (float(b["o"]), float(b["h"]), float(b["l"]),
                                                 float(b["c"]), float(b["v"]))
        return [_batch(ts, by_ts[ts], 0) for ts in sorted(by_ts)]


def _batch(ts: datetime, row: dict[str, tuple[float, float, float, float, float]],
           received_ns: int) -> BarBatch:
    syms = tuple(sorted(row))
    arr = np.array([row[s] for s in syms], dtype=np.float64).reshape(len(syms), 5)
    return BarBatch(ts=ts, symbols=syms, open=arr[:, 0].copy(), high=arr[:, 1].copy(),
                    low=arr[:, 2].copy(), close=arr[:, 3].copy(), volume=arr[:, 4].copy(),
                    received_ns=received_ns)
