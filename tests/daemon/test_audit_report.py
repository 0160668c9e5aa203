"""``tradingd audit`` and ``tradingd report`` on a journaled test session."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from brokers.fake import FakeBroker
from daemon.cli import main
from kernel.events import OrderDenied, SignalBatch, SubmitOrder
from kernel.model import Signal
from risk.config import RiskConfig
from tests.daemon.session import Session
from tests.kit import T0, intent


async def _session(tmp_path: Path) -> None:
    """A denied signal (MAX_POSITION) and a filled order (two fills) for AAPL/MSFT.

    The signals are journaled by the system; its sizing threshold (0.95) is above their
    strengths, so the system itself trades neither: the denial and the order for them
    are the test's own."""
    broker = FakeBroker()
    s = Session(tmp_path, broker, risk=RiskConfig(signal_threshold=0.95))
    await s.start()
    sig_msft = Signal("demo:1:MSFT", "MSFT", 0.9, 400.0, T0, "demo")
    sig_aapl = Signal("demo:1:AAPL", "AAPL", 0.7, 100.0, T0, "demo")
    s.bus.publish(SignalBatch(T0, "demo", (sig_msft, sig_aapl)))
    denied = replace(intent("td-msft1", symbol="MSFT", qty=30, price="400"), signal=sig_msft)
    s.bus.publish(OrderDenied(denied, reason="MAX_POSITION_PCT", limit=Decimal("5000.00"),
                              observed=Decimal("12000.00")))
    s.marker.mark(s.clock.now())
    s.bus.send(SubmitOrder(replace(intent("td-aapl1", qty=10, price="100"), signal=sig_aapl)))
    await s.orders.drained()
    broker.fill("td-aapl1", 4, Decimal("100.02"), T0 + timedelta(minutes=1))
    broker.fill("td-aapl1", 6, Decimal("100.05"), T0 + timedelta(minutes=2))
    for minute, px in ((3, 101.0), (4, 99.0), (5, 100.5)):
        s.clock.set(T0 + timedelta(minutes=minute))
        s.portfolio.load(s.portfolio.cash, s.portfolio.positions.values(), prices={"AAPL": px})
        s.marker.mark(s.clock.now())
    await s.stop()


