"""The broker accounts of a daemon, from the configuration: one ``SystemSpec`` each.

Without an ``accounts`` list the daemon has one account, named after its broker kind,
whose state lives in the state directory itself (as it always has). With a list, each
account's state (journal, paper account, ...) lives in ``<state_dir>/accounts/<name>/``.

An account's broker settings are the root ``broker`` section's settings of its kind with
the account's ``broker`` keys laid over them; its secrets come from the environment
variables its ``credentials`` name; its limits are the root ``risk`` section with its
``risk`` keys laid over it. Anything invalid is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from brokers.config import BrokerConfig
from engine.config import AccountConfig, RoutingConfig
from kernel.errors import ConfigError
from risk.config import RiskConfig

ACCOUNTS_DIR = "accounts"
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """What distinguishes one account: its name, broker, limits and state directory
    (``engine.system.build_system`` wires a trading system from one). Here rather than
    beside ``TradingSystem`` so that loading the settings imports no trading system."""

    name: str
    broker: BrokerConfig
    risk: RiskConfig
    state_dir: Path


def account_specs(
    accounts: Sequence[AccountConfig],
    *,
    broker: BrokerConfig,
    risk: RiskConfig,
    state_dir: Path,
    environ: Mapping[str, str],
) -> list[SystemSpec]:
    """One spec per configured account (or the single default account).

    Raises:
        ConfigError: a duplicate name, a symbol routed to two accounts, or an account
            key with a bad value (named as ``accounts.<i>.<section>.<key>``).
    """
    if not accounts:
        return [SystemSpec(name=broker.kind, broker=broker, risk=risk, state_dir=state_dir)]
    _check_unique(accounts)
    return [SystemSpec(name=a.name, broker=_broker(i, a, broker, environ),
                       risk=_laid_over(f"accounts.{i}.risk", risk, a.risk),
                       state_dir=state_dir / ACCOUNTS_DIR / a.name)
            for i, a in enumerate(accounts)]


def check_routing(routing: RoutingConfig, accounts: Sequence[AccountConfig]) -> None:
    """Every account the routing names exists.

    Raises:
        ConfigError: ``routing.preferred`` or a name in ``routing.order`` is unknown.
    """
    names = [a.name for a in accounts] or None
    if names is None:
        return
    if routing.preferred is not None and routing.preferred not in names:
        raise ConfigError("routing.preferred", routing.preferred, f"one of {names}")
    for n in routing.order:
        if n not in names:
            raise ConfigError("routing.order", n, f"account names from {names}")


def _check_unique(accounts: Sequence[AccountConfig]) -> None:
    seen: dict[str, str] = {}
    for i, a in enumerate(accounts):
        if any(b.name == a.name for b in accounts[:i]):
            raise ConfigError(f"accounts.{i}.name", a.name, "a name no other account has")
        for sym in a.symbols:
            if sym in seen:
                raise ConfigError(f"accounts.{i}.symbols", sym,
                                  f"a symbol routed to one account (also in {seen[sym]})")
            seen[sym] = a.name


def _broker(i: int, a: AccountConfig, root: BrokerConfig,
            environ: Mapping[str, str]) -> BrokerConfig:
    key = f"accounts.{i}"
    base = getattr(root, a.kind, None)
    if not isinstance(base, BaseModel):
        raise ConfigError(f"{key}.kind", a.kind, "a broker kind this build supports")
    over: dict[str, Any] = dict(a.broker)
    for field, var in a.credentials.items():
        value = environ.get(var)
        if not value:
            raise ConfigError(f"{key}.credentials.{field}", var,
                              "the name of a set environment variable")
        over[field] = SecretStr(value)
    section = _laid_over(f"{key}.broker", base, over)
    return root.model_copy(update={"kind": a.kind, a.kind: section})


def _laid_over(key: str, base: M, keys: Mapping[str, Any]) -> M:
    """``base`` with ``keys`` laid over it, validated as the same model."""
    if not keys:
        return base
    data = {k: getattr(base, k) for k in type(base).model_fields}
    data.update(keys)
    try:
        return type(base).model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        value = err.get("input")
        if isinstance(value, SecretStr | dict):
            value = "***" if isinstance(value, SecretStr) else "{...}"
        raise ConfigError(f"{key}.{where}", value, err["msg"]) from None


__all__ = ["ACCOUNTS_DIR", "SystemSpec", "account_specs", "check_routing"]
