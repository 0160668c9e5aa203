// tradingd live status page: plain JS, no framework, no CDN. Reads /api/overview,
// /api/equity and /api/rejects once, then follows /api/events (server-sent events, read
// with fetch so the token can ride in a header). Every value is written with textContent.
"use strict";

const NY = "America/New_York";
const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
const timeFmt = new Intl.DateTimeFormat("en-US", {
  timeZone: NY, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
const hmFmt = new Intl.DateTimeFormat("en-US", {
  timeZone: NY, hour: "2-digit", minute: "2-digit", hour12: false });
const $ = (id) => document.getElementById(id);
const MAX_REJECTS = 50;
const MAX_FEED = 100;

const view = { equity: [], startEquity: null, rejects: [], lastClock: null, live: false };

function fmtMoney(v) {
  if (v === null || v === undefined || v === "" || v === "None") return "–";
  return money.format(Number(v));
}
function fmtSigned(v) {
  if (v === null || v === undefined || v === "None") return "–";
  const n = Number(v);
  return (n > 0 ? "+" : "") + money.format(n);
}
function signClass(el, v) {
  el.classList.remove("pos", "neg");
  const n = Number(v);
  if (n > 0) el.classList.add("pos");
  else if (n < 0) el.classList.add("neg");
}
function fmtTime(iso) { return iso ? timeFmt.format(new Date(iso)) : ""; }

function authHeaders() {
  const token = $("token").value.trim();
  return token ? { Authorization: "Bearer " + token } : {};
}

async function getJSON(path) {
  const resp = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (!resp.ok) throw new Error(path + ": HTTP " + resp.status);
  return resp.json();
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fillTable(id, rows, emptyText, build) {
  const body = $(id).tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = body.insertRow();
    const td = cell(tr, emptyText);
    td.colSpan = $(id).tHead.rows[0].cells.length;
    tr.className = "empty";
    return;
  }
  for (const row of rows) build(body.insertRow(), row);
}

// -- overview: state, books, positions, open orders --------------------------------------

function renderOverview(o) {
  const s = o.status;
  const state = $("state");
  state.textContent = s.trading_state;
  state.dataset.state = s.trading_state;
  state.title = s.risk ? (s.risk.changed_by + ": " + s.risk.reason) : "";
  $("phase").textContent = o.session_phase;
  const broker = $("broker");
  broker.textContent = s.broker + (o.broker_connected ? " connected" : " disconnected");
  broker.classList.toggle("up", o.broker_connected);
  broker.classList.toggle("down", !o.broker_connected);
  $("ready").textContent = o.readiness.length ? "no" : "yes";
  $("readiness").textContent = o.readiness.join(" · ");
  $("mode").textContent = s.mode + " · " + s.execution_mode;
  $("clock").textContent = fmtTime(s.clock);

  $("equity").textContent = fmtMoney(s.equity);
  $("cash").textContent = fmtMoney(s.cash);
  $("gross").textContent = fmtMoney(s.gross_exposure);
  const eq = Number(s.equity);
  $("gross-pct").textContent = eq ? (100 * Number(s.gross_exposure) / eq).toFixed(1) + "% of equity" : "";
  const pnl = $("pnl");
  pnl.textContent = fmtSigned(o.pnl_today);
  signClass(pnl, o.pnl_today);
  if (o.start_of_day_equity && o.pnl_today !== null) {
    const pct = 100 * Number(o.pnl_today) / Number(o.start_of_day_equity);
    $("pnl-pct").textContent = (pct >= 0 ? "+" : "") + pct.toFixed(2) + "% since the open";
  }
  const unreal = $("unrealized");
  unreal.textContent = fmtSigned(s.unrealized_pnl);
  signClass(unreal, s.unrealized_pnl);
  $("realized").textContent = "realized " + fmtSigned(s.realized_pnl);
  const c = s.counters || {};
  const denials = Object.values(c.rejects_by_reason || {}).reduce((a, b) => a + b, 0);
  $("counts").textContent = (c.orders ?? 0) + " / " + (c.fills ?? 0) + " / " + denials;
  $("why").textContent = s.trading_state === "ACTIVE" ? "" : (s.risk ? s.risk.reason : "");

  const positions = Object.entries(s.positions || {});
  $("positions-count").textContent = positions.length;
  fillTable("positions", positions, "no positions", (tr, [sym, p]) => {
    tr.dataset.symbol = sym;
    cell(tr, sym);
    cell(tr, p.qty, "n");
    cell(tr, fmtMoney(p.avg_price), "n");
    cell(tr, fmtMoney(p.market_value), "n");
    const u = cell(tr, fmtSigned(p.unrealized_pnl), "n");
    signClass(u, p.unrealized_pnl);
  });
  const orders = s.open_orders || [];
  $("orders-count").textContent = orders.length;
  fillTable("orders", orders, "no open orders", (tr, o2) => {
    tr.dataset.order = o2.client_order_id;
    cell(tr, o2.symbol);
    const side = cell(tr, o2.side);
    side.className = o2.side === "buy" ? "pos" : "neg";
    cell(tr, o2.qty, "n");
    cell(tr, o2.filled_qty, "n");
    cell(tr, o2.status);
    cell(tr, o2.client_order_id, "mono");
  });

  if (o.start_of_day_equity) view.startEquity = Number(o.start_of_day_equity);
  if (s.clock && s.clock !== view.lastClock) {
    view.lastClock = s.clock;
    const last = view.equity[view.equity.length - 1];
    if (!last || new Date(s.clock) > last.t) {
      view.equity.push({ t: new Date(s.clock), v: eq });
      if (view.equity.length > 2000) view.equity.splice(0, view.equity.length - 2000);
      drawChart();
    }
  }
}

// -- the intraday equity chart (inline SVG) ----------------------------------------------

const SVG = "http://www.w3.org/2000/svg";
function el(name, attrs, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function drawChart() {
  const box = $("chart");
  const w = box.clientWidth || 800, h = box.clientHeight || 220;
  const pad = { l: 86, r: 16, t: 10, b: 26 };
  const svg = el("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": "intraday equity" });
  const pts = view.equity;
  if (pts.length < 2) {
    svg.appendChild(el("text", { x: w / 2, y: h / 2, class: "axis", "text-anchor": "middle" },
      "waiting for equity marks"));
    box.replaceChildren(svg);
    return;
  }
  let lo = Math.min(...pts.map((p) => p.v)), hi = Math.max(...pts.map((p) => p.v));
  if (view.startEquity) { lo = Math.min(lo, view.startEquity); hi = Math.max(hi, view.startEquity); }
  const span = hi - lo || Math.max(1, hi * 0.001);
  lo -= span * 0.08; hi += span * 0.08;
  const t0 = pts[0].t.getTime(), t1 = pts[pts.length - 1].t.getTime();
  const x = (t) => pad.l + (w - pad.l - pad.r) * ((t - t0) / ((t1 - t0) || 1));
  const y = (v) => pad.t + (h - pad.t - pad.b) * (1 - (v - lo) / (hi - lo));
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4, yy = y(v);
    svg.appendChild(el("line", { x1: pad.l, x2: w - pad.r, y1: yy, y2: yy, class: "grid-line" }));
    svg.appendChild(el("text", { x: pad.l - 8, y: yy + 4, class: "axis", "text-anchor": "end" },
      money.format(v)));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + (t1 - t0) * i / 4;
    svg.appendChild(el("text", { x: x(t), y: h - 6, class: "axis",
      "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" }, hmFmt.format(new Date(t))));
  }
  const up = !view.startEquity || pts[pts.length - 1].v >= view.startEquity;
  const color = up ? "#2fbf71" : "#f0524f";
  if (view.startEquity) {
    const yb = y(view.startEquity);
    svg.appendChild(el("line", { x1: pad.l, x2: w - pad.r, y1: yb, y2: yb, class: "base" }));
  }
  const line = pts.map((p, i) => (i ? "L" : "M") + x(p.t.getTime()).toFixed(1) + " " + y(p.v).toFixed(1)).join(" ");
  const base = y(lo);
  svg.appendChild(el("path", { d: `${line} L${x(t1).toFixed(1)} ${base} L${x(t0).toFixed(1)} ${base} Z`,
    fill: color, "fill-opacity": "0.12", stroke: "none" }));
  svg.appendChild(el("path", { d: line, fill: "none", stroke: color, "stroke-width": "1.8" }));
  box.replaceChildren(svg);
  $("chart-hint").textContent = pts.length + " points · New York time";
}

// -- rejects and the activity feed -------------------------------------------------------

function renderRejects() {
  $("rejects-count").textContent = view.rejects.length;
  fillTable("rejects", view.rejects, "no rejects today", (tr, r) => {
    cell(tr, fmtTime(r.ts));
    cell(tr, r.symbol);
    cell(tr, r.side);
    cell(tr, r.qty, "n");
    cell(tr, r.reason, "reason");
    cell(tr, r.limit, "n");
    cell(tr, r.observed, "n");
  });
}

function addReject(r) {
  view.rejects.unshift(r);
  if (view.rejects.length > MAX_REJECTS) view.rejects.length = MAX_REJECTS;
  renderRejects();
  $("rejects").tBodies[0].rows[0].classList.add("flash");
}

function feed(kind, text, ts) {
  const li = document.createElement("li");
  const t = document.createElement("span"); t.className = "t"; t.textContent = fmtTime(ts);
  const k = document.createElement("span"); k.className = "k " + kind; k.textContent = kind;
  const m = document.createElement("span"); m.textContent = text;
  li.append(t, k, m);
  const list = $("feed");
  list.prepend(li);
  while (list.children.length > MAX_FEED) list.lastChild.remove();
}

let pushes = 0;
async function refreshEquity() {
  // The journal's marks (one per risk tick) are finer than the status pushes in a fast
  // replay and survive a reload; re-read them now and then, keep appending in between.
  const eq = await getJSON("/api/equity");
  const marks = eq.points.map((p) => ({ t: new Date(p.ts), v: Number(p.equity) }));
  const last = marks[marks.length - 1];
  view.equity = marks.concat(view.equity.filter((p) => !last || p.t > last.t));
  drawChart();
}

function onEvent(kind, d) {
  if (kind === "status") {
    renderOverview(d);
    if (++pushes % 5 === 0) refreshEquity().catch(() => {});
    return;
  }
  if (kind === "dropped") {
    feed("gap", d.dropped + " events missed: reloading", null);
    reload();
    return;
  }
  if (kind === "reject") {
    addReject(d);
    feed("reject", `${d.symbol} ${d.side} ${d.qty}: ${d.reason}`, d.ts);
  } else if (kind === "state") {
    const st = $("state"); st.textContent = d.new; st.dataset.state = d.new;
    feed("state", `${d.old} → ${d.new} by ${d.who}: ${d.why}`, d.ts);
  } else if (kind === "fill") {
    const f = d.fill;
    feed("fill", `${f.side} ${f.qty} ${f.symbol} @ ${fmtMoney(f.price)}`, d.ts);
  } else if (kind === "order") {
    const o = d.order || {};
    feed("order", `${d.type.replace("Order", "").toLowerCase()} ${o.side || ""} ${o.qty || ""} ${o.symbol || d.client_order_id}`, d.ts);
  } else if (kind === "broker") {
    feed("broker", `${d.broker} ${d.status} ${d.detail || ""}`, d.ts);
  } else if (kind === "alert") {
    feed("alert", `${d.name} (${d.severity})`, d.ts);
  }
}

// -- the event stream --------------------------------------------------------------------

function setLive(on) {
  view.live = on;
  const l = $("live");
  l.dataset.live = on ? "1" : "0";
  l.textContent = on ? "live" : "offline";
}

function parseBlock(block) {
  let kind = "message", data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) kind = line.slice(6).trim();
    else if (line.startsWith("data:")) data += line.slice(5).trim();
  }
  if (data) onEvent(kind, JSON.parse(data));
}

