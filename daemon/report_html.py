"""The HTML page of ``tradingd report``: one self-contained file (inline CSS and SVG, no
script, nothing fetched), readable printed or on screen.

Sections: a summary of the day, the equity curve (New York time, the start-of-day equity
dashed), the drawdown and the slippage histogram, P&L by symbol, the day's orders with
their outcome, rejects by reason, and every figure as a plain table. Money is formatted
($1,234.56; P&L signed and coloured), times are New York time.
"""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import Any

from daemon.report import DayReport, SymbolPnl, ny_time
from daemon.svg import histogram, line_chart, money, percent
from kernel.model import CENT
from kernel.orders import Order

_MONEY_FIGURES = frozenset({"start_equity", "end_equity", "realized_pnl", "unrealized_pnl",
                            "gross_exposure", "net_exposure"})
_SIGNED_FIGURES = frozenset({"pnl"})

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:28px auto;
max-width:1100px;color:#24292f;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:15px;margin:28px 0 8px;color:#57606a;
text-transform:uppercase;letter-spacing:.5px}
.sub{color:#57606a;margin-bottom:18px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:10px}
.card{border:1px solid #d0d7de;border-radius:8px;padding:10px 12px}
.card .k{color:#57606a;font-size:12px;text-transform:uppercase;letter-spacing:.4px}
.card .v{font-size:20px;font-weight:600;font-variant-numeric:tabular-nums;margin-top:2px}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums;font-size:13px}
th,td{padding:4px 10px;border-bottom:1px solid #eaeef2;text-align:left;white-space:nowrap}
thead th{color:#57606a;font-weight:500;border-bottom:1px solid #d0d7de}
td.n,th.n{text-align:right}.pos{color:#1a7f37}.neg{color:#cf222e}
tfoot td{font-weight:600;border-top:1px solid #d0d7de}
.mono{font-family:ui-monospace,Menlo,monospace;font-size:12px;color:#57606a}
.charts svg{display:block;margin:6px 0 14px;max-width:100%;height:auto}
"""


def money_text(v: Decimal | float | str | None) -> str:
    if v is None:
        return "-"
    return money(float(Decimal(str(v)).quantize(CENT)))


def signed(v: Decimal | float | str | None) -> str:
    if v is None:
        return "-"
    d = Decimal(str(v)).quantize(CENT)
    return ("+" if d > 0 else "") + money(float(d))


def _cls(v: Decimal | float | str | None) -> str:
    if v is None:
        return "n"
    d = Decimal(str(v))
    return "n pos" if d > 0 else "n neg" if d < 0 else "n"


def _td(text: Any, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>{escape('-' if text is None else str(text))}</td>"


def _figure(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in _SIGNED_FIGURES:
        return signed(value)
    if key in _MONEY_FIGURES:
        return money_text(value)
    if key == "max_drawdown_pct":
        return f"{value:.2f}%"
    return str(value)


def _cards(rep: DayReport, f: dict[str, Any]) -> str:
    cards = [
        ("Start equity", money_text(f["start_equity"]), ""),
        ("End equity", money_text(f["end_equity"]), ""),
        ("P&L", signed(f["pnl"]), _cls(f["pnl"]).replace("n", "").strip()),
        ("Max drawdown", f"{f['max_drawdown_pct']:.2f}%", ""),
        ("Orders / fills", f"{rep.orders} / {rep.fills}", ""),
        ("Fill rate", f"{rep.fill_rate:.0%}", ""),
        ("Slippage (mean)", "-" if f["slippage_bps_mean"] is None
         else f"{f['slippage_bps_mean']:.1f} bps", ""),
        ("Rejects", str(sum(rep.rejects.values())), ""),
    ]
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="k">{escape(k)}</div>'
        f'<div class="v {c}">{escape(v)}</div></div>' for k, v, c in cards) + "</div>"


def _symbols(rows: list[SymbolPnl]) -> str:
    if not rows:
        return "<p>No fills or positions this day.</p>"
    head = ("<thead><tr><th>Symbol</th><th class=n>Fills</th><th class=n>Bought</th>"
            "<th class=n>Sold</th><th class=n>Position</th><th class=n>Avg cost</th>"
            "<th class=n>Last</th><th class=n>Realized</th><th class=n>Unrealized</th>"
            "<th class=n>Day P&amp;L</th></tr></thead>")
    body = "".join(
        "<tr>" + _td(s.symbol) + _td(s.fills, "n") + _td(s.bought, "n") + _td(s.sold, "n")
        + _td(s.qty, "n") + _td(money_text(s.avg_price) if s.qty else "-", "n")
        + _td(money_text(s.last_price), "n") + _td(signed(s.realized), _cls(s.realized))
        + _td(signed(s.unrealized), _cls(s.unrealized))
        + _td(signed(s.day_pnl), _cls(s.day_pnl)) + "</tr>" for s in rows)
    total = sum((s.day_pnl for s in rows), Decimal(0))
    realized = sum((s.realized for s in rows), Decimal(0))
    unrealized = sum((s.unrealized for s in rows), Decimal(0))
    foot = ("<tfoot><tr><td>Total</td><td colspan=6></td>" + _td(signed(realized),
            _cls(realized)) + _td(signed(unrealized), _cls(unrealized))
            + _td(signed(total), _cls(total)) + "</tr></tfoot>")
    return f'<table id="symbols">{head}<tbody>{body}</tbody>{foot}</table>'


def _orders(orders: list[Order]) -> str:
    if not orders:
        return "<p>No orders this day.</p>"
    head = ("<thead><tr><th>Time (NY)</th><th>Symbol</th><th>Side</th><th class=n>Qty</th>"
            "<th>Type</th><th class=n>Reference</th><th class=n>Filled</th>"
            "<th class=n>Avg price</th><th>Status</th><th>Order id</th></tr></thead>")
    body = "".join(
        "<tr>" + _td(ny_time(o.created_ts)) + _td(o.symbol)
        + _td(str(o.side), "pos" if o.side.sign > 0 else "neg") + _td(o.qty, "n")
        + _td(str(o.order_type)) + _td(money_text(o.reference_price), "n")
        + _td(o.filled_qty, "n")
        + _td(money_text(o.avg_fill_price) if o.avg_fill_price is not None else "-", "n")
        + _td(str(o.status)) + _td(o.client_order_id, "mono") + "</tr>" for o in orders)
    return f'<table id="orders">{head}<tbody>{body}</tbody></table>'


def render(rep: DayReport) -> str:
    """The whole page."""
    f = rep.figures()
    cells = "".join(f"<tr><th>{escape(k)}</th><td>{escape(_figure(k, v))}</td></tr>"
                    for k, v in f.items() if k != "rejects_by_reason")
    rejects = "".join(f"<tr><th>{escape(r)}</th><td class=n>{n}</td></tr>"
                      for r, n in sorted(rep.rejects.items())) or "<tr><td>none</td></tr>"
    xs = [ny_time(ts)[:5] for ts, _ in rep.equity]
    start = float(rep.start_equity) if rep.start_equity is not None else None
    charts = [
        line_chart("Equity (New York time)", xs, [e for _, e in rep.equity], css="equity",
                   area=True, y_fmt=money, baseline=start),
        line_chart("Drawdown from the running peak", xs, rep.drawdown_pct(), css="drawdown",
                   color="#cf222e", fill_to_zero=True, y_fmt=percent),
        histogram("Slippage vs signal reference (bps)", rep.slippage_bps, css="slippage",
                  x_fmt=lambda v: f"{v:.1f}"),
    ]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tradingd report {escape(rep.day)}</title>
<style>{_CSS}</style></head>
<body><h1>tradingd report {escape(rep.day)}</h1>
<div class="sub">New York trading day {escape(rep.day)}; times are New York time.</div>
{_cards(rep, f)}
<h2>Charts</h2><div class="charts">{"".join(charts)}</div>
<h2>P&amp;L by symbol</h2>{_symbols(rep.symbols)}
<h2>Orders ({len(rep.day_orders)})</h2>{_orders(rep.day_orders)}
<h2>Rejects by reason</h2><table id="rejects">{rejects}</table>
<h2>Figures</h2><table id="figures">{cells}</table>
</body></html>
"""


__all__ = ["money_text", "render", "signed"]
