"""Run the emulator as a process: ``python -m tests.alpaca_emulator --port 8700``.

Point a daemon at it with ``APCA_API_BASE_URL=http://127.0.0.1:8700`` and
``APCA_API_DATA_URL=http://127.0.0.1:8700`` and the keys given here
(``APCA_API_KEY_ID``/``APCA_API_SECRET_KEY``). Faults: ``POST /_control/<name>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from datetime import UTC, datetime

from tests.alpaca_emulator.server import Emulator


async def _main(args: argparse.Namespace) -> None:
    emu = Emulator(key_id=args.key_id, secret_key=args.secret_key, port=args.port,
                   bars_csv=args.bars, calendar=args.calendar, session_bars=args.session_bars)
    emu.exchange.fill_parts = args.fill_parts
    if args.rebase_now:
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        emu.rebase_bars(now)
    await emu.start()
    print(f"alpaca emulator on {emu.base_url} (stream ws://127.0.0.1:{emu.port}/stream, "
          f"data ws://127.0.0.1:{emu.port}/v2/iex)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            waiting = args.wait_subscriber and not emu.data_subscribers
            if args.bar_interval > 0 and emu.bars and not waiting and emu.advance() is None:
                if args.loop:
                    emu.replay_again()
                else:
                    args.bar_interval = 0
                    print("alpaca emulator: bars done", flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.bar_interval or None)
    finally:
        await emu.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m tests.alpaca_emulator")
    p.add_argument("--port", type=int, default=8700, help="0 picks a free port")
    p.add_argument("--bars", default=None, help="CSV: symbol,timestamp,open,high,low,close,volume")
    p.add_argument("--bar-interval", type=float, default=0.0,
                   help="seconds between replayed minutes (0: only via /_control/advance)")
    p.add_argument("--fill-parts", type=int, default=1, help="executions per order")
    p.add_argument("--rebase-now", action="store_true",
                   help="shift the bars so the first minute is the current minute")
    p.add_argument("--loop", action="store_true",
                   help="when the bars are done, replay them again as the following minutes")
    p.add_argument("--wait-subscriber", action="store_true",
                   help="start replaying bars only once a data client has subscribed")
    p.add_argument("--calendar", default=None,
                   help="e.g. XNYS: clock, calendar, open and close follow the exchange "
                        "calendar at this process's wall clock (libfaketime may drive it)")
    p.add_argument("--session-bars", default=None,
                   help="with --calendar: a CSV whose first day is replayed in each session, "
                        "minute by minute, stamped with the session's minutes")
    p.add_argument("--key-id", default=os.environ.get("APCA_API_KEY_ID", "EMUKEY"))
    p.add_argument("--secret-key", default=os.environ.get("APCA_API_SECRET_KEY", "EMUSECRET"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