async function follow() {
  for (;;) {
    try {
      const resp = await fetch("/api/events", { headers: authHeaders(), cache: "no-store" });
      if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
      setLive(true);
      const reader = resp.body.getReader();
      const dec = new TextDecoder();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (!block.startsWith(":")) parseBlock(block);
        }
      }
    } catch (e) {
      // fall through: reconnect below
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, 2000));
  }
}

async function reload() {
  try {
    renderOverview(await getJSON("/api/overview"));
    view.equity = [];
    await refreshEquity();
    view.rejects = (await getJSON("/api/rejects?limit=" + MAX_REJECTS)).rejects;
    renderRejects();
  } catch (e) {
    $("readiness").textContent = "cannot read the daemon: " + e.message;
  }
}

// -- operator actions --------------------------------------------------------------------

async function act(action, button) {
  const out = $("action-result");
  out.className = "result";
  if (!$("token").value.trim()) {
    out.textContent = "enter the token first";
    out.classList.add("err");
    $("token").focus();
    return;
  }
  if (action === "liquidate" && !window.confirm("Liquidate: cancel every order and close every position?")) return;
  button.disabled = true;
  out.textContent = action + "…";
  try {
    const why = $("why-input").value.trim();
    const resp = await fetch("/api/" + action, {
      method: "POST", headers: { ...authHeaders(), "Content-Type": "application/json" },
      body: JSON.stringify(why ? { why } : {}) });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok || !body.ok) {
      out.textContent = action + " refused (HTTP " + resp.status + "): " + (body.error || body.reason || "");
      out.classList.add("err");
    } else {
      out.textContent = action + " done: state " + body.state + (body.detail ? " (" + body.detail + ")" : "");
      out.classList.add("okmsg");
      renderOverview(await getJSON("/api/overview"));
    }
  } catch (e) {
    out.textContent = action + " failed: " + e.message;
    out.classList.add("err");
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("button[data-action]")) {
    b.addEventListener("click", () => act(b.dataset.action, b));
  }
  window.addEventListener("resize", drawChart);
  reload().then(follow);
});
