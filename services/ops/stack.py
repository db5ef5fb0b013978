"""A whole tradeflow deployment on one machine: nats-server, redis-server, the six services.

`tradeflow up` and `tradeflow demo` run one; the integration tests run one per test.
NATS_URL / REDIS_URL (given in `nats_url` / `redis_url`) use existing servers instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import orjson

from contracts.errors import ConfigError
from replay.store import Location
from services.ops.provision import init
from services.ops.supervisor import (
    ROOT,
    Proc,
    Supervisor,
    free_port,
    http_json,
    nats_server_binary,
    port_open,
    redis_server_binary,
    service_env,
    wait_nats_healthy,
    wait_port,
    wait_ready,
)
from services.registry import DURABLES, SERVICES
from services.runtime.config import RuntimeSettings
from services.runtime.connect import TlsSettings
from services.runtime.partition import Partition
from services.runtime.permissions import OPERATOR, REDIS_USERS, redis_acl, with_authorization
from services.runtime.permissions import USERS as NATS_USERS
from services.runtime.settings import load
from services.runtime.store import store_location

SETTINGS_FILE = "settings.env"
TRADING_PREFIXES = tuple(f"TRADEFLOW_{agent}_" for agent in ("STRATEGY", "QUANT", "RISK", "EXECUTION", "AUDIT"))


def _preferred(port: int) -> int:
    """`port` if it is given and free, else any free port."""
    return port if port and not port_open("127.0.0.1", port) else free_port()


class Host(Protocol):
    """Another machine a process of the stack runs on: its address, and the command prefix that runs a
    program there (`ip netns exec NAME` for a network namespace, `ssh HOST` elsewhere)."""

    @property
    def address(self) -> str: ...
    @property
    def prefix(self) -> list[str]: ...


class _ThisHost:
    address = "127.0.0.1"
    prefix: list[str] = []


THIS_HOST: Host = _ThisHost()


@dataclass
class Stack:
    """Servers and services under one home directory."""

    home: Path
    nats_url: str | None = None
    redis_url: str | None = None
    services: tuple[str, ...] = SERVICES
    env: dict[str, str] = field(default_factory=dict)
    per_service_env: dict[str, dict[str, str]] = field(default_factory=dict)
    replicas: dict[str, int] = field(default_factory=dict)   # e.g. {"strategy": 2}: partitioned by symbol
    symbols: tuple[str, ...] = ()   # what partitioned replicas share out (TRADEFLOW_SYMBOLS)
    # ca.pem, server.pem, server-key.pem: NATS and Redis with TLS, services trusting ca.pem
    tls_dir: Path | None = None
    nats_port: int = 0            # 0: any free port; `tradeflow up` asks for 4222 (taken if free)
    redis_port: int = 0
    ready_timeout: float = 60.0
    # >1: that many nats-server nodes clustered on loopback (streams: set TRADEFLOW_STREAM_REPLICAS)
    nats_cluster: int = 1
    redis_appendfsync: str = "always"   # redis-server's AOF fsync policy (README: what a kill -9 costs)
    # where processes run, by name ("nats-1", "recorder", ...): on this host (loopback) unless placed
    hosts: dict[str, Host] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.home = Path(self.home).resolve()
        self.supervisor = Supervisor()
        self.ports: dict[str, int] = {}
        self.nats_address: str | None = None   # host:port of the nats-server this stack runs, if it runs one
        self.nats_addresses: list[str] = []    # every node's, when it runs a cluster
        self.nats_passwords = {user: secrets.token_urlsafe(18) for user in NATS_USERS}
        self.redis_address: str | None = None  # host:port of the redis-server this stack runs, if it runs one
        self.redis_passwords = {user: secrets.token_urlsafe(18) for user in REDIS_USERS}
        self._declared_with: tuple | None = None   # the settings the durables were last declared with
        self.dashboard_token = self.per_service_env.get("dashboard", {}).get("TRADEFLOW_DASHBOARD_TOKEN") \
            or secrets.token_urlsafe(18)

    def dashboard_url(self) -> str:
        """The dashboard's page with its token (in the fragment: it never reaches a server or a log)."""
        return f"http://127.0.0.1:{self.http_port('dashboard')}/#token={self.dashboard_token}"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    async def start_nats_cluster(self) -> None:
        """`nats_cluster` nats-server nodes (nats-1, nats-2, ...) with nats.conf, JetStream on each, routes on
        loopback (or between the hosts `hosts` places them on); ready once every node says JetStream is
        healthy. URLs list every node: clients fail over."""
        ports = [free_port() for _ in range(self.nats_cluster)]
        monitors = [free_port() for _ in range(self.nats_cluster)]
        routes = [free_port() for _ in range(self.nats_cluster)]
        nodes = [self.host_of(f"nats-{i}") for i in range(1, self.nats_cluster + 1)]
        env = self._nats_env()
        local = self._nats_conf() if THIS_HOST in nodes else None   # one file for every node on this host
        for i, (node, port, monitor, route) in enumerate(zip(nodes, ports, monitors, routes), start=1):
            store = self.home / f"nats-{i}"
            store.mkdir(parents=True, exist_ok=True)
            conf = local if node is THIS_HOST and local is not None else self._nats_conf(node, port, monitor)
            argv = [*node.prefix, nats_server_binary(), "-c", str(conf), "-a", node.address, "-p", str(port),
                    "-m", str(monitor), "-js", "-sd", str(store), "-n", f"tradeflow-{i}", "--cluster_name",
                    "tradeflow", "--cluster", f"nats://{node.address}:{route}",
                    "--routes", ",".join(f"nats://{n.address}:{r}" for n, r in zip(nodes, routes) if r != route)]
            proc = await self.supervisor.start(Proc(f"nats-{i}", argv, env, self.logs / f"nats-{i}.log"))
            await wait_port(node.address, port, 20, proc.process)
            self.ports[f"nats-{i}"], self.ports[f"nats-{i}-monitor"] = port, monitor
        await wait_nats_healthy(monitors, 60, f"the NATS cluster (logs in {self.logs})", [n.address for n in nodes])
        self.ports["nats-monitor"] = monitors[0]
        self.nats_addresses = [f"{n.address}:{p}" for n, p in zip(nodes, ports)]
        self.nats_address = self.nats_addresses[0]
        self.nats_url = self.nats_url_for(OPERATOR)

    async def start_nats(self) -> None:
        """nats-server with nats.conf: one user per service (new passwords each run),
        `operator` and `injector` for people."""
        if self.nats_cluster > 1:
            await self.start_nats_cluster()
            return
        port, monitor = _preferred(self.nats_port), _preferred(self.nats_port and 8222)
        store = self.home / "nats"
        store.mkdir(parents=True, exist_ok=True)
        argv = [nats_server_binary(), "-c", str(self._nats_conf()), "-a", "127.0.0.1", "-p", str(port),
                "-m", str(monitor), "-js", "-sd", str(store), "-n", f"tradeflow-{port}"]
        proc = await self.supervisor.start(Proc("nats-server", argv, self._nats_env(), self.logs / "nats.log"))
        await wait_port("127.0.0.1", port, 20, proc.process)
        self.ports["nats-monitor"] = monitor
        self.nats_address = f"127.0.0.1:{port}"
        self.nats_url = self.nats_url_for(OPERATOR)

    def _nats_env(self) -> dict[str, str]:
        """nats-server's environment: the users' passwords for nats.conf, which reads a variable as a value
        (quoted, a password is always a string)."""
        return os.environ | {f"TRADEFLOW_NATS_PASSWORD_{user.upper()}": f'"{pw}"'
                             for user, pw in self.nats_passwords.items()}

    def _nats_conf(self, node: Host = THIS_HOST, port: int = 0, monitor: int = 0) -> Path:
        """<home>/nats.conf: the repository's, with the permissions of this stack's durables (its replicas')
        and, with `tls_dir`, TLS required with the certificate there. A node on another host gets its own
        (nats-ADDRESS.conf), listening and monitored on that host's address."""
        text = with_authorization((ROOT / "nats.conf").read_text(), self.durables_by_service())
        if node is not THIS_HOST:
            text = "\n".join(f'listen: "{node.address}:{port}"' if line.startswith("listen:") else
                             f'http: "{node.address}:{monitor}"' if line.startswith("http:") else line
                             for line in text.splitlines()) + "\n"
        if self.tls_dir is not None:
            tls = Path(self.tls_dir).resolve()
            for name in ("ca.pem", "server.pem", "server-key.pem"):
                if not (tls / name).is_file():
                    raise ConfigError(f"TLS folder {tls} has no {name} (it needs ca.pem, server.pem, server-key.pem)")
            text += (f'\ntls {{\n  cert_file: "{tls / "server.pem"}"\n'
                     f'  key_file: "{tls / "server-key.pem"}"\n  ca_file: "{tls / "ca.pem"}"\n}}\n')
            self.env.setdefault("TRADEFLOW_NATS_CA", str(tls / "ca.pem"))
        conf = self.home / ("nats.conf" if node is THIS_HOST else f"nats-{node.address}.conf")
        conf.write_text(text)
        return conf

    def durables_by_service(self) -> dict[str, list[str]]:
        """The PIPELINE durables of each service this stack runs as replicas."""
        out: dict[str, list[str]] = {}
        for name, replica in self.processes():
            if replica is not None:
                out.setdefault(name, []).append(self._label(name, replica))
        return out

    def nats_url_for(self, user: str) -> str:
        """The URL a NATS user of this deployment connects with (its own server only)."""
        return ",".join(f"nats://{user}:{self.nats_passwords[user]}@{address}"
                        for address in self.nats_addresses or [self.nats_address])

    async def start_redis(self) -> None:
        """redis-server with ACL users: each service may touch only its own dedup keys and the shared
        cache; `operator` (people, tests) everything; the passwordless default user is off. The
        configuration holds the passwords: a file only this user can read."""
        port = _preferred(self.redis_port)
        store = self.home / "redis"
        store.mkdir(parents=True, exist_ok=True)
        conf = self.home / "redis.conf"   # beside its data, which may be wiped
        conf.touch(mode=0o600)
        users = [f"user {redis_acl(name, pw)}" for name, pw in self.redis_passwords.items()]
        if self.tls_dir is not None:   # TLS only: the plain port off, clients trusting the CA (no client certificates)
            tls = Path(self.tls_dir).resolve()
            listen = ["port 0", f"tls-port {port}", f"tls-cert-file {tls / 'server.pem'}",
                      f"tls-key-file {tls / 'server-key.pem'}", f"tls-ca-cert-file {tls / 'ca.pem'}",
                      "tls-auth-clients no"]
            self.env.setdefault("TRADEFLOW_REDIS_CA", str(tls / "ca.pem"))
        else:
            listen = [f"port {port}"]
        conf.write_text("\n".join([
            *listen, "bind 127.0.0.1", 'save ""', "appendonly yes", f"appendfsync {self.redis_appendfsync}",
            f"dir {store}", "daemonize no",
            "protected-mode yes", "user default off", *users]) + "\n")
        proc = await self.supervisor.start(Proc("redis-server", [redis_server_binary(), str(conf)], dict(os.environ),
                                                self.logs / "redis.log"))
        await wait_port("127.0.0.1", port, 20, proc.process)
        self.redis_address = f"127.0.0.1:{port}"
        self.redis_url = self.redis_url_for(OPERATOR)

    def redis_url_for(self, user: str) -> str:
        """The URL a Redis user of this deployment connects with (its own server only)."""
        scheme = "rediss" if self.tls_dir is not None else "redis"
        return f"{scheme}://{user}:{self.redis_passwords[user]}@{self.redis_address}/0"

    def write_trading_settings(self) -> Path:
        """Write the agents' trading settings to <home>/settings.env, so `tradeflow whatif` re-runs with them."""
        env = {**{k: v for k, v in os.environ.items() if k.startswith(TRADING_PREFIXES)}, **self.env}
        path = self.home / SETTINGS_FILE
        path.write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items()) if k.startswith(TRADING_PREFIXES)))
        return path

    def service_proc(self, name: str, replica: str | None = None) -> Proc:
        """The process of service `name`, or of one of its partitioned replicas (`replica`: i/n)."""
        label = self._label(name, replica)
        port = self.ports.get(label) or free_port()
        self.ports[label] = port
        nats_url = self.nats_url_for(name) if self.nats_address and name in self.nats_passwords else self.nats_url
        redis_url = self.redis_url_for(name) if self.redis_address and name in self.redis_passwords else self.redis_url
        partition = {} if replica is None else {"TRADEFLOW_PARTITION": replica,
                                                "TRADEFLOW_SYMBOLS": ",".join(self.symbols)}
        env = service_env(os.environ, **{"NATS_URL": nats_url or "", "REDIS_URL": redis_url or "",
                                         "TRADEFLOW_HTTP_PORT": str(port), "TRADEFLOW_DATA_DIR": str(self.home),
                                         **self.env, **self.per_service_env.get(name, {}), **partition,
                                         **({"TRADEFLOW_DASHBOARD_TOKEN": self.dashboard_token}
                                            if name == "dashboard" else {})})
        host = self.host_of(label)
        if host is not THIS_HOST:
            env["TRADEFLOW_HTTP_HOST"] = host.address
        argv = [*host.prefix, sys.executable, "-m", "services.cli", "run", name]
        proc = Proc(label, argv, env, self.logs / f"{label}.log")
        proc.http_port, proc.http_host = port, host.address
        return proc

    def host_of(self, name: str) -> Host:
        """The host process `name` runs on (this one unless `hosts` places it)."""
        return self.hosts.get(name, THIS_HOST)

    def processes(self) -> list[tuple[str, str | None]]:
        """(service, replica) for every service process this stack runs, in start order."""
        return [(name, None) if self.replicas.get(name, 1) == 1 else (name, f"{i}/{self.replicas[name]}")
                for name in self.services for i in range(self.replicas.get(name, 1))]

    def _label(self, name: str, replica: str | None) -> str:
        """The supervisor's name for a service process: the service, or its replica's durable."""
        return name if replica is None else Partition.parse(replica, self.symbols).durable(name)

    def labels(self) -> list[str]:
        """The supervisor's names for this stack's service processes."""
        return [self._label(name, replica) for name, replica in self.processes()]

    @property
    def durables(self) -> list[str]:
        """Every durable consumer on PIPELINE this stack's services use (one per partitioned replica)."""
        return [self._label(name, replica) for name, replica in self.processes() if name in DURABLES]

    def runtime_settings(self, service: str | None = None) -> RuntimeSettings:
        """The runtime settings this stack's services run with (`service`: that one's, with its own
        environment): what `tradeflow init` declares their durables by."""
        env = {**os.environ, **self.env, **self.per_service_env.get(service or "", {}), "NATS_URL": self.nats_url or "",
               **({"TRADEFLOW_SYMBOLS": ",".join(self.symbols)} if self.symbols else {})}
        return load(RuntimeSettings, "TRADEFLOW_", env)

    async def provision(self) -> list[str]:
        """What `tradeflow init` does, with the operator's user: the streams and every durable of this stack,
        each with its service's settings."""
        tls = load(TlsSettings, "TRADEFLOW_", service_env(os.environ, **self.env)).context(self.nats_url or "")
        done = await init(self.runtime_settings(), {n: c for n, c in self.replicas.items() if c > 1}, tls,
                          settings_for=self.runtime_settings)
        self._declared_with = self._settings_now()
        return done

    def _settings_now(self) -> tuple:
        return (repr(self.env), repr(self.per_service_env), repr(self.replicas))

    async def start_service(self, name: str, wait: bool = True) -> Proc:
        """Start (or start again) one service, its durables declared first as its settings say now."""
        if self.nats_url and self._declared_with != self._settings_now():   # settings changed since: declare again
            await self.provision()
        proc = await self.supervisor.start(self.service_proc(name))
        if wait:
            await wait_ready(proc.http_port, self.ready_timeout, proc)
        return proc

    async def start(self) -> None:
        """Start servers (unless given), then every service, and wait until all are ready."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.write_trading_settings()
        try:
            if not self.nats_url:
                await self.start_nats()
            if not self.redis_url:
                await self.start_redis()
            await self.provision()
            procs = [await self.supervisor.start(self.service_proc(name, replica))
                     for name, replica in self.processes()]
            await asyncio.gather(*(wait_ready(p.http_port, self.ready_timeout, p) for p in procs))
        except BaseException:   # what started is stopped: a failed start leaves nothing running
            await self.supervisor.stop_all(order=[label for label in self.labels() if label in self.supervisor.procs])
            raise
        self.write_scrape_targets()

    def write_scrape_targets(self) -> Path:
        """<home>/prometheus-targets.json: every service's metrics endpoint, for Prometheus' file_sd_configs
        (deploy/prometheus/prometheus.yml); rewritten at each start, as the ports change."""
        targets = [{"targets": [f"127.0.0.1:{self.ports[label]}"], "labels": {"process": label}}
                   for label in self.labels() if label in self.ports]
        path = self.home / "prometheus-targets.json"
        partial = path.with_suffix(".partial")
        partial.write_bytes(orjson.dumps(targets, option=orjson.OPT_INDENT_2))
        os.replace(partial, path)
        return path

    async def restart_service(self, name: str, sig: int = signal.SIGTERM, wait: bool = True) -> int | None:
        """Stop one service with `sig`, start it again; the exit code it stopped with."""
        code = await self.supervisor.stop(name, sig)
        await self.start_service(name, wait=wait)
        return code

    async def stop(self) -> dict[str, int | None]:
        """Stop every service (each drains and exits), then the servers they were using."""
        services = [label for label in self.labels() if label in self.supervisor.procs]
        codes = await self.supervisor.stop_all(order=services)
        return codes

    async def get(self, name: str, path: str, timeout: float = 2.0) -> tuple[int, dict]:
        """GET a JSON endpoint of service `name`, on whichever host it runs; (status, body)."""
        return await http_json(self.http_port(name), path, timeout, host=self.host_of(name).address)

    def store_location(self) -> Location:
        """The event store this stack's recorder writes: TRADEFLOW_STORE as the recorder sees it, else
        <home>/recorder/events.sqlite."""
        return store_location({**os.environ, **self.env, **self.per_service_env.get("recorder", {}),
                               "TRADEFLOW_DATA_DIR": str(self.home)})

    def http_port(self, name: str) -> int:
        port = self.ports.get(name)
        if port is None:
            raise ConfigError(f"no such service in this stack: {name}")
        return port
