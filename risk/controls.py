"""Control-socket commands of the risk components (``tradingd halt``, ``resume``, ...).

``register_controls(server.register, ...)`` adds: ``halt``, ``resume``,
``emergency-stop``, ``liquidate``, ``mode`` (args ``{"mode": ...}``), ``pending``,
``approve`` / ``reject`` (args ``{"id": "A1"}``) and ``risk`` (state, marks, gate counts).
Each handler returns a JSON-ready dict; the control server adds ``ok``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from risk.emergency import LiquidationResult, emergency_stop
from risk.gate import Gate
from risk.killswitch import KillSwitch
from risk.modes import ExecutionMode, ExecutionModes
from risk.state import TradingStatus

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def register_controls(
    register: Callable[[str, Handler], None],
    *,
    state: TradingStatus,
    killswitch: KillSwitch,
    modes: ExecutionModes,
    gate: Gate,
    send: Callable[[Any], None],
    liquidate: Callable[[str], Awaitable[LiquidationResult]],
) -> None:
    """``liquidate(why)`` runs ``risk.emergency.liquidate`` with the app's components."""

    async def halt(args: dict[str, Any]) -> dict[str, Any]:
        killswitch.halt(who=str(args.get("who", "operator")),
                        why=str(args.get("why", "operator halt")))
        return state.snapshot()

    async def resume(args: dict[str, Any]) -> dict[str, Any]:
        r = killswitch.resume(who=str(args.get("who", "operator")),
                              why=str(args.get("why", "operator resume")))
        return {"resumed": r.ok, "detail": r.detail, **state.snapshot()}

    async def stop(args: dict[str, Any]) -> dict[str, Any]:
        await emergency_stop(state=state, send=send, why=str(args.get("why", "emergency stop")))
        return state.snapshot()

    async def liq(args: dict[str, Any]) -> dict[str, Any]:
        result = await liquidate(str(args.get("why", "operator liquidate")))
        return {"liquidation": asdict(result), **state.snapshot()}

    async def mode(args: dict[str, Any]) -> dict[str, Any]:
        if "mode" in args:
            modes.set_mode(ExecutionMode(str(args["mode"]).upper()), who="operator")
        return {"mode": str(modes.mode)}

    async def pending(args: dict[str, Any]) -> dict[str, Any]:
        return {"pending": modes.list_pending()}

    async def approve(args: dict[str, Any]) -> dict[str, Any]:
        return {"approved": modes.approve(str(args["id"]))}

    async def reject(args: dict[str, Any]) -> dict[str, Any]:
        return {"rejected": modes.reject(str(args["id"]))}

    async def risk(args: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {**state.snapshot(), "mode": str(modes.mode), "marks": gate.marks.snapshot(),
                "gate": dict(gate.stats())}

    for name, h in (("halt", halt), ("resume", resume), ("emergency-stop", stop),
                    ("liquidate", liq), ("mode", mode), ("pending", pending),
                    ("approve", approve), ("reject", reject), ("risk", risk)):
        register(name, h)
