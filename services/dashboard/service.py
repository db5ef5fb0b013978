"""The dashboard: a live web page over a running pipeline, and controls to steer it.

    tradeflow run dashboard        (tradeflow up starts it and prints its URL with a token)

It reads everything over NATS, as the `dashboard` user: the consumers of PIPELINE (pending,
in flight, paused, processed/s), every service through the micro protocol (up, ready, restarts,
event-loop lag, CPU, memory, tasks, cache, market phase: `tradeflow.<service>.health`), audit's
portfolio and its equity curve in event time (`tradeflow.audit.portfolio`, `tradeflow.audit.equity`),
the dead letters, and every pipeline event as it is published (rates, the time each stage takes
from its input to its output, the live tail, the fills). The page gets it as server-sent events:
a state snapshot each TRADEFLOW_DASHBOARD_REFRESH seconds and the tail, filtered by symbol and
subject, at most TRADEFLOW_DASHBOARD_TAIL_RATE events a second. Its assets are served from here:
no CDN, no outside network.

    GET  /                      the page (and /static/app.js, /static/app.css): no data in them
    GET  /v1/state              the latest snapshot, JSON
    GET  /v1/stream?symbol=&subject=   server-sent events: `state`, `tail`
    POST /v1/control            {"action": "pause"|"resume", "target": <consumer>|"all"}
                                {"action": "restart", "target": <service>}
                                {"action": "redrive", "seq": <DLQ sequence>}

With TRADEFLOW_DASHBOARD_TOKEN set, every /v1/ request needs `Authorization: Bearer <token>`
(the page takes the token from its URL's #token=..., which never reaches a server or a log).
A control answers {"ok": true, "message"} or a 4xx/5xx with {"ok": false, "error"}, and is logged.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from collections import Counter, OrderedDict, deque
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Annotated, Any

import msgspec
import orjson
from aiohttp import web
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from contracts import envelope as ce
from contracts.deadletters import DeadLetter
from contracts.subjects import DLQ_STREAM, PIPELINE_STREAM, SYMBOL_RE, subject_matches
from services.registry import AGENTS, SERVICES
from services.runtime.agent import Monitor, ProducerContext
from services.runtime.deadletters import RedriveRefused, redrive
from services.runtime.config import RuntimeSettings
from services.runtime.journey import oldest_waiting, overdue
from services.runtime.metrics import quantile
from services.runtime.micro import ask, micro_services
from services.runtime.publish import Publisher
from services.runtime.settings import Redacted, load

log = logging.getLogger(__name__)

# who publishes each subject's first token (rejections: the second token)
PRODUCER = {"data_ready": "data", "signals_ready": "strategy", "validated_ready": "quant", "approved_ready": "risk",
            "executed_ready": "execution"}
WATCHED = ("data_ready.>", "signals_ready.>", "validated_ready.>", "approved_ready.>", "executed_ready.>",
           "rejected.>", "dlq.>")
PATTERN = re.compile(r"[A-Za-z0-9_*>.-]{1,200}")
MAX_CONTROL_BYTES = 4096
DLQ_SCAN = 2000          # dead letters read for the counts by reason (the newest)
ARRIVALS = 100_000       # event ids remembered to time the hop to their outputs


class DashboardSettings(Redacted, msgspec.Struct, frozen=True, kw_only=True):
    """TRADEFLOW_DASHBOARD_*."""

    SECRET_FIELDS = ("token",)

    token: str = ""
    refresh: Annotated[float, msgspec.Meta(ge=0.2, le=60)] = 1.0
    tail_rate: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 50
    pause_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 365.0   # a pause lasts until resumed, at most


def stage_of(subject: str) -> str:
    """The service that published `subject` (data, strategy, ..., or quant/risk for a rejection)."""
    first, _, rest = subject.partition(".")
    if first == "rejected":
        return rest.partition(".")[0]
    return PRODUCER.get(first, first)


class Client:
    """One page's stream: its filter, what waits to be sent, and what was dropped over the rate."""

    def __init__(self, symbol: str | None, subject: str | None, per_tick: int) -> None:
        self.symbol = symbol
        self.subject = subject
        self.per_tick = per_tick
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=100)
        self.tail: list[dict] = []
        self.dropped = 0

    def wants(self, subject: str) -> bool:
        if self.subject and not subject_matches(self.subject, subject):
            return False
        return not self.symbol or subject.rsplit(".", 1)[-1] == self.symbol

    def offer(self, event: dict) -> None:
        if len(self.tail) < self.per_tick:
            self.tail.append(event)
        else:
            self.dropped += 1

    def push(self, kind: str, payload: Any) -> None:
        try:
            self.queue.put_nowait((kind, payload))
        except asyncio.QueueFull:   # a page that does not read: it misses updates, the dashboard goes on
            self.dropped += 1


