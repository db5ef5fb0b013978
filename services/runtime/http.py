"""Per-service HTTP: /healthz (alive), /readyz (can work), /metrics (Prometheus)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.runtime.metrics import Metrics

ReadyCheck = Callable[[], dict[str, bool]]


async def start_http(host: str, port: int, *, service: str, metrics: Metrics, ready: ReadyCheck,
                     routes: list[web.RouteDef] | None = None) -> tuple[web.AppRunner, int]:
    """Serve the endpoints; returns the runner (to clean up) and the bound port."""

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"service": service, "status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        checks = ready()
        ok = all(checks.values())
        metrics.ready.labels(service).set(1 if ok else 0)
        return web.json_response({"service": service, "ready": ok, "checks": checks}, status=200 if ok else 503)

    async def metrics_view(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(client_max_size=64 * 1024)
    app.add_routes([web.get("/healthz", healthz), web.get("/readyz", readyz), web.get("/metrics", metrics_view)])
    if routes:
        app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]   # port 0 means "pick one"
    return runner, bound
