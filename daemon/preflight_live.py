"""The preflight of a running daemon: one report per account before each session's open.

The checks of ``tradingd preflight`` (``daemon.preflight``), except where the running
daemon knows better:

* the broker is the account's own connected adapter (REST queries only);
* ``books`` replaces ``journal``: the daemon's reconciler has confirmed (or not) the
  journal's books with the broker's;
* ``kill_switch`` and ``trading_state`` are the live ones. A halt that a failed preflight
  placed (``who: preflight``) does not fail the check: it is what a later pass lifts.

Each account is checked with its own broker settings, limits and state directory.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config.settings import Settings
from daemon.preflight import (
    BrokerView,
    Check,
    PreflightReport,
    ask,
    broker_checks,
    head_checks,
    local_checks,
)
from engine.session import CheckStatus
from engine.system import TradingSystem
from kernel.clock import Clock
from risk.state import TradingState

S = CheckStatus
WHO = "preflight"


def account_settings(settings: Settings, system: TradingSystem) -> Settings:
    """``settings`` as one account sees them: its broker, limits and state directory."""
    daemon = settings.daemon.model_copy(update={"state_dir": system.spec.state_dir})
    return settings.model_copy(update={"broker": system.spec.broker, "risk": system.spec.risk,
                                       "daemon": daemon})


async def account_preflight(settings: Settings, system: TradingSystem, *, clock: Clock,
                            environ: Mapping[str, str]) -> PreflightReport:
    """Every check for one account of the running daemon (see the module doc)."""
    acct = account_settings(settings, system)
    view = _view(acct, system)
    seen = await ask(view, clock) if view is not None else None
    checks = head_checks(acct) + await broker_checks(acct, view, seen, clock)
    checks += [_books(system), _kill_switch(system, environ), _trading_state(system)]
    checks += await local_checks(acct)
    return PreflightReport(clock.now(), tuple(checks))


def _view(settings: Settings, system: TradingSystem) -> BrokerView | None:
    broker: Any = system.broker
    if settings.broker.kind != "alpaca" or not hasattr(broker, "untradable"):
        return None
    view: BrokerView = broker
    return view


def _books(system: TradingSystem) -> Check:
    if not system.ready:
        return Check("books", S.FAIL, "not reconciled with the broker",
                     "the reconciler has not confirmed the journal's books (see "
                     "reconcile.* lines); the gate denies RECONCILING meanwhile")
    if not system.connected:
        return Check("books", S.FAIL, "broker disconnected",
                     "orders would be refused: see broker.* lines")
    positions = sum(1 for v in system.portfolio.views() if v.qty)
    return Check("books", S.OK, f"reconciled: {positions} positions, "
                 f"{len(system.orders.open_orders())} open orders")


def _kill_switch(system: TradingSystem, environ: Mapping[str, str]) -> Check:
    sources = sorted(system.risk_state.kill_sources)
    if sources:
        return Check("kill_switch", S.FAIL, f"engaged by {', '.join(sources)}",
                     "no order passes the gate: `tradingd resume` clears a file or signal "
                     "kill switch; KILL_SWITCH in the environment needs a restart without it")
    return Check("kill_switch", S.OK, "disengaged")


def _trading_state(system: TradingSystem) -> Check:
    st = system.risk_state
    observed = f"{st.state}" + (f" since {st.changed_at.isoformat()} by {st.changed_by}: "
                                f"{st.reason}" if st.changed_at else "")
    if st.state is TradingState.HALTED and st.changed_by != WHO:
        return Check("trading_state", S.FAIL, observed, "halted: `tradingd resume` to trade")
    if st.state is TradingState.REDUCING:
        return Check("trading_state", S.WARN, observed, "reduce-only: exits only")
    return Check("trading_state", S.OK, observed)


__all__ = ["WHO", "account_preflight", "account_settings"]
