"""Every service as a NATS micro service, so the tools NATS users already have find it:

    nats micro ls                       every tradeflow service (and replica) with its version
    nats micro info strategy            its endpoints and metadata (consumer, HTTP port, ...)
    nats micro stats strategy           requests, errors and time per endpoint, plus what it processed
    nats req tradeflow.strategy.health ''      the same JSON as GET /v1/health
    nats req tradeflow.strategy.ready ''       the readiness checks
    nats req tradeflow.strategy.restart ''     exit (code 75) so its supervisor starts it again
    nats req tradeflow.audit.portfolio ''      an agent's own endpoints (audit: positions, PnL, trades)
    nats req tradeflow.audit.equity ''         (audit: the equity curve in event time)

Endpoints live under `tradeflow.<service>.` in the queue group `q`: with replicas, one answers
each request; `$SRV.INFO.<service>.<id>` reaches one replica in particular.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import orjson
from nats.micro import Request, add_service
from nats.micro.service import EndpointStats, Service

from services.runtime.build import version
from services.runtime.metrics import Metrics

log = logging.getLogger(__name__)


def _total(counter) -> float:
    return sum(s.value for metric in counter.collect() for s in metric.samples if s.name.endswith("_total"))


def processed(metrics: Metrics) -> dict[str, int]:
    """What the service has done since it started: the data of every endpoint in `nats micro stats`."""
    return {"messages_in": int(_total(metrics.messages_in)), "messages_out": int(_total(metrics.messages_out)),
            "messages_failed": int(_total(metrics.messages_failed)), "dead_letters": int(_total(metrics.dead_letters)),
            "duplicates": int(_total(metrics.duplicates))}


async def start_micro(nc, name: str, *, description: str, meta: dict[str, Any], metrics: Metrics,
                      health: Callable[[], Any], ready: Callable[[], dict[str, bool]], restart: Callable[[], None],
                      extra: Mapping[str, Callable[[], Awaitable[Any]]] | None = None) -> Service:
    """Register `name` with the micro protocol: its health, ready and restart endpoints and the agent's own."""

    def stats(_: EndpointStats) -> dict[str, int]:
        return processed(metrics)

    service = await add_service(nc, name=name, version=version(), description=description,
                                metadata={k: str(v) for k, v in meta.items()}, stats_handler=stats)
    group = service.add_group(name=f"tradeflow.{name}")

    async def on_health(request: Request) -> None:
        await request.respond(msgspec.json.encode(health()))

    async def on_ready(request: Request) -> None:
        checks = ready()
        await request.respond(msgspec.json.encode({"ready": all(checks.values()), "checks": checks}))

    await group.add_endpoint(name="health", handler=on_health,
                             metadata={"description": "the service's state, as GET /v1/health"})
    async def on_restart(request: Request) -> None:
        log.warning("restart requested over NATS: draining, then exiting for the supervisor to start it again")
        restart()
        await request.respond(msgspec.json.encode({"restarting": name, "id": service.id}))

    await group.add_endpoint(name="ready", handler=on_ready,
                             metadata={"description": "readiness checks, as GET /readyz"})
    await group.add_endpoint(name="restart", handler=on_restart,
                             metadata={"description": "exit with code 75 for the supervisor to start it again"})
    for endpoint, produce in (extra or {}).items():
        async def on_extra(request: Request, produce=produce) -> None:
            await request.respond(msgspec.json.encode(await produce()))

        await group.add_endpoint(name=endpoint, handler=on_extra)
    return service


async def micro_services(nc, timeout: float = 0.5, verb: str = "INFO", name: str | None = None) -> list[dict]:
    """Every answer to `$SRV.<verb>[.<name>]` within `timeout`: one per running service (and replica)."""
    inbox = nc.new_inbox()
    answers: list[dict] = []
    sub = await nc.subscribe(inbox)
    try:
        await nc.publish(f"$SRV.{verb}" + (f".{name}" if name else ""), b"", reply=inbox)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except TimeoutError:
                break
            try:
                answers.append(orjson.loads(msg.data))
            except orjson.JSONDecodeError:
                continue
    finally:
        await sub.unsubscribe()
    return sorted(answers, key=lambda a: (str(a.get("name")), str(a.get("id"))))


async def ask(nc, subject: str, timeout: float = 2.0) -> Any:
    """A micro endpoint's JSON answer; a micro error reply (Nats-Service-Error) raises RuntimeError."""
    reply = await nc.request(subject, b"", timeout=timeout)
    if reply.headers and reply.headers.get("Nats-Service-Error-Code"):
        raise RuntimeError(f"{subject}: {reply.headers.get('Nats-Service-Error', 'error')}")
    return msgspec.json.decode(reply.data)

