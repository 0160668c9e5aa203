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


__all__ = ["Books"]
