"""Risk configuration: sizing and the pre-trade gate share one frozen model."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from kernel.config import ComponentConfig


class RiskConfig(ComponentConfig):
    """Limits from the seed runbook. Percentages are fractions (0.05 = 5%).

    Defaults: signal_threshold 0.1, max_position_pct 0.05, max_gross_exposure 0.60,
    min_order_notional $50, max_order_notional $10,000, allow_shorts false,
    stale_signal_secs 120, max_slip_pct 0.005, max_spread_bps 50, symbol_move_limit 0.10,
    max_daily_loss 0.02, max_drawdown 0.10, session_drawdown 0.01, stop_loss_pct 0.05,
    max_sector_exposure 0.30, max_orders_per_symbol_day 5, max_orders_per_day 200,
    max_orders_per_execution 10, max_orders_per_second 20, extended_hours false,
    symbols [] (universe from bars), signal_memory 100000, approval_notional $5,000,
    liquidation_collar_pct 0.01, liquidation_rounds 5, liquidation_round_secs 10.
    """

    signal_threshold: float = Field(0.1, ge=0, le=1, description="minimum |strength| to act")
    max_position_pct: float = Field(0.05, gt=0, le=1, description="max position per symbol")
    max_gross_exposure: float = Field(0.60, gt=0, le=10, description="sum |positions| / equity")
    min_order_notional: Decimal = Field(Decimal(50), ge=0, description="skip smaller orders")
    max_order_notional: Decimal = Field(Decimal(10_000), gt=0, description="cap per order")
    allow_shorts: bool = Field(False, description="long-only unless true")
    stale_signal_secs: float = Field(120, gt=0)
    max_slip_pct: float = Field(0.005, gt=0, description="reference vs last price")
    max_spread_bps: float = Field(50, gt=0)
    symbol_move_limit: float = Field(0.10, gt=0, description="max |day move| to trade")
    max_daily_loss: float = Field(0.02, gt=0, lt=1)
    max_drawdown: float = Field(0.10, gt=0, lt=1)
    session_drawdown: float = Field(0.01, gt=0, lt=1)
    stop_loss_pct: float = Field(0.05, gt=0, lt=1)
    max_sector_exposure: float = Field(0.30, gt=0, le=10)
    sector_map: dict[str, str] = Field(default_factory=dict, description="symbol -> sector")
    max_orders_per_symbol_day: int = Field(5, ge=1)
    max_orders_per_day: int = Field(200, ge=1)
    max_orders_per_execution: int = Field(10, ge=1)
    max_orders_per_second: float = Field(20, gt=0)
    extended_hours: bool = Field(False, description="allow pre/post-market orders")
    buying_power_cushion_pct: float = Field(
        0.01, ge=0, le=0.5,
        description="buys are costed at their price plus this, for the move to the fill "
                    "(a broker reserves for slippage; the gate must not approve what it refuses)")
    symbols: list[str] = Field(
        default_factory=list,
        description="tradable universe; empty: every symbol seen in bars (INVALID_SIGNAL else)",
    )
    signal_memory: int = Field(
        100_000, ge=1, description="signal ids remembered for DUPLICATE_SIGNAL (oldest go)"
    )
    approval_notional: Decimal = Field(
        Decimal(5000), ge=0, description="SEMI_AUTO: orders above this wait for approval"
    )
    liquidation_collar_pct: float = Field(
        0.01, gt=0, lt=1, description="outside regular hours, liquidation limit price collar"
    )
    liquidation_rounds: int = Field(5, ge=1, description="liquidation: max order rounds")
    liquidation_round_secs: float = Field(
        10, gt=0, description="liquidation: wait for fills per round (clock seconds)"
    )


class GlobalRiskConfig(ComponentConfig):
    """Limits over every account together (several broker accounts in one daemon).

    ``max_gross_exposure``: the sum of every account's gross exposure (positions plus
    working orders, worst case) as a fraction of the sum of their equity; None = no global
    limit. Each account's own limits (its ``risk`` section) apply as well.
    """

    max_gross_exposure: float | None = Field(None, gt=0, le=10,
                                             description="total gross / total equity")
