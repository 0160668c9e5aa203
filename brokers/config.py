"""Broker configuration: which broker, the paper simulator's models, Alpaca endpoints,
the Interactive Brokers session."""

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


# IB Gateway 4001 and TWS 7496 trade real money; 4002 and 7497 are their paper ports.
IB_LIVE_PORTS = frozenset({4001, 7496})
IB_PAPER_PORTS = frozenset({4002, 7497})


class IbConfig(ComponentConfig):
    """The Interactive Brokers session (IB Gateway or TWS, through ib_async).

    ``port`` defaults to 4002 (IB Gateway, paper); 7497 is TWS paper. The live ports
    4001/7496 are refused unless ``daemon.mode: live`` (checked by the root settings).
    ``client_id`` must be unique per API session on that Gateway; 0 (which binds manual
    TWS orders) is not allowed. ``account`` is needed only when the login manages
    several accounts.
    """

    host: str = "127.0.0.1"
    port: int = Field(4002, ge=1, le=65535)
    client_id: int = Field(1, ge=1, le=2**31 - 1)
    account: str | None = Field(None, min_length=1)
    currency: str = Field("USD", min_length=3, max_length=3)
    exchange: str = Field("SMART", min_length=1, description="routing destination")
    outside_rth: bool = Field(False, description="let orders work outside regular hours")
    connect_timeout_secs: float = Field(10.0, gt=0, description="socket, handshake, sync")
    request_timeout_secs: float = Field(10.0, gt=0, description="one query round trip")
    ack_timeout_secs: float = Field(5.0, gt=0, description="wait for a placed order's ack")
    submit_attempts: int = Field(
        3, ge=1, description="placements of one orderRef after 'duplicate order id' (103)")
    reconnect_backoff_secs: float = Field(1.0, gt=0, description="first reconnect wait")
    reconnect_backoff_max_secs: float = Field(30.0, gt=0)
    heartbeat_secs: float = Field(
        10.0, gt=0, description="probe a silent connection (reqCurrentTime) after this")
    commission_wait_secs: float = Field(
        3.0, gt=0, description="hold a fill this long for its commission report, then "
                               "ask again once before reporting it without one")
    gap_grace_secs: float = Field(
        0.5, ge=0, description="wait for a missing execution before asking for it")
    close_grace_secs: float = Field(
        2.0, ge=0, description="on close, wait this long for the fills of acknowledged "
                               "market orders and for commissions still owed")
    finished_orders_kept: int = Field(
        2000, ge=10, description="finished orders remembered for de-duplication")


class BrokerConfig(ComponentConfig):
    kind: Literal["paper", "alpaca", "ib"] = "paper"
    paper: PaperConfig = PaperConfig()
    alpaca: AlpacaConfig = AlpacaConfig()
    ib: IbConfig = IbConfig()
