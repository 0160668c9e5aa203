"""Read-only views of the books that components consume without importing each other.

The portfolio implements ``Books``; risk (monitor, liquidation) reads through it, so risk
and portfolio stay independent components that meet only in the kernel.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol

from kernel.model import PositionView


class Books(Protocol):
    """Equity and marked positions of one account."""

    def equity(self) -> Decimal: ...

    def views(self) -> tuple[PositionView, ...]: ...

    def adverse(self, fraction: float) -> tuple[PositionView, ...]:
        """The open positions whose last price may be ``fraction`` or more against their
        average cost (a superset: the caller decides on the exact numbers)."""
        ...


class Totals(Protocol):
    """Exposure of the other accounts of a multi-account daemon (global limits)."""

    def others(self, account: str) -> tuple[Decimal, Decimal]:
        """(equity, gross exposure with working orders) of every account but ``account``."""
        ...


__all__ = ["Books", "Totals"]
