"""Run the fake TWS as a process: ``python -m tests.fake_tws --port 4002``.

Point a daemon at it with ``TRADINGD_BROKER__KIND=ib TRADINGD_BROKER__IB__PORT=<port>``.
Faults and prices go through the loopback control channel: ``POST
/_control/<method>`` with a JSON object of keyword arguments calls that public method of
``FakeTws`` and answers ``{"result": ...}``; ``GET /_control/snapshot`` returns its books::

    curl -XPOST 127.0.0.1:8710/_control/set_price -d '{"symbol":"AAPL","price":"170.5"}'
    curl -XPOST 127.0.0.1:8710/_control/reject_next -d '{"code":201}'
    curl 127.0.0.1:8710/_control/snapshot

The first line printed names both ports (``fake tws on 127.0.0.1:<port> control
http://127.0.0.1:<control port>``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
from decimal import Decimal
from typing import Any

from aiohttp import web

from tests.fake_tws.server import FakeTws

# What the control channel may call: the fake's faults, market and inspection.
CONTROLS = frozenset({
    "set_price", "set_prices", "set_fill", "execute", "cancel", "reject_next",
    "duplicate_id_next", "warn_next", "drop_next", "duplicate_next", "drop_connections",
    "hang", "hold_acks", "restart", "occupy_client_id", "link", "set_market_open",
    "snapshot",
})


def control_app(tws: FakeTws) -> web.Application:
    async def call(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in CONTROLS:
            return web.json_response({"error": f"unknown control {name}"}, status=404)
        kwargs: dict[str, Any] = await request.json() if request.can_read_body else {}
        try:
            result = getattr(tws, name)(**kwargs)
        except (KeyError, ValueError, TypeError) as exc:
            return web.json_response({"error": repr(exc)}, status=400)
        return web.json_response({"result": result}, dumps=lambda o: json.dumps(o, default=str))

    async def snapshot(request: web.Request) -> web.Response:
        return web.json_response(tws.snapshot())

    app = web.Application()
    app.router.add_post("/_control/{name}", call)
    app.router.add_get("/_control/snapshot", snapshot)
    return app


async def _main(args: argparse.Namespace) -> None:
    prices = dict(p.split("=", 1) for p in args.price)
    tws = FakeTws(port=args.port, accounts=tuple(args.account), cash=Decimal(args.cash),
                  prices={s: Decimal(v) for s, v in prices.items()}, fill_parts=args.fill_parts,
                  fill_delay=args.fill_delay, first_order_id=args.first_order_id,
                  commission_per_share=Decimal(args.commission_per_share),
                  min_commission=Decimal(args.min_commission))
    await tws.start()
    runner = web.AppRunner(control_app(tws))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.control_port)
    await site.start()
    control_port = runner.addresses[0][1]
    print(f"fake tws on 127.0.0.1:{tws.port} control http://127.0.0.1:{control_port}",
          flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await tws.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.fake_tws")
    p.add_argument("--port", type=int, default=4002, help="0 picks a free port")
    p.add_argument("--control-port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--account", action="append", default=None,
                   help="managed account (repeat for several; default DU1234567)")
    p.add_argument("--cash", default="100000")
    p.add_argument("--price", action="append", default=[], metavar="SYMBOL=PRICE")
    p.add_argument("--fill-parts", type=int, default=1, help="executions per order")
    p.add_argument("--fill-delay", type=float, default=0.0, help="seconds between them")
    p.add_argument("--first-order-id", type=int, default=1)
    p.add_argument("--commission-per-share", default="0.0035")
    p.add_argument("--min-commission", default="0.35")
    args = p.parse_args()
    args.account = args.account or ["DU1234567"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
