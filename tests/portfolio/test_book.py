"""The portfolio book against hand computation, plus the cash/P&L bookkeeping identity."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel.events import BarBatch, Event, OrderFilled, PositionChanged
from kernel.model import BrokerPosition, Fill, OrderSide, PositionView
from portfolio.book import Portfolio

T0 = datetime(2024, 3, 5, 15, 0, tzinfo=UTC)
D = Decimal
CASH = D(100_000)
_seq = iter(range(1_000_000))


def fill(side: OrderSide, qty: int, price: str, symbol: str = "AAPL",
         commission: str = "0") -> Fill:
    n = next(_seq)
    return Fill(execution_id=f"x{n}", client_order_id=f"c{n}", symbol=symbol, side=side,
                qty=qty, price=D(price), ts=T0, commission=D(commission))


def buy(qty: int, price: str, **kw: str) -> Fill:
    return fill(OrderSide.BUY, qty, price, **kw)


def sell(qty: int, price: str, **kw: str) -> Fill:
    return fill(OrderSide.SELL, qty, price, **kw)


def mark(book: Portfolio, **closes: float) -> None:
    syms = tuple(closes)
    arr = np.array([closes[s] for s in syms], dtype=np.float64)
    book.on_bars(BarBatch(ts=T0, symbols=syms, open=arr, high=arr, low=arr, close=arr,
                          volume=np.zeros(len(syms))))


class TestPortfolioAverageCost:
    def test_apply_fill_when_two_buys_then_weighted_average(self) -> None:
        book = Portfolio(CASH)

        book.apply_fill(buy(10, "100"))
        pos = book.apply_fill(buy(10, "110"))

        assert pos.qty == 20
        assert pos.avg_price == D("105")
        assert pos.realized_pnl == 0
        assert book.cash == CASH - 1000 - 1100

    def test_apply_fill_when_partial_sell_then_realized_and_avg_unchanged(self) -> None:
        # Arrange
        book = Portfolio(CASH)
        book.apply_fill(buy(10, "100"))
        book.apply_fill(buy(10, "110"))

        # Act
        pos = book.apply_fill(sell(5, "120"))

        # Assert: (120 - 105) x 5 = 75
        assert pos.realized_pnl == D("75")
        assert pos.qty == 15
        assert pos.avg_price == D("105")
        assert book.realized_pnl() == D("75")
        assert book.cash == CASH - 2100 + 600

    def test_apply_fill_when_sell_through_zero_then_flips_short_at_fill_price(self) -> None:
        book = Portfolio(CASH)
        book.apply_fill(buy(10, "100"))

        pos = book.apply_fill(sell(15, "90"))

        # 10 closed at a loss of 10 each; the 5 left over opened short at 90
        assert pos.realized_pnl == D("-100")
        assert pos.qty == -5
        assert pos.avg_price == D("90")
        assert book.cash == CASH - 1000 + 1350

    def test_apply_fill_when_short_then_cover_then_realized_and_flat(self) -> None:
        # Arrange
        book = Portfolio(CASH)
        book.apply_fill(sell(10, "50"))
        book.apply_fill(sell(10, "60"))  # short 20 @ 55

        # Act
        partial = book.apply_fill(buy(5, "40"))
        realized_after_partial = partial.realized_pnl
        flat = book.apply_fill(buy(15, "58"))

        # Assert: (55 - 40) x 5 = 75; then (55 - 58) x 15 = -45
        assert realized_after_partial == D("75")
        assert flat.qty == 0
        assert flat.avg_price == 0
        assert flat.realized_pnl == D("30")
        assert book.cash == CASH + 500 + 600 - 200 - 870
        assert book.cash == CASH + flat.realized_pnl

    def test_apply_fill_when_flip_short_to_long_then_avg_is_fill_price(self) -> None:
        book = Portfolio(CASH)
        book.apply_fill(sell(4, "20"))

        pos = book.apply_fill(buy(10, "25"))

        assert pos.qty == 6
        assert pos.avg_price == D("25")
        assert pos.realized_pnl == D("-20")

    def test_apply_fill_when_commissions_then_cash_reduced_and_counted(self) -> None:
        book = Portfolio(CASH)

        book.apply_fill(buy(10, "100", commission="1.25"))
        book.apply_fill(sell(10, "100", commission="0.75"))

        assert book.cash == CASH - D("2.00")
        assert book.commissions == D("2.00")
        assert book.realized_pnl() == 0  # commission is not trading P&L
        assert book.fill_count == 2


class TestPortfolioMarks:
    def test_equity_when_marked_then_cash_plus_market_value(self) -> None:
        # Arrange
        book = Portfolio(CASH)
        book.apply_fill(buy(10, "100"))
        book.apply_fill(sell(5, "200", symbol="MSFT"))

        # Act
        mark(book, AAPL=103.5, MSFT=190.25, IBM=150.0)

        # Assert
        assert book.market_value("AAPL") == D("1035.0")
        assert book.market_value("MSFT") == D("-951.25")
        assert book.market_value("IBM") == 0
        assert book.equity() == CASH - 1000 + 1000 + D("1035.0") - D("951.25")
        assert book.gross_exposure() == D("1035.0") + D("951.25")
        assert book.net_exposure() == D("1035.0") - D("951.25")

    def test_unrealized_pnl_when_marked_then_per_position_against_avg(self) -> None:
        book = Portfolio(CASH)
        book.apply_fill(buy(10, "100"))
        book.apply_fill(sell(5, "200", symbol="MSFT"))

        mark(book, AAPL=103.5, MSFT=190.25)

        views = {v.symbol: v for v in book.views()}
        assert views["AAPL"].unrealized_pnl == D("35.0")     # (103.5 - 100) x 10
        assert views["MSFT"].unrealized_pnl == D("48.75")    # (200 - 190.25) x 5
        assert book.unrealized_pnl() == D("83.75")

    def test_market_value_when_never_marked_then_valued_at_cost(self) -> None:
        book = Portfolio(CASH)
        book.apply_fill(buy(3, "12.34"))

        assert book.market_value("AAPL") == D("37.02")
        assert book.equity() == CASH
        assert book.unrealized_pnl() == 0

    def test_price_when_float_close_then_decimal_as_written(self) -> None:
        book = Portfolio(CASH)

        mark(book, AAPL=172.43)

        assert book.price("AAPL") == D("172.43")

    def test_on_fill_when_publisher_then_position_changed_published(self) -> None:
        published: list[Event] = []
        book = Portfolio(CASH, publish=published.append)
        f = buy(7, "10")

        book.on_fill(OrderFilled(client_order_id=f.client_order_id, ts=T0, fill=f))

        assert published == [PositionChanged(symbol="AAPL", qty=7, avg_price=D("10"),
                                             realized_pnl=D(0), ts=T0)]

    def test_restore_when_broker_positions_then_books_replaced_and_flat_dropped(self) -> None:
        book = Portfolio(CASH)
        book.apply_fill(buy(1, "1"))

        book.restore(D("5000"), [BrokerPosition("MSFT", 3, D("300")),
                                 BrokerPosition("IBM", 0, D("0"))])

        assert book.cash == D("5000")
        assert set(book.positions) == {"MSFT"}
        assert book.equity() == D("5900")


# -- the bookkeeping identity ---------------------------------------------------------------

fills_strategy = st.lists(
    st.tuples(
        st.sampled_from(["AAPL", "MSFT"]),
        st.sampled_from([OrderSide.BUY, OrderSide.SELL]),
        st.integers(1, 500),
        st.decimals(min_value=D("0.01"), max_value=D("5000"), places=2),
        st.decimals(min_value=D("0"), max_value=D("5"), places=2),
    ),
    min_size=1, max_size=40,
)


class TestPortfolioIdentity:
    @settings(max_examples=300, deadline=None)
    @given(fills_strategy)
    def test_books_when_random_fills_then_cash_plus_holdings_reconcile_to_pnl(
        self, fills: list[tuple[str, OrderSide, int, Decimal, Decimal]]
    ) -> None:
        # Arrange
        book = Portfolio(CASH)
        last_fill_price: dict[str, Decimal] = {}

        # Act
        for symbol, side, qty, price, commission in fills:
            book.apply_fill(fill(side, qty, str(price), symbol=symbol,
                                 commission=str(commission)))
            last_fill_price[symbol] = price
        mark(book, **{s: float(p) for s, p in last_fill_price.items()})

        # Assert: cash + sum(qty x mark) == initial + realized + unrealized - commissions
        holdings = sum((pos.qty * last_fill_price[s] for s, pos in book.positions.items()),
                       D(0))
        lhs = book.cash + holdings
        rhs = CASH + book.realized_pnl() + book.unrealized_pnl() - book.commissions
        # Average costs are divided out, so allow rounding far below a cent.
        assert abs(lhs - rhs) < D("1e-12"), (lhs, rhs)
        assert book.equity() == lhs
        assert book.commissions == sum((c for *_, c in fills), D(0))
        for s, pos in book.positions.items():
            net = sum((q if side is OrderSide.BUY else -q)
                      for sym, side, q, _, _ in fills if sym == s)
            assert pos.qty == net
            assert (pos.qty == 0) == (pos.avg_price == 0)


def _exact_adverse(v: PositionView) -> Decimal:
    assert v.last_price is not None
    move = (v.avg_price - v.last_price) / v.avg_price
    return move if v.qty > 0 else -move


class TestAdverse:
    def test_adverse_when_exactly_at_the_fraction_then_included(self) -> None:
        book = Portfolio(CASH)
        book.apply_fill(buy(30, "150"))
        book.apply_fill(sell(10, "200", symbol="MSFT"))  # a short, 5% against at 210
        mark(book, AAPL=142.5, MSFT=210.0)

        got = book.adverse(0.05)

        assert [(v.symbol, _exact_adverse(v)) for v in got] == [
            ("AAPL", D("0.05")), ("MSFT", D("0.05"))]

    def test_adverse_when_flat_or_unmarked_or_favourable_then_left_out(self) -> None:
        book = Portfolio(CASH)
        book.apply_fill(buy(10, "100", symbol="FLAT"))
        book.apply_fill(sell(10, "100", symbol="FLAT"))
        book.apply_fill(buy(10, "100", symbol="NOBAR"))
        book.apply_fill(buy(10, "100", symbol="UP"))
        mark(book, FLAT=50.0, UP=120.0)

        assert book.adverse(0.0) == ()

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.tuples(st.integers(-500, 500).filter(bool),
                              st.decimals("0.01", "999.99", places=2),
                              st.floats(0.01, 2000.0, allow_nan=False)), min_size=1,
                    max_size=20),
           st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.5]))
    def test_adverse_when_any_books_then_every_exactly_adverse_position_is_in(
            self, rows: list[tuple[int, Decimal, float]], fraction: float) -> None:
        book = Portfolio(CASH)
        closes = {}
        for i, (qty, avg, close) in enumerate(rows):
            sym = f"S{i}"
            book.apply_fill(fill(OrderSide.BUY if qty > 0 else OrderSide.SELL, abs(qty),
                                 str(avg), symbol=sym))
            closes[sym] = close
        mark(book, **closes)
        limit = Decimal(repr(fraction))

        exact = {v.symbol for v in book.views() if _exact_adverse(v) >= limit}
        got = book.adverse(fraction)

        assert exact <= {v.symbol for v in got}
        assert all(v in book.views() for v in got)  # marked like the views
