"""Broker configuration: which broker, the paper simulator's models, Alpaca endpoints."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, SecretStr

from kernel.config import ComponentConfig


class PaperConfig(ComponentConfig):
    """The built-in paper broker.

    Market orders fill at the next bar's open, moved against the order by
    ``slippage_bps``; limit/stop orders when the bar crosses their price. With
    ``max_fill_volume_pct`` > 0 an order fills at most that fraction of a bar's volume
    per bar (partial fills). ``ack_latency_ms`` delays acknowledgements (wall time).
    """

    initial_cash: Decimal = Field(Decimal(100_000), gt=0)
    slippage_bps: Decimal = Field(Decimal(0), ge=0, le=1000)
    commission_per_share: Decimal = Field(Decimal(0), ge=0)
    min_commission: Decimal = Field(Decimal(0), ge=0)
    max_fill_volume_pct: float = Field(0.0, ge=0, le=1, description="0 = no volume limit")
    ack_latency_ms: float = Field(0.0, ge=0)


class AlpacaConfig(ComponentConfig):
    """Alpaca endpoints and keys. Keys normally come from APCA_API_KEY_ID/SECRET_KEY."""

    key_id: SecretStr | None = None
    secret_key: SecretStr | None = None
    base_url: str = "https://paper-api.alpaca.markets"
    data_url: str = "https://data.alpaca.markets"
    feed: Literal["iex", "sip"] = "iex"
    request_timeout_secs: float = Field(10.0, gt=0)
    stream_silence_secs: float = Field(60.0, gt=0, description="watchdog: reconnect after")
    rate_limit_per_min: int = Field(200, gt=0, description="client-side request budget")
    retry_attempts: int = Field(4, ge=1, description="tries of an idempotent call")
    retry_backoff_secs: float = Field(0.5, gt=0, description="first backoff (doubles)")
    retry_backoff_max_secs: float = Field(8.0, gt=0)
    submit_attempts: int = Field(3, ge=1, description="POSTs of one client_order_id")
    reconnect_backoff_secs: float = Field(1.0, gt=0, description="first stream reconnect wait")


class BrokerConfig(ComponentConfig):
    kind: Literal["paper", "alpaca"] = "paper"
    paper: PaperConfig = PaperConfig()
    alpaca: AlpacaConfig = AlpacaConfig()