class TestAudit:
    async def test_audit_when_signal_denied_then_shows_reason_and_numbers(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        await _session(tmp_path)
        capsys.readouterr()  # the session's own log lines
        assert main(["audit", "--state-dir", str(tmp_path), "--order", "td-msft1"]) == 0
        out = capsys.readouterr().out
        assert "signal demo:1:MSFT strength=0.9" in out
        assert "DENIED reason=MAX_POSITION_PCT limit=5000.00 observed=12000.00" in out
        assert "outcome: denied by the gate: MAX_POSITION_PCT (limit 5000.00, observed " \
               "12000.00)" in out

    async def test_audit_and_report_when_run_then_journal_file_untouched(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        # Arrange: a closed journal (as beside a daemon, tools must only read it)
        await _session(tmp_path)
        journal = tmp_path / "journal.sqlite"
        before = journal.read_bytes()
        # Act
        assert main(["audit", "--state-dir", str(tmp_path), "--order", "td-aapl1"]) == 0
        assert main(["report", "--state-dir", str(tmp_path), "--out",
                     str(tmp_path / "r.html")]) == 0
        # Assert: not a byte written (a writer would stamp the schema version, flush, ...)
        assert journal.read_bytes() == before

    async def test_audit_when_order_filled_then_shows_intent_ack_and_each_fill(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        await _session(tmp_path)
        capsys.readouterr()  # the session's own log lines
        assert main(["audit", "--state-dir", str(tmp_path), "--order", "td-aapl1"]) == 0
        out = capsys.readouterr().out
        kinds = [line.split()[2] for line in out.splitlines()[1:] if re.match(r"\s+\d+ ", line)]
        assert kinds == ["Signal", "OrderIntent", "OrderSubmitted", "OrderNew", "OrderFilled",
                         "OrderFilled"]
        assert "intent buy 10 market day ref=100 signal=demo:1:AAPL" in out
        assert "ack new broker_order_id=B1" in out
        assert "fill buy 4 @ 100.02 exec=B1-1" in out and "fill buy 6 @ 100.05 exec=B1-2" in out
        assert "outcome: filled: filled 10/10 at avg 100.0380" in out

    async def test_audit_when_json_or_csv_then_machine_readable(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        await _session(tmp_path)
        capsys.readouterr()  # the session's own log lines
        main(["audit", "--state-dir", str(tmp_path), "--symbol", "MSFT", "--format", "json"])
        rows = json.loads(capsys.readouterr().out)
        assert [r["type"] for r in rows] == ["Signal", "OrderDenied"]
        assert rows[1]["payload"]["limit"] == "5000.00"
        main(["audit", "--state-dir", str(tmp_path), "--symbol", "MSFT", "--format", "csv"])
        lines = capsys.readouterr().out.strip().splitlines()
        assert lines[0] == "seq,ts,type,client_order_id,symbol,detail,payload"
        assert len(lines) == 3

    async def test_audit_when_signal_id_given_then_follows_it_to_its_order(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        await _session(tmp_path)
        capsys.readouterr()  # the session's own log lines
        main(["audit", "--state-dir", str(tmp_path), "--signal", "demo:1:AAPL",
              "--format", "json"])
        rows = json.loads(capsys.readouterr().out)
        assert rows[0]["type"] == "Signal"
        assert {r["client_order_id"] for r in rows[1:]} == {"td-aapl1"}


class TestReport:
    async def test_report_when_run_then_html_has_charts_and_figures(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        # Arrange
        await _session(tmp_path)
        capsys.readouterr()  # the session's own log lines
        out = tmp_path / "r.html"
        # Act
        assert main(["report", "--state-dir", str(tmp_path), "--out", str(out)]) == 0
        # Assert: the text figures
        text = capsys.readouterr().out
        assert "tradingd report for 2024-03-01" in text
        assert re.search(r"orders\s+1\b", text) and re.search(r"fills\s+2\b", text)
        assert "gate:MAX_POSITION_PCT" in text
        # and the page
        html = out.read_text()
        assert html.count("<svg") == 3
        for css in ("equity", "drawdown", "slippage"):
            assert f'class="{css}"' in html
        assert "<polyline" in html and "<rect" in html
        assert "<th>fill_rate</th><td>1.0</td>" in html
        # slippage: 2 bps and 5 bps on a buy against reference 100
        assert "<th>slippage_bps_mean</th><td>3.5</td>" in html
        # 10 AAPL at 100.038 marked at 100.5; money is formatted
        assert "<th>pnl</th><td>+$4.62</td>" in html
        assert "<th>start_equity</th><td>$100,000.00</td>" in html
        assert "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', ""), \
            "self-contained: nothing fetched"

    async def test_report_when_run_then_per_symbol_pnl_and_orders_in_new_york_time(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        # Arrange
        await _session(tmp_path)
        capsys.readouterr()
        out = tmp_path / "r.html"
        # Act
        assert main(["report", "--state-dir", str(tmp_path), "--out", str(out)]) == 0
        html = out.read_text()
        text = capsys.readouterr().out
        # Assert: AAPL bought 4 + 6 (avg 100.038), marked at 100.50: +4.62 unrealized
        symbols = html[html.index('<table id="symbols">'):]
        symbols = symbols[:symbols.index("</table>")]
        row = re.search(r"<tr><td>AAPL</td>(.*?)</tr>", symbols)
        assert row is not None
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
        assert cells == ["2", "10", "0", "10", "$100.04", "$100.50", "$0.00", "+$4.62",
                         "+$4.62"]
        assert "MSFT" not in symbols, "a denied signal trades nothing"
        assert re.search(r"AAPL\s+2\s+10\s+0\.00\s+4\.62\s+4\.62", text)
        # the day's orders: T0 is 15:00 UTC, 10:00 in New York (EST)
        orders = html[html.index('<table id="orders">'):]
        orders = orders[:orders.index("</table>")]
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", orders)
        assert cells == ["10:00:00", "AAPL", "buy", "10", "market", "$100.00", "10",
                         "$100.04", "filled", "td-aapl1"]
        # the equity chart's time axis is New York time too
        equity_svg = html[html.index('class="equity"'):html.index("</svg>")]
        assert ">10:00<" in equity_svg and ">10:05<" in equity_svg

    async def test_report_when_position_carried_overnight_then_day_pnl_counts_only_today(
            self, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
        # Arrange: day 1 buys 10 AAPL at ~100.04 and marks it at 100.50; day 2 marks it
        # at 101.00 first, sells 4 at 102.00, and marks the rest at 101.50.
        await _session(tmp_path)
        from engine.journal import JOURNAL_FILE, Journal

        day2 = T0 + timedelta(days=3)  # Monday 2024-03-04
        journal = Journal(tmp_path / JOURNAL_FILE)
        journal.open()
        try:
            from kernel.events import OrderFilled
            from kernel.model import Fill, OrderSide

            def mark(ts: datetime, px: str) -> None:
                journal.append("EquityMark", {"day": "2024-03-04", "equity": "0",
                                              "start_of_day_equity": "100004.62",
                                              "prices": {"AAPL": float(px)}}, ts=ts)

            mark(day2, "101.00")
            journal.append("OrderIntent", intent("td-aapl2", side=OrderSide.SELL, qty=4,
                                                 price="102"), ts=day2,
                           client_order_id="td-aapl2", symbol="AAPL")
            fill = Fill("X-1", "td-aapl2", "AAPL", OrderSide.SELL, 4, Decimal("102.00"),
                        day2 + timedelta(minutes=1))
            journal.on_event(OrderFilled("td-aapl2", day2 + timedelta(minutes=1), fill=fill))
            mark(day2 + timedelta(minutes=2), "101.50")
        finally:
            journal.close()
        capsys.readouterr()
        out = tmp_path / "r2.html"
        # Act
        assert main(["report", "--state-dir", str(tmp_path), "--date", "2024-03-04",
                     "--out", str(out)]) == 0
        html = out.read_text()
        # Assert: realized (102 - 100.038) x 4 = 7.848; unrealized (101.5 - 100.038) x 6 =
        # 8.772; at the day's first mark it was (101 - 100.038) x 10 = 9.62:
        # day P&L = 7.848 + 8.772 - 9.62 = 7.00
        row = re.search(r"<tr><td>AAPL</td>(.*?)</tr>", html)
        assert row is not None
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row.group(1))
        assert cells == ["1", "0", "4", "6", "$100.04", "$101.50", "+$7.85", "+$8.77",
                         "+$7.00"]

    def test_report_when_no_journal_then_usage_error(self, tmp_path: Path):
        assert main(["report", "--state-dir", str(tmp_path)]) == 2
