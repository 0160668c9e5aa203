"""tradingd package."""