class Dashboard(Monitor):
    """Collects the pipeline's state and events, streams them to pages, and carries out controls."""

    name = "dashboard"

    def __init__(self, settings: DashboardSettings, journey_timeout: float = 300.0) -> None:
        self.settings = settings
        self.journey_timeout = journey_timeout   # TRADEFLOW_JOURNEY_TIMEOUT: a stage waiting longer is overdue
        self.clients: set[Client] = set()
        self.state: dict[str, Any] = {"ready": False}
        self.nc: Any = None    # the runtime's connection and JetStream contexts, once watch() starts
        self.jsm: Any = None
        self.js: Any = None
        self._per_tick = max(1, round(settings.tail_rate / 4))
        self._arrivals: OrderedDict[str, float] = OrderedDict()
        self._hops: dict[str, deque[tuple[float, float]]] = {s: deque(maxlen=5000) for s in AGENTS}
        self._events: dict[str, deque[float]] = {s: deque(maxlen=50_000) for s in AGENTS}
        self._acked: dict[str, tuple[float, int]] = {}
        self._ids: dict[str, set[str]] = {}
        self._restarts: Counter = Counter()
        self._equity: list = []    # audit's curve: [[event time, equity], ...]
        self._fills: deque[dict] = deque(maxlen=100)
        self._dlq: dict[str, Any] = {"total": 0, "by": [], "latest": [], "scanned": 0}
        self._dlq_mark: tuple[int, int] | None = None
        self._portfolio: dict | None = None
        self._ticks = 0

    # events as they are published
    def _on_event(self, msg) -> None:
        now = time.monotonic()
        subject = msg.subject
        stage = stage_of(subject)
        headers = msg.headers or {}
        event_id = ce.header(headers, ce.CE_ID) or ce.header(headers, ce.NATS_MSG_ID)
        if stage in self._events and not subject.startswith("dlq."):
            self._events[stage].append(now)
        if event_id and not subject.startswith("dlq."):
            self._arrivals[event_id] = now
            if len(self._arrivals) > ARRIVALS:
                self._arrivals.popitem(last=False)
        cause = ce.header(headers, ce.CE_CAUSATION)
        if cause and stage in self._hops and (start := self._arrivals.get(cause)) is not None:
            self._hops[stage].append((now, now - start))
        body = None
        if subject.startswith("executed_ready.") or any(c.wants(subject) for c in self.clients):
            try:
                body = orjson.loads(msg.data) if len(msg.data) <= 65536 else None
            except orjson.JSONDecodeError:
                body = msg.data[:200].decode(errors="replace")
        event = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "subject": subject,
                 "id": event_id, "body": body}
        if subject.startswith("executed_ready.") and isinstance(body, dict):
            self._fills.appendleft(event)
        for client in self.clients:
            if client.wants(subject):
                client.offer(event)

    async def _on_message(self, msg) -> None:
        self._on_event(msg)

    # the snapshot
    async def _consumers(self) -> list[dict]:
        now = time.monotonic()
        out = []
        for info in await self.jsm.consumers_info(PIPELINE_STREAM):
            acked = info.ack_floor.consumer_seq if info.ack_floor else 0
            last = self._acked.get(info.name)
            rate = (acked - last[1]) / (now - last[0]) if last and now > last[0] else None
            self._acked[info.name] = (now, acked)
            waiting = await oldest_waiting(self.jsm, PIPELINE_STREAM, info)
            out.append({"name": info.name, "service": info.name.split("-p")[0], "pending": info.num_pending or 0,
                        "in_flight": info.num_ack_pending or 0, "redelivered": info.num_redelivered or 0,
                        "paused": bool(info.paused),
                        "oldest_waiting_s": round(waiting.age(), 1) if waiting else 0.0,
                        "overdue": overdue(waiting, self.journey_timeout),
                        "processed_per_s": None if rate is None else round(max(rate, 0), 1)})
        return sorted(out, key=lambda c: (AGENTS.index(c["service"]) if c["service"] in AGENTS else 99, c["name"]))

    async def _health(self, name: str) -> dict | None:
        try:
            return await ask(self.nc, f"tradeflow.{name}.health", 1.0)
        except (NatsError, TimeoutError, RuntimeError, msgspec.DecodeError):
            return None

    async def _services(self) -> list[dict]:
        pings = await micro_services(self.nc, 0.25, "PING")
        ids: dict[str, set[str]] = {}
        for ping in pings:
            ids.setdefault(str(ping.get("name")), set()).add(str(ping.get("id")))
        for name, now_ids in ids.items():   # a new id under a known name: that replica was restarted
            before = self._ids.get(name)
            if before is not None and now_ids - before:
                self._restarts[name] += len(now_ids - before)
        self._ids.update(ids)
        names = sorted(set(self._ids) | set(SERVICES), key=lambda n: (AGENTS.index(n) if n in AGENTS else 90, n))
        up = [n for n in names if n in ids]
        by_name = dict(zip(up, await asyncio.gather(*(self._health(n) for n in up))))
        out = []
        for name in names:
            health = by_name.get(name) or {}
            lag = health.get("event_loop_lag") or {}
            process = health.get("process") or {}
            checks = health.get("checks")
            out.append({"name": name, "up": name in ids, "instances": len(ids.get(name, ())),
                        "ready": all(checks.values()) if checks else None, "restarts": self._restarts[name],
                        "loop_lag_p99_ms": lag.get("p99_ms"), "loop_lag_max_ms": lag.get("max_ms"),
                        "cpu_percent": process.get("cpu_percent"), "rss_mb": process.get("rss_mb"),
                        "uptime_s": health.get("uptime_s"), "tasks": health.get("tasks") or [],
                        "cache": health.get("cache"), "market": health.get("market")})
        return out

    async def _scan_dlq(self) -> None:
        """Dead letters by service and reason (over the newest DLQ_SCAN) and the latest 20;
        read when the DLQ changed."""
        try:
            info = await self.jsm.stream_info(DLQ_STREAM)
        except NotFoundError:
            return
        mark = (info.state.messages, info.state.last_seq)
        if mark == self._dlq_mark:
            return
        letters: list[DeadLetter] = []
        if info.state.messages:
            start = max(info.state.first_seq, info.state.last_seq - DLQ_SCAN + 1)
            sub = await self.js.subscribe("dlq.>", stream=DLQ_STREAM, ordered_consumer=True,
                                          config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                                                opt_start_seq=start))
            try:
                while True:
                    try:
                        m = await sub.next_msg(timeout=0.5)
                    except TimeoutError:
                        break
                    letters.append(DeadLetter.of(m.metadata.sequence.stream, m.subject, m.headers, m.data,
                                                 m.metadata.timestamp))
                    if m.metadata.sequence.stream >= info.state.last_seq:
                        break
            finally:
                await sub.unsubscribe()
        by = Counter((letter.service, letter.reason) for letter in letters)
        self._dlq = {"total": info.state.messages, "scanned": len(letters),
                     "by": [{"service": s, "reason": r, "count": n} for (s, r), n in sorted(by.items())],
                     "latest": [{"seq": x.seq, "time": x.dead_at.isoformat(), "service": x.service,
                                 "subject": x.subject, "reason": x.reason, "error": x.error[:300],
                                 "redrives": x.redrives}
                                for x in reversed(letters[-20:])]}
        self._dlq_mark = mark

    def _stages(self, consumers: list[dict]) -> list[dict]:
        now = time.monotonic()
        out = []
        for stage in AGENTS:
            recent = self._events[stage]
            while recent and recent[0] < now - 10:
                recent.popleft()
            hops = sorted(latency for t, latency in self._hops[stage] if t >= now - 60)
            mine = [c for c in consumers if c["service"] == stage]
            rates = [c["processed_per_s"] for c in mine if c["processed_per_s"] is not None]
            out.append({"name": stage, "published_per_s": round(len(recent) / 10, 1),
                        "processed_per_s": round(sum(rates), 1) if rates else None,
                        "pending": sum(c["pending"] for c in mine) if mine else None,
                        "in_flight": sum(c["in_flight"] for c in mine) if mine else None,
                        "paused": bool(mine) and all(c["paused"] for c in mine),
                        "oldest_waiting_s": max((c["oldest_waiting_s"] for c in mine), default=None),
                        "overdue": any(c["overdue"] for c in mine),
                        "consumers": [c["name"] for c in mine],
                        "latency_p50_ms": None if not hops else round(quantile(hops, 0.5) * 1000, 2),
                        "latency_p99_ms": None if not hops else round(quantile(hops, 0.99) * 1000, 2)})
        return out

    async def collect(self) -> dict:
        """One snapshot of everything the page shows; a part that cannot be read says why."""
        errors: dict[str, str] = {}
        consumers: list[dict] = []
        try:
            consumers = await self._consumers()
        except (NatsError, TimeoutError, NotFoundError) as exc:
            errors["consumers"] = f"{type(exc).__name__}: {exc}"[:200]
        services = await self._services()
        if self._ticks % 5 == 0:
            try:
                await self._scan_dlq()
            except (NatsError, TimeoutError) as exc:
                errors["dlq"] = f"{type(exc).__name__}: {exc}"[:200]
        if self._ticks % 2 == 0 and any(s["name"] == "audit" and s["up"] for s in services):
            try:
                portfolio, curve = await asyncio.gather(ask(self.nc, "tradeflow.audit.portfolio", 3.0),
                                                        ask(self.nc, "tradeflow.audit.equity", 3.0))
                self._portfolio, self._equity = portfolio, list(curve["points"])
            except (NatsError, TimeoutError, RuntimeError, msgspec.DecodeError, KeyError, TypeError) as exc:
                errors["portfolio"] = f"{type(exc).__name__}: {exc}"[:200]
        self._ticks += 1
        market = next((s["market"] for s in services if (s.get("market") or {}).get("phase")),
                      next((s["market"] for s in services if s.get("market")), None))
        portfolio = self._portfolio or {}
        return {
            "ready": True, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "stages": self._stages(consumers), "consumers": consumers, "services": services,
            "market": market, "dead_letters": self._dlq,
            "portfolio": {k: portfolio.get(k) for k in ("cash", "equity", "pnl", "realized_pnl", "unrealized_pnl",
                                                        "return_pct", "max_drawdown_pct", "fills", "trade_count",
                                                        "positions")} if portfolio else None,
            "trades": (portfolio.get("trades") or [])[-50:], "fills": list(self._fills)[:50],
            "equity": self._equity, "errors": errors,
        }

    # the loop the runtime runs
    async def watch(self, ctx: ProducerContext) -> None:
        self.nc, self.js, self.jsm = ctx.nc, ctx.js, ctx.jsm
        subs = [await self.nc.subscribe(subject, cb=self._on_message) for subject in WATCHED]
        tick = 0.25
        every = max(1, round(self.settings.refresh / tick))
        try:
            n = 0
            while not ctx.stopping.is_set():
                if n % every == 0:
                    try:
                        self.state = await self.collect()
                    except (NatsError, TimeoutError) as exc:   # NATS away: say so, keep the last snapshot
                        self.state = {**self.state, "errors": {"nats": f"{type(exc).__name__}: {exc}"[:200]}}
                    for client in self.clients:
                        client.push("state", self.state)
                for client in self.clients:
                    if client.tail or client.dropped:
                        client.push("tail", {"events": client.tail, "dropped": client.dropped})
                        client.tail, client.dropped = [], 0
                n += 1
                try:
                    await asyncio.wait_for(ctx.stopping.wait(), tick)
                except TimeoutError:
                    pass
        finally:
            for client in list(self.clients):
                client.push("close", None)
            for sub in subs:
                await sub.unsubscribe()

    # HTTP
    def _authorized(self, request: web.Request) -> bool:
        if not self.settings.token:
            return True
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.settings.token}".encode())

    def routes(self) -> list[web.RouteDef]:
        assets = resources.files("services.dashboard") / "static"

        def asset(name: str, content_type: str):
            body = (assets / name).read_bytes()

            async def serve(_: web.Request) -> web.Response:
                return web.Response(body=body, content_type=content_type,
                                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                                             "Content-Security-Policy": "default-src 'self'; img-src 'self' data:"})

            return serve

        def refuse(status: int, error: str) -> web.Response:
            return web.json_response({"ok": False, "error": error}, status=status)

        async def state(request: web.Request) -> web.Response:
            if not self._authorized(request):
                return refuse(401, "missing or wrong token (Authorization: Bearer ...)")
            return web.json_response(self.state, dumps=lambda v: orjson.dumps(v).decode())

        async def stream(request: web.Request) -> web.StreamResponse:
            if not self._authorized(request):
                return refuse(401, "missing or wrong token (Authorization: Bearer ...)")
            symbol = request.query.get("symbol", "").strip().upper() or None
            subject = request.query.get("subject", "").strip() or None
            if symbol and not SYMBOL_RE.fullmatch(symbol):
                return refuse(400, f"symbol {symbol[:40]!r}: use A-Z 0-9 . _ -, at most 32")
            if subject and (not PATTERN.fullmatch(subject) or ">" in subject[:-1] or ".." in subject):
                return refuse(400, f"subject {subject[:40]!r} is not a NATS subject pattern")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                                   "X-Accel-Buffering": "no"})
            await response.prepare(request)
            client = Client(symbol, subject, self._per_tick)
            self.clients.add(client)
            try:
                await response.write(_sse("state", self.state))
                while True:
                    kind, payload = await client.queue.get()
                    if kind == "close":
                        break
                    await response.write(_sse(kind, payload))
            except (ConnectionResetError, ConnectionError):
                pass
            finally:
                self.clients.discard(client)
            return response

        async def control(request: web.Request) -> web.Response:
            if not self._authorized(request):
                return refuse(401, "missing or wrong token (Authorization: Bearer ...)")
            if (request.content_length or 0) > MAX_CONTROL_BYTES:
                return refuse(413, f"a control request is at most {MAX_CONTROL_BYTES} bytes")
            raw = bytearray()
            async for chunk in request.content.iter_any():   # a chunked body has no length to check first
                raw += chunk
                if len(raw) > MAX_CONTROL_BYTES:
                    return refuse(413, f"a control request is at most {MAX_CONTROL_BYTES} bytes")
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return refuse(400, "the body is not JSON")
            if not isinstance(body, dict):
                return refuse(400, "the body must be a JSON object with an action")
            try:
                status, message = await self.control(body)
            except (NatsError, TimeoutError) as exc:
                status, message = 502, f"NATS: {type(exc).__name__}: {exc}"[:300]
            log.warning("control", extra={"request": {k: str(v)[:80] for k, v in body.items()}, "status": status,
                                          "result": message, "peer": request.remote})
            if status != 200:
                return refuse(status, message)
            return web.json_response({"ok": True, "message": message})

        return [web.get("/", asset("index.html", "text/html")),
                web.get("/static/app.js", asset("app.js", "text/javascript")),
                web.get("/static/app.css", asset("app.css", "text/css")), web.get("/v1/state", state),
                web.get("/v1/stream", stream), web.post("/v1/control", control)]

    async def control(self, body: dict) -> tuple[int, str]:
        """Carry out one control; (HTTP status, message)."""
        action = body.get("action")
        if self.jsm is None:
            return 503, "not connected to NATS yet"
        if action in ("pause", "resume"):
            target = body.get("target")
            names = [c.name for c in await self.jsm.consumers_info(PIPELINE_STREAM)]
            if target == "all" and (stages := [n for n in names if n.split("-p")[0] in AGENTS]):
                chosen = stages
            elif isinstance(target, str) and target in names:
                chosen = [target]
            elif isinstance(target, str) and (group := [n for n in names if n.split("-p")[0] == target]):
                chosen = group   # a partitioned stage: all its replicas
            else:
                return 404, f"no consumer {str(target)[:60]!r} on {PIPELINE_STREAM} (have: {', '.join(names)})"
            until = datetime.now(timezone.utc) + timedelta(days=self.settings.pause_days)
            for name in chosen:
                if action == "pause":
                    await self.jsm.pause_consumer(PIPELINE_STREAM, name, until.strftime("%Y-%m-%dT%H:%M:%SZ"))
                else:
                    await self.jsm.resume_consumer(PIPELINE_STREAM, name)
            return 200, f"{'paused' if action == 'pause' else 'resumed'} {', '.join(chosen)}"
        if action == "restart":
            target = body.get("target")
            if not isinstance(target, str) or target not in self._ids or not self._ids[target]:
                return 404, f"no running service {str(target)[:60]!r}"
            answer = await ask(self.nc, f"tradeflow.{target}.restart", 2.0)
            return 200, f"restarting {target} ({answer.get('id')})"
        if action == "redrive":
            seq = body.get("seq")
            if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= 2**63:
                return 400, "redrive needs seq, a DLQ sequence number"
            try:
                raw = await self.jsm.get_msg(DLQ_STREAM, seq)
            except NotFoundError:
                return 404, f"no dead letter {seq}"
            letter = DeadLetter.of(raw.seq, raw.subject, raw.headers, raw.data, raw.time)
            try:
                ack, subject = await redrive(Publisher(self.js, timeout=5, window=16), self.jsm, letter)
            except RedriveRefused as exc:
                return 409, str(exc)
            self._dlq_mark = None
            return 200, f"redrove {seq} to {subject} (stream seq {ack.seq}{', already there' if ack.duplicate else ''})"
        return 400, f"unknown action {str(action)[:40]!r}: pause, resume, restart or redrive"


def _sse(kind: str, payload: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def build(environ=None) -> Dashboard:
    """The dashboard from TRADEFLOW_DASHBOARD_* (and the journey deadline, TRADEFLOW_JOURNEY_TIMEOUT)."""
    return Dashboard(load(DashboardSettings, "TRADEFLOW_DASHBOARD_", environ),
                     load(RuntimeSettings, "TRADEFLOW_", environ).journey_timeout)
