"""Portfolio: positions, cash, P&L and exposure, updated only from fills."""

from portfolio.book import Portfolio, PositionView

__all__ = ["Portfolio", "PositionView"]
