"""Portfolio: positions, cash, P&L and exposure, updated only from fills."""

from portfolio.book import Portfolio

__all__ = ["Portfolio"]
