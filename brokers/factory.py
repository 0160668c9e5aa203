"""Build the configured broker. A vendor SDK (alpaca-py, ib_async) is imported only when
its broker is chosen."""

from __future__ import annotations

import asyncio
from pathlib import Path

from brokers.config import BrokerConfig
from kernel.broker import Broker, EventSink
from kernel.clock import Clock


def create_broker(
    cfg: BrokerConfig,
    *,
    clock: Clock,
    sink: EventSink,
    state_dir: Path,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Broker:
    if cfg.kind == "alpaca":
        from brokers.alpaca import AlpacaBroker

        alpaca: Broker = AlpacaBroker(cfg.alpaca, clock=clock, sink=sink, loop=loop)
        return alpaca
    if cfg.kind == "ib":
        from brokers.ib import IbBroker

        ib: Broker = IbBroker(cfg.ib, clock=clock, sink=sink, loop=loop)
        return ib
    from brokers.paper import PaperBroker

    return PaperBroker(cfg=cfg.paper, clock=clock, sink=sink,
                       store_path=state_dir / "paper_account.sqlite")
