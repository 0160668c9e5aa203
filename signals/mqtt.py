"""The MQTT bridge: external signals in, daemon events out, signed control commands.

Topics (``<prefix>`` defaults to ``tradingd``):

* ``<prefix>/signals`` (subscribed, QoS 1): signal payloads, see ``signals._mqtt_schema``.
  Valid ones enter the daemon as one ``SignalBatch`` per message through the inbox
  (``Inbox.offer``), so they meet exactly the sizing and gate the model's signals meet.
  Invalid ones are refused with a reason code: counted, logged ``signal.reject``,
  published as ``SignalRejected`` on the bus and as JSON on ``<prefix>/rejects``. A
  signal id seen before (per source, among the last ``dedup_window``) is ignored and
  logged ``signal.duplicate``. Every reject and duplicate is counted; their log lines are
  limited to 50 a second per reason (``suppressed=n`` on the next line says how many
  were not written), so a flood of garbage cannot flood the journal.
* ``<prefix>/control`` (subscribed, QoS 1): signed commands, see
  ``signals.mqtt_control``. Refused ones are logged ``control.refused`` with the reason.
* ``<prefix>/events/<kind>``: order lifecycle, fills, positions, trading state, gate
  denials, heartbeats (see ``signals._mqtt_outbox`` for kinds, QoS and drop policy).
* ``<prefix>/status`` (retained): ``{"online": true, "state": ...}`` while connected;
  the broker publishes the retained last will ``{"online": false}`` if the daemon
  vanishes, and the bridge publishes the same on a clean exit.

Concurrency: bus handlers only append to a bounded ``Outbox``; they never await, so a
broker outage never slows order handling. Tasks owned: ``mqtt.connection`` (connects,
reconnects with exponential backoff and jitter, logging ``mqtt.connected`` and
``mqtt.disconnected``), and per connection ``mqtt.receive`` and ``mqtt.publish``;
``mqtt.heartbeat``; one ``mqtt.control`` per accepted command. A task failing with
anything but a connection error is a bug: logged ``mqtt.task_failed`` and reported to
``on_failure`` (the daemon stops).

Sessions are clean: signals published while the daemon is disconnected are not queued by
the broker for it (they would be stale by the time they arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import random
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from types import TracebackType
from typing import Any, Self, cast

import aiomqtt
import structlog

from kernel import logging as dlog
from kernel.bus import Bus
from kernel.clock import Clock, WallClock, monotonic_ns
from kernel.events import Event, SignalBatch, SignalRejected, TradingStateChanged
from kernel.inbox import Inbox
from kernel.model import Signal
from signals import _mqtt_readahead
from signals._mqtt_ingress import IngressQueue
from signals._mqtt_outbox import (
    LOSSY_KINDS,
    PUBLISHED_EVENTS,
    Outbox,
    Outgoing,
    dumps,
    encode_event,
    kind_of,
)
from signals._mqtt_schema import QUEUE_FULL, Limits, PayloadRejected, excerpt, parse_payload
from signals._mqtt_stats import BridgeStats, LogLimiter
from signals.config import MqttConfig
from signals.mqtt_control import ControlCommand, ControlRefused, ControlVerifier

log = structlog.get_logger("signals.mqtt")

PUBLISH_WINDOW = 64  # publishes awaiting their PUBACK (or write) at once
ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# aiomqtt logs through stdlib logging; its per-message "queue is full" warnings would
# flood the log during a storm, and the bridge counts and logs those drops itself.
_CLIENT_LOGGER = logging.getLogger("signals.mqtt.client")
_CLIENT_LOGGER.setLevel(logging.ERROR)
_AIOMQTT_VERSION = importlib.metadata.version("aiomqtt")


class MqttBridge:
    """Connects the daemon to an MQTT broker. Use as ``async with MqttBridge(...)``.

    Args:
        cfg: the ``signals.mqtt`` config slice.
        clock: domain time (stamps rejects and heartbeats).
        bus: the daemon's bus; the bridge subscribes the events it publishes.
        inbox: where accepted ``SignalBatch``es go (``offer``; full -> ``QUEUE_FULL``).
        control: command name -> async handler (looked up when a command arrives, so
            handlers registered later are found). ``-`` and ``_`` are interchangeable.
        orders: the order manager's ``orders`` mapping, to add symbol/side/qty to order
            events that carry only a client order id.
        trading_state: the state to report in ``<prefix>/status`` until a
            ``TradingStateChanged`` says otherwise.
        on_failure: called with the exception when a bridge task fails (a bug).
        wall_clock: real time for control-message freshness (default: the wall clock).

    Events published on the bus: ``SignalRejected``. Into the inbox: ``SignalBatch``.
    """

    def __init__(
        self,
        cfg: MqttConfig,
        *,
        clock: Clock,
        bus: Bus,
        inbox: Inbox,
        control: Mapping[str, ControlHandler] | None = None,
        orders: Mapping[str, Any] | None = None,
        trading_state: str = "ACTIVE",
        on_failure: Callable[[BaseException], None] | None = None,
        wall_clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self._bus = bus
        self._inbox = inbox
        self._handlers = control if control is not None else {}
        self._orders = orders
        self._state = trading_state
        self._on_failure = on_failure
        self._rng = rng or random.Random()
        p = cfg.prefix
        self.topics = {"signals": f"{p}/signals", "control": f"{p}/control",
                       "rejects": f"{p}/rejects", "status": f"{p}/status"}
        self._limits = Limits(max_bytes=cfg.max_payload_bytes,
                              max_batch_symbols=cfg.max_batch_symbols)
        self._verifier = ControlVerifier(cfg.control_secret, target=p,
                                         commands=cfg.control_commands,
                                         max_skew_secs=cfg.control_max_skew_secs,
                                         wall_clock=wall_clock or WallClock())
        self.outbox = Outbox(cfg.outbound_queue, lossy_per_sec=cfg.lossy_events_per_sec)
        self.stats = BridgeStats()
        self.connected = asyncio.Event()
        self.failure: BaseException | None = None
        self._seen: dict[tuple[str, str], None] = {}
        self._client: aiomqtt.Client | None = None
        self._ingress: IngressQueue | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._limiter = LogLimiter()
        for secret in (cfg.password, cfg.control_secret):
            if secret is not None:
                dlog.register_secret(secret.get_secret_value())
        self.follow(bus)

    def follow(self, bus: Bus) -> None:
        """Publish the events of ``bus`` too (the other accounts of a multi-account daemon)."""
        for event_type in PUBLISHED_EVENTS:
            bus.subscribe(event_type, self._on_event)

    def __repr__(self) -> str:
        return f"MqttBridge(url={self.cfg.url!r}, prefix={self.cfg.prefix!r})"

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._spawn(self._run(), "mqtt.connection")
        self._spawn(self._heartbeats(), "mqtt.heartbeat")
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._say_goodbye()
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._ingress is not None and len(self._ingress):
            # Read (and acknowledged) but not validated when the daemon stopped.
            log.warning("mqtt.ingress_unprocessed", messages=len(self._ingress))
        if self.failure is not None and self._on_failure is None and et is None:
            raise self.failure

    async def wait_connected(self, timeout: float = 10.0) -> None:
        """Wait until subscribed and announced online (tests, benchmarks)."""
        await asyncio.wait_for(self.connected.wait(), timeout)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        assert exc is not None
        log.error("mqtt.task_failed", task=task.get_name(), error=repr(exc), exc_info=exc)
        self.failure = exc
        if self._on_failure is not None:
            self._on_failure(exc)

    async def _say_goodbye(self) -> None:
        """Flush what must not be lost (briefly), then mark the daemon offline."""
        client = self._client
        if client is None or not self.connected.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.outbox.keep_taken(), 1.0)
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await asyncio.wait_for(client.publish(self.topics["status"],
                                                  dumps(self._status(online=False)),
                                                  qos=1, retain=True), 2.0)

    # -- connection --------------------------------------------------------------------

    def _make_client(self, ingress: IngressQueue) -> aiomqtt.Client:
        cfg = self.cfg
        # aiomqtt makes its queue with queue_type(maxsize=...): hand it this one.
        queue_type = cast("type[asyncio.Queue[aiomqtt.Message]]", lambda maxsize: ingress)
        return aiomqtt.Client(
            cfg.host, cfg.port, identifier=cfg.identifier, username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            keepalive=cfg.keepalive_secs, clean_session=True, logger=_CLIENT_LOGGER,
            tls_context=ssl.create_default_context() if cfg.tls else None,
            max_queued_incoming_messages=cfg.inbound_queue,
            queue_type=queue_type,
            # Small packets (PUBACKs, events) go out at once: with Nagle a PUBACK can wait
            # for the peer's delayed ACK (40 ms) and stall the broker's in-flight window.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            will=aiomqtt.Will(self.topics["status"], dumps(self._status(online=False)),
                              qos=1, retain=True),
        )

    def _on_read(self, message: aiomqtt.Message) -> None:
        self.stats.read += 1

    async def _run(self) -> None:
        delay = self.cfg.reconnect_min_secs
        while True:
            started = monotonic_ns()
            error = await self._connect_once()
            self.connected.clear()
            self._client = None
            self.stats.disconnects += 1
            if monotonic_ns() - started > 10 * 1_000_000_000:
                delay = self.cfg.reconnect_min_secs  # it was up for a while: start over
            pause = delay * (0.5 + 0.5 * self._rng.random())
            log.warning("mqtt.disconnected", error=error, retry_in_secs=round(pause, 3),
                        url=self.cfg.url)
            await asyncio.sleep(pause)
            delay = min(delay * 2, self.cfg.reconnect_max_secs)

    async def _connect_once(self) -> str:
        """One connection, from connect to loss; returns why it ended."""
        error = "closed"
        ingress = IngressQueue(self.cfg.inbound_queue, on_read=self._on_read,
                               on_overflow=self._on_ingress_overflow)
        self._ingress = ingress
        client = self._make_client(ingress)
        try:
            async with client:
                if not _mqtt_readahead.install(client):
                    log.warning("mqtt.read_ahead_unavailable", aiomqtt=_AIOMQTT_VERSION)
                await client.subscribe(self.topics["signals"], qos=1)
                await client.subscribe(self.topics["control"], qos=1)
                await client.publish(self.topics["status"], dumps(self._status(online=True)),
                                     qos=1, retain=True)
                self._client = client
                self.stats.connects += 1
                self.connected.set()
                log.info("mqtt.connected", url=self.cfg.url, client_id=self.cfg.identifier,
                         prefix=self.cfg.prefix)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._receive(client, ingress), name="mqtt.receive")
                    tg.create_task(self._publish(client), name="mqtt.publish")
        except* aiomqtt.MqttError as group:
            error = repr(group.exceptions[0])
        self._take_leftovers(ingress)
        return error

    def _take_leftovers(self, ingress: IngressQueue) -> None:
        """Validate what was read before the connection ended: paho acknowledged each
        message as it read it, so the broker will not send it again, but the end of the
        connection (or a failed publish) cancels mqtt.receive wherever it was."""
        taken = 0
        while (message := ingress.take()) is not None:
            self._dispatch(message)
            taken += 1
        if taken:
            log.info("mqtt.ingress_drained", messages=taken)

    # -- ingress -----------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client, ingress: IngressQueue) -> None:
        # The iterator waits for a message *or* a disconnect, and leaves the message
        # queued (see signals._mqtt_ingress); what else is queued by then is taken at once
        # (aiomqtt's iterator costs a task per message), but only while the inbox has
        # room, so the pump gets its turn before the inbox could fill.
        inbox, burst = self._inbox, max(1, self._inbox.maxsize // 2)
        async for _ in client.messages:
            n = 0
            while (n == 0 or (n < 256 and len(inbox) < burst)) and (
                    message := ingress.take()) is not None:
                self._dispatch(message)
                n += 1

    def _dispatch(self, message: aiomqtt.Message) -> None:
        payload = message.payload
        body = payload if isinstance(payload, bytes) else str(payload or "").encode()
        topic = message.topic.value
        if topic == self.topics["signals"]:
            self.on_signal_payload(body)
        elif topic == self.topics["control"]:
            self.on_control_payload(body)

    def on_signal_payload(self, payload: bytes) -> None:
        """Validate one ``<prefix>/signals`` body and hand its new signals to the inbox."""
        self.stats.received += 1
        try:
            parsed = parse_payload(payload, self._limits)
        except PayloadRejected as r:
            self._reject(r.reason, r.detail, payload, source=r.source, signal_id=r.signal_id)
            return
        fresh = tuple(s for s in parsed.signals if not self._is_duplicate(s))
        if not fresh:
            return
        batch = SignalBatch(ts=parsed.ts, source=parsed.source, signals=fresh,
                            received_ns=monotonic_ns())
        if not self._inbox.offer(batch):
            self._reject(QUEUE_FULL, f"inbox full ({self._inbox.maxsize})", payload,
                         source=parsed.source, signal_id=fresh[0].id)
            return
        # Remembered only once accepted: a producer may retry a QUEUE_FULL signal as is.
        for s in fresh:
            self._remember(s)
        self.stats.accepted_batches += 1
        self.stats.accepted_signals += len(fresh)

    def _is_duplicate(self, s: Signal) -> bool:
        if (s.source, s.id) not in self._seen:
            return False
        self.stats.duplicates += 1
        held = self._limiter.allow("signal.duplicate")
        if held is not None:
            log.info("signal.duplicate", signal_id=s.id, source=s.source, symbol=s.symbol,
                     suppressed=held)
        return True

    def _remember(self, s: Signal) -> None:
        seen = self._seen
        seen[(s.source, s.id)] = None
        if len(seen) > self.cfg.dedup_window:
            del seen[next(iter(seen))]  # dicts keep insertion order: this is the oldest

    def _on_ingress_overflow(self, message: aiomqtt.Message) -> None:
        if message.topic.value != self.topics["signals"]:
            log.warning("control.refused", reason="QUEUE_FULL", detail="ingress queue full")
            self.stats.control_refused["QUEUE_FULL"] += 1
            return
        payload = message.payload if isinstance(message.payload, bytes) else b""
        self.stats.received += 1
        self._reject(QUEUE_FULL, f"ingress queue full ({self.cfg.inbound_queue})", payload)

    def _reject(self, reason: str, detail: str, payload: bytes, *, source: str | None = None,
                signal_id: str | None = None) -> None:
        self.stats.rejected[reason] += 1
        held = self._limiter.allow("signal.reject:" + reason)
        if held is not None:
            log.warning("signal.reject", reason=reason, detail=detail, source=source,
                        signal_id=signal_id, size=len(payload), suppressed=held)
        ts = self._clock.now()
        src = f"mqtt:{source}" if source else "mqtt"
        self._bus.publish(SignalRejected(ts=ts, source=src, reason=reason, detail=detail,
                                         signal_id=signal_id))
        self.outbox.put(Outgoing(
            "ingress_rejects", self.topics["rejects"], qos=0,
            body={"ts": ts.isoformat(), "reason": reason, "detail": detail, "source": source,
                  "signal_id": signal_id, "size": len(payload),
                  "excerpt": excerpt(payload)}))

    # -- control -----------------------------------------------------------------------

    def on_control_payload(self, payload: bytes) -> None:
        """Verify one ``<prefix>/control`` body; run its handler in a ``mqtt.control`` task."""
        try:
            cmd = self._verifier.verify(payload)
            handler = self._handler(cmd.cmd)
        except ControlRefused as r:
            self.stats.control_refused[r.reason] += 1
            held = self._limiter.allow("control.refused")
            if held is not None:
                log.warning("control.refused", reason=r.reason, detail=r.detail,
                            size=len(payload), suppressed=held)
            self._control_result({"ok": False, "reason": r.reason, "detail": r.detail})
            return
        self.stats.control_accepted += 1
        cmd.args.setdefault("who", "mqtt")  # the audit trail says where a halt came from
        log.info("control.accepted", cmd=cmd.cmd, args=cmd.args, nonce=cmd.nonce)
        self._spawn(self._run_control(cmd, handler), "mqtt.control")

    def _handler(self, name: str) -> ControlHandler:
        for candidate in (name, name.replace("-", "_"), name.replace("_", "-")):
            handler = self._handlers.get(candidate)
            if handler is not None:
                return handler
        raise ControlRefused("UNKNOWN_COMMAND", f"no handler for {name!r}")

    async def _run_control(self, cmd: ControlCommand, handler: ControlHandler) -> None:
        try:
            result = await handler(cmd.args)
        except Exception as exc:  # the operator gets the failure; the daemon keeps running
            log.error("control.failed", cmd=cmd.cmd, nonce=cmd.nonce, error=repr(exc))
            self._control_result({"ok": False, "cmd": cmd.cmd, "nonce": cmd.nonce,
                                  "error": repr(exc)})
            return
        log.info("control.done", cmd=cmd.cmd, nonce=cmd.nonce)
        self._control_result({"ok": True, "cmd": cmd.cmd, "nonce": cmd.nonce, **result})

    def _control_result(self, body: dict[str, Any]) -> None:
        self.outbox.put(Outgoing("control", self._events_topic("control"), body=body))

    # -- egress ------------------------------------------------------------------------

    def _events_topic(self, kind: str) -> str:
        return f"{self.cfg.prefix}/events/{kind}"

    def _on_event(self, event: Event) -> None:
        """Bus handler for every event: queue the ones that are published. Never awaits."""
        kind = kind_of(event)
        if kind is None:
            return
        if isinstance(event, TradingStateChanged):
            self._state = event.new
            self.outbox.put(Outgoing("status", self.topics["status"], retain=True,
                                     body=self._status(online=True)))
        qos = 0 if kind in LOSSY_KINDS else 1
        self.outbox.put(Outgoing(kind, self._events_topic(kind), body=event, qos=qos))

    async def _publish(self, client: aiomqtt.Client) -> None:
        """Send the outbox in order. Publishes are pipelined (up to ``PUBLISH_WINDOW``
        awaiting their PUBACK or their write), so one slow acknowledgement does not hold
        up the rest; they reach the socket in outbox order all the same."""
        me = asyncio.current_task()
        window = asyncio.Semaphore(PUBLISH_WINDOW)
        async with asyncio.TaskGroup() as inflight:
            while True:
                # Python 3.11's wait_for (inside aiomqtt's publish) can swallow a
                # cancellation that races with a publish completing; without this check
                # the task would wait on the outbox forever and hang the daemon's exit.
                if me is not None and me.cancelling():
                    raise asyncio.CancelledError
                out = await self.outbox.get()
                # QoS 0 too: aiomqtt waits until paho has written it, which can take a
                # loop iteration when the socket is busy.
                await window.acquire()
                inflight.create_task(self._send(client, out, window), name="mqtt.publish_one")

    async def _send(self, client: aiomqtt.Client, out: Outgoing,
                    window: asyncio.Semaphore) -> None:
        try:
            await client.publish(out.topic, self._encode(out), qos=out.qos, retain=out.retain)
        except (aiomqtt.MqttError, asyncio.CancelledError):
            # Resent after the reconnect; a send cancelled because a sibling failed is
            # just as unconfirmed as the one that failed.
            self.outbox.requeue(out)
            raise
        finally:
            window.release()
        self.stats.published += 1

    def _encode(self, out: Outgoing) -> bytes:
        if not isinstance(out.body, Event):
            return dumps(out.body)
        cid = getattr(out.body, "client_order_id", None)
        order = self._orders.get(cid) if self._orders and cid else None
        if order is None:
            return encode_event(out.body)
        return encode_event(out.body, {"order": {
            "symbol": order.symbol, "side": str(order.side), "qty": order.qty,
            "type": str(order.order_type), "signal_id": order.signal_id}})

    def _status(self, *, online: bool) -> dict[str, Any]:
        return {"online": online, "state": self._state if online else "OFFLINE",
                "client_id": self.cfg.identifier, "ts": self._clock.now().isoformat()}

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_secs)
            self.outbox.put(Outgoing(
                "heartbeat", self._events_topic("heartbeat"), qos=0,
                body={"type": "Heartbeat", "ts": self._clock.now().isoformat(),
                      "state": self._state, "connected": self.connected.is_set(),
                      "outbox": len(self.outbox), "dropped": dict(self.outbox.dropped),
                      "throttled": dict(self.outbox.throttled),
                      **self.stats.as_dict()}))


__all__ = ["BridgeStats", "ControlHandler", "MqttBridge"]
