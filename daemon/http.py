"""The daemon's HTTP server: health, readiness, metrics, the status page, the JSON API and
the operator actions. aiohttp on the daemon's own event loop: no thread, no process.

============================  =====  =====================================================
route                         auth   answer
============================  =====  =====================================================
``GET /healthz``              no     200 while the event loop beats (the sd_notify
                                     watchdog's signal), 503 when its beat is older than
                                     ``loop_stall_secs``
``GET /readyz``               no     200 when reconciled, broker connected and feed fresh;
                                     else 503 ``{"ready": false, "reasons": [...]}``
``GET /metrics``              read   Prometheus text format (``daemon.metrics``)
``GET /``                     read   the live status page (``daemon/static``)
``GET /api/status``           read   the ``tradingd status --json`` document
``GET /api/overview``         read   status plus session phase, broker link, readiness, P&L
``GET /api/orders``           read   open orders and the day's orders (``?limit=``, <= 1000)
``GET /api/rejects``          read   the day's denials, newest first (``?limit=&before=SEQ``)
``GET /api/equity``           read   the day's equity marks
``GET /api/events``           read   server-sent events (``daemon.http_events``)
``POST /api/halt``            token  the control socket's ``halt`` (body ``{"why": ...}``)
``POST /api/resume``          token  ... ``resume``
``POST /api/emergency-stop``  token  ... ``emergency-stop``
``POST /api/liquidate``       token  ... ``liquidate``
============================  =====  =====================================================

Auth: mutating routes need ``Authorization: Bearer <token>`` (``TRADINGD_HTTP__TOKEN``,
compared in constant time): missing gives 401, wrong gives 403, and neither changes
anything. Without a configured token every mutating route answers 403. Reads need no
token on a loopback address; on any other address they need it too (``/healthz`` and
``/readyz`` excepted, for probes). On loopback the ``Host`` header must name a loopback
host, so a web page cannot reach the API through DNS rebinding.

Every refusal and every action is logged (``http.refused``, ``http.control``); the token
is never logged. A handler that fails answers 500 and the daemon runs on.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from importlib import resources
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import CounterMetricFamily, Metric

from config.operations import HttpConfig, is_loopback
from daemon.http_events import EventHub, TooManyClients
from daemon.journal_views import JournalViews
from daemon.metrics import Metrics
from daemon.surface import TradingSurface
from kernel.errors import ConfigError

log = structlog.get_logger("daemon.http")

ACTIONS = ("halt", "resume", "emergency-stop", "liquidate")
PROBES = frozenset({"/healthz", "/readyz"})
MAX_BODY = 16 * 1024
MAX_WHY = 200
_STATIC = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """The request is malformed (answered 400 with the message)."""


def _json(doc: Any, status: int = 200) -> web.Response:
    return web.json_response(doc, status=status,
                             dumps=lambda d: json.dumps(d, default=str))


def _host_name(host_header: str) -> str:
    host = host_header.strip()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HttpServer:
    """The server (see the module doc). ``async with`` binds and serves; ``port`` is the
    bound port (useful with ``listen: 127.0.0.1:0``)."""

    def __init__(self, cfg: HttpConfig, surface: TradingSurface, *, metrics: Metrics,
                 hub: EventHub, journal: JournalViews) -> None:
        self._cfg = cfg
        self._surface = surface
        self._hub = hub
        self._journal = journal
        self._token = cfg.token.get_secret_value().encode() if cfg.token else None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self.refused: Counter[str] = Counter()  # refusals by reason
        self._metrics_handler = make_aiohttp_handler(metrics.registry, disable_compression=True)
        self._static = {name: (resources.files("daemon") / "static" / name).read_bytes()
                        for name in _STATIC}
        self.app = self._build()

    def _build(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY,
                              middlewares=[self._guard])
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics)
        r.add_get("/", self.page)
        r.add_get("/static/{name}", self.static)
        r.add_get("/api/status", self.status)
        r.add_get("/api/overview", self.overview_route)
        r.add_get("/api/orders", self.orders)
        r.add_get("/api/rejects", self.rejects)
        r.add_get("/api/equity", self.equity)
        r.add_get("/api/events", self.events)
        for action in ACTIONS:
            r.add_post(f"/api/{action}", self._action(action))
        return app

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> HttpServer:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._cfg.host, self._cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError("http.listen", self._cfg.listen,
                              f"an address this host can listen on ({exc.strerror})") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._cfg.port
        self._hub.start()
        log.info("http.listening", host=self._cfg.host, port=self.port,
                 control=self._token is not None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("http.stopped")

    # -- middleware: host check, auth, failures ------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._cfg.loopback and not is_loopback(_host_name(request.host)):
            return self._refuse(request, 421, "BAD_HOST", "Host must name a loopback address")
        needs_token = request.method == "POST" or (
            not self._cfg.loopback and request.path not in PROBES)
        if needs_token:
            refused = self._check_token(request)
            if refused is not None:
                return refused
        try:
            return await handler(request)
        except BadRequest as exc:
            return _json({"ok": False, "error": str(exc)}, 400)
        except web.HTTPException:
            raise
        except Exception as exc:  # the daemon runs on; the caller gets the failure
            log.error("http.failed", method=request.method, path=request.path,
                      error=repr(exc), exc_info=exc)
            return _json({"ok": False, "error": repr(exc)}, 500)

    def _check_token(self, request: web.Request) -> web.Response | None:
        if self._token is None:
            return self._refuse(request, 403, "NO_TOKEN_CONFIGURED",
                                "control over HTTP needs TRADINGD_HTTP__TOKEN in the daemon")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            resp = self._refuse(request, 401, "TOKEN_MISSING", "Authorization: Bearer <token>")
            resp.headers["WWW-Authenticate"] = 'Bearer realm="tradingd"'
            return resp
        if not hmac.compare_digest(given.strip().encode(), self._token):
            return self._refuse(request, 403, "TOKEN_WRONG", "the token does not match")
        return None

    def _refuse(self, request: web.Request, status: int, reason: str,
                detail: str) -> web.Response:
        self.refused[reason] += 1
        log.warning("http.refused", method=request.method, path=request.path, status=status,
                    reason=reason, remote=request.remote)
        return _json({"ok": False, "reason": reason, "error": detail}, status)

    def metrics_samples(self) -> Iterable[Metric]:
        family = CounterMetricFamily("tradingd_http_refused",
                                     "HTTP requests refused (bad host, token missing or wrong)",
                                     labels=["reason"])
        for reason in ("BAD_HOST", "NO_TOKEN_CONFIGURED", "TOKEN_MISSING", "TOKEN_WRONG"):
            family.add_metric([reason], self.refused.get(reason, 0))
        yield family

    # -- probes and metrics --------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        age = self._surface.loop_beat_age()
        ok = age is None or age <= self._cfg.loop_stall_secs
        return _json({"status": "ok" if ok else "stalled",
                      "loop_beat_age_secs": None if age is None else round(age, 3),
                      "stall_after_secs": self._cfg.loop_stall_secs}, 200 if ok else 503)

    async def readyz(self, request: web.Request) -> web.Response:
        reasons = self._surface.readiness()
        return _json({"ready": not reasons, "reasons": reasons}, 503 if reasons else 200)

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        return await self._metrics_handler(request)

    # -- page ----------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return self._file(name)

    def _file(self, name: str) -> web.Response:
        return web.Response(body=self._static[name], content_type=_STATIC[name], headers={
            "Content-Security-Policy": _CSP, "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})

    # -- reads ---------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        return _json(self._surface.status())

    async def overview_route(self, request: web.Request) -> web.Response:
        return _json(overview(self._surface))

    async def orders(self, request: web.Request) -> web.Response:
        return _json(self._surface.orders(limit=_int(request, "limit", 200)))

    async def rejects(self, request: web.Request) -> web.Response:
        before = request.query.get("before")
        page = await self._journal.rejects(
            self._surface.now(), before=_int(request, "before", 0) if before else None,
            limit=_int(request, "limit", 50))
        return _json(page)

    async def equity(self, request: web.Request) -> web.Response:
        points = await self._journal.equity(self._surface.now())
        return _json({"points": [{"ts": ts, "equity": eq} for ts, eq in points]})

    async def events(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._hub.stream(request)
        except TooManyClients as exc:
            return _json({"ok": False, "error": str(exc)}, 503)

    # -- actions -------------------------------------------------------------------------

    def _action(self, name: str) -> Handler:
        async def run(request: web.Request) -> web.Response:
            why = await _why(request)
            handler = self._surface.control.get(name)
            if handler is None:
                return _json({"ok": False, "error": f"{name} is not available"}, 404)
            args = {"who": "http", "why": why or f"operator {name} over HTTP"}
            log.info("http.control", cmd=name, why=args["why"], remote=request.remote)
            try:
                result = await handler(args)
            except Exception as exc:  # same contract as the control socket
                log.error("http.control_failed", cmd=name, error=repr(exc))
                return _json({"ok": False, "error": repr(exc)}, 500)
            return _json({"ok": True, "cmd": name, **result})

        return run


def overview(s: TradingSurface) -> dict[str, Any]:
    """The status document plus what the status page shows beside it (``/api/overview``,
    and the ``status`` event of ``/api/events``)."""
    doc = s.status()
    start = (doc.get("counters") or {}).get("start_of_day_equity")
    pnl = None
    if start is not None:
        pnl = str((Decimal(doc["equity"]) - Decimal(start)).quantize(Decimal("0.01")))
    return {"status": doc, "session_phase": s.session_phase(),
            "broker_connected": s.broker_connected(), "readiness": s.readiness(),
            "pnl_today": pnl, "start_of_day_equity": start}


async def _why(request: web.Request) -> str | None:
    if not request.can_read_body:
        return None
    try:
        body = await request.json()
    except ValueError:
        raise BadRequest('expected a JSON body like {"why": "..."}') from None
    why = body.get("why") if isinstance(body, dict) else None
    return str(why)[:MAX_WHY] if why else None


def _int(request: web.Request, key: str, default: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadRequest(f"{key} must be an integer") from None


__all__ = ["ACTIONS", "HttpServer", "overview"]
