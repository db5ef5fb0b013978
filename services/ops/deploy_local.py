"""`tradeflow deploy local`: run a Compose file's services as local processes, so the file is exercised,
not just written, on a machine without a container engine.

    tradeflow deploy local                                        deploy/compose/compose.yaml
    tradeflow deploy local -f deploy/compose/compose.yaml -f deploy/compose/scaled.yaml --profile scaled

What it does with each service of the merged files (the active ones: no profile, or a profile given):
- `nats*` images run the nats-server binary with the service's command: its ports become free
  local ports, `-a 0.0.0.0` becomes 127.0.0.1, mounted paths become their host paths (a named
  volume is a folder under the home), and other services' `nats:4222`-style addresses follow.
- `redis*` images run redis-server with the command's arguments, on a free local port.
- `postgres*` images run Debian's PostgreSQL as the image would (services/ops/postgres_local.py): on an
  empty volume initdb, POSTGRES_DB and the `/docker-entrypoint-initdb.d` scripts once, then the server
  on a free local port; other services' `postgres:5432` follows.
- tradeflow's image (a service with `build`, or an image named tradeflow) runs `tradeflow <command>`
  with exactly the environment the file gives it, addresses rewritten, on its own HTTP port
  (containers each have 8080; here they would collide) and its volume's folder as data directory.
The files are read, interpolated and merged as the Compose Specification says (services/ops/compose.py),
with the variables of the environment, then of `.env` beside the first file (services/ops/envfile.py);
a password or token left unset is made up for the run, and `announcement()` prints the URLs a person
connects with (NATS's operator and injector, Redis's operator, the dashboard with its token), as
`tradeflow up` does. The servers start first and must become healthy,
then what others wait for with `condition: service_completed_successfully` (`tradeflow init`) runs
to its end and must exit 0, then the services, which must become ready; a service whose restart
policy asks for it is restarted when it exits. Ctrl-C stops everything in reverse order.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from contracts.errors import ConfigError
from services.ops import postgres_local as pg
from services.ops.compose import load, names, read
from services.ops.envfile import read_env_file
from services.ops.supervisor import (
    Proc,
    RestartPolicy,
    Supervisor,
    free_port,
    nats_server_binary,
    redis_server_binary,
    service_env,
    wait_nats_healthy,
    wait_port,
    wait_ready,
)

DEFAULT_FILE = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "compose.yaml"
IMAGE_DEFAULTS = {"TRADEFLOW_HTTP_HOST": "0.0.0.0", "TRADEFLOW_HTTP_PORT": "8080",   # deploy/Dockerfile's ENV
                  "TRADEFLOW_DATA_DIR": "/var/lib/tradeflow"}
_SECRET = re.compile(r"(PASSWORD|TOKEN|SECRET)", re.I)


def _variables(referred: set[str], env_file: Path | None) -> tuple[dict[str, str], list[str]]:
    """The environment over the env file, then made-up values for the unset passwords and tokens `referred` to."""
    variables = dict(os.environ)
    if env_file is not None and env_file.is_file():
        variables = read_env_file(env_file, os.environ) | variables
    made = sorted(name for name in referred if _SECRET.search(name) and not variables.get(name))
    variables |= {name: secrets.token_urlsafe(18) for name in made}
    return variables, made


def _kind(name: str, service: dict) -> str:
    image = str(service.get("image") or "")
    base = image.rsplit("/", 1)[-1].split(":")[0]
    if "build" in service or base == "tradeflow":
        return "tradeflow"
    if base == "nats":
        return "nats"
    if base == "redis":
        return "redis"
    if base == "postgres":
        return "postgres"
    raise ConfigError(f"service {name}: image {image or '(none)'!r} cannot run as a local process "
                      "(tradeflow's image, nats, redis and postgres can)")


def _stop_signal(service: dict, name: str, kind: str) -> int:
    """Compose's `stop_signal` (SIGINT, INT or a number), else the image's (postgres: SIGINT, a fast shutdown)."""
    given = str(service.get("stop_signal") or ("SIGINT" if kind == "postgres" else "SIGTERM"))
    try:
        return int(given) if given.isdigit() else signal.Signals["SIG" + given.upper().removeprefix("SIG")]
    except KeyError:
        raise ConfigError(f"service {name}: stop_signal {given!r} is not a signal") from None


def _depends_on(service: dict) -> dict[str, dict]:
    """depends_on's names with their conditions (canonical: the short form is a mapping already)."""
    return {d: (how or {}) for d, how in (service.get("depends_on") or {}).items()}


def _command(service: dict, name: str) -> list[str]:
    command = service.get("command") or []
    if isinstance(command, str):
        command = shlex.split(command)
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise ConfigError(f"service {name}: command must be a list of strings")
    return [str(c) for c in command]


def _environment(service: dict, name: str, variables: Mapping[str, str]) -> dict[str, str]:
    """The service's environment; a variable given no value takes the deployment's, or is left out."""
    env = service.get("environment") or {}
    if not isinstance(env, dict):
        raise ConfigError(f"service {name}: environment must be a mapping or a list")
    out = {}
    for key, value in env.items():
        if value is None:
            if key in variables:
                out[str(key)] = variables[key]
        else:
            out[str(key)] = str(value).lower() if isinstance(value, bool) else str(value)
    return out


@dataclass
class LocalDeployment:
    """A Compose deployment as local processes under `home`."""

    files: Sequence[Path] = (DEFAULT_FILE,)
    home: Path = Path("var/deploy")
    profiles: Sequence[str] = ()
    env_file: Path | None = None
    ready_timeout: float = 90.0
    supervisor: Supervisor = field(default_factory=Supervisor)
    made_up: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.files = [Path(f).resolve() for f in self.files]
        self.home = Path(self.home).resolve()
        docs = [read(path) for path in self.files]
        env_file = self.env_file or self.files[0].parent / ".env"
        self.variables, self.made_up = _variables(set().union(*map(names, docs)), Path(env_file))
        self.unset: set[str] = set()   # referred to, set nowhere: blank, as Compose warns
        self.model = load(self.files, self.variables, self.unset, docs)
        self.services = {name: svc for name, svc in (self.model.get("services") or {}).items()
                         if not svc.get("profiles") or set(svc["profiles"]) & set(self.profiles)}
        if not self.services:
            raise ConfigError("no service is active in these files and profiles")
        self.kinds = {name: _kind(name, svc) for name, svc in self.services.items()}
        self.ports: dict[tuple[str, int], int] = {}     # (service, container port) -> local port
        self.http_ports: dict[str, int] = {}
        for name, svc in self.services.items():
            for port in self._container_ports(name, svc):
                self.ports[name, port] = free_port()
            if self.kinds[name] == "tradeflow":
                self.http_ports[name] = free_port()

    def _container_ports(self, name: str, svc: dict) -> list[int]:
        args = _command(svc, name)
        ports = set()
        if self.kinds[name] == "nats":
            ports |= {4222, 8222}
            flags = {"-p", "--port", "-m", "--http_port"}
            ports |= {int(args[i + 1]) for i, a in enumerate(args[:-1]) if a in flags and args[i + 1].isdigit()}
            ports |= {int(m) for a in args for m in re.findall(r"0\.0\.0\.0:(\d+)", a)}
        elif self.kinds[name] == "redis":
            ports.add(int(args[args.index("--port") + 1]) if "--port" in args[:-1] else 6379)
        elif self.kinds[name] == "postgres":
            ports.add(int(args[args.index("-p") + 1]) if "-p" in args[:-1] and args[args.index("-p") + 1].isdigit()
                      else pg.PORT)
        return sorted(ports)

    def _mounts(self, name: str, svc: dict) -> list[tuple[str, Path]]:
        """(container path, host path) of each volume, longest container path first."""
        out = []
        base = self.files[0].parent
        for spec in svc.get("volumes") or []:
            if isinstance(spec, dict):   # the long syntax
                source, target = str(spec.get("source") or ""), str(spec.get("target") or "")
            else:
                source, _, rest = str(spec).partition(":")
                target = rest.split(":")[0]
            if not target or not source:
                continue
            host = (base / source).resolve() if source.startswith((".", "/")) else self.home / "volumes" / source
            if not source.startswith((".", "/")):
                host.mkdir(parents=True, exist_ok=True)
            out.append((target, host))
        return sorted(out, key=lambda m: -len(m[0]))

    def _rewrite(self, text: str, own: str) -> str:
        """Addresses of other services (`nats:4222`, `redis:6379`) and this one's 0.0.0.0 as local ones."""
        for (service, port), local in self.ports.items():
            text = re.sub(rf"(?<![\w.-]){re.escape(service)}:{port}\b", f"127.0.0.1:{local}", text)
        for (service, port), local in self.ports.items():
            if service == own:
                text = text.replace(f"0.0.0.0:{port}", f"127.0.0.1:{local}")
        return text

    def _paths(self, text: str, mounts: list[tuple[str, Path]]) -> str:
        for target, host in mounts:
            if text == target or text.startswith(target.rstrip("/") + "/"):
                return str(host) + text[len(target):]
        return text

    def proc(self, name: str) -> Proc:
        """The local process of service `name`."""
        svc, kind = self.services[name], self.kinds[name]
        mounts = self._mounts(name, svc)
        args = [self._paths(self._rewrite(a, name), mounts) for a in _command(svc, name)]
        env = {k: self._paths(self._rewrite(v, name), mounts)
               for k, v in _environment(svc, name, self.variables).items()}
        if kind == "nats":
            out, i = [nats_server_binary()], 0
            while i < len(args):
                a = args[i]
                if a in ("-p", "--port", "-m", "--http_port") and i + 1 < len(args):
                    out += [a, str(self.ports[name, int(args[i + 1])])]
                    i += 2
                    continue
                if a in ("-a", "--addr", "--net") and i + 1 < len(args):
                    out += [a, "127.0.0.1"]
                    i += 2
                    continue
                out.append(a)
                i += 1
            if not any(a in ("-p", "--port") for a in args):
                out += ["-p", str(self.ports[name, 4222])]
            argv, environ = out, os.environ | env
        elif kind == "redis":
            rest = args[1:] if args and args[0] == "redis-server" else args
            port = self._container_ports(name, svc)[0]
            rest = [str(self.ports[name, port]) if i > 0 and rest[i - 1] == "--port" else a for i, a in enumerate(rest)]
            argv = [redis_server_binary(), *rest, "--bind", "127.0.0.1", "--protected-mode", "yes",
                    *([] if "--port" in rest else ["--port", str(self.ports[name, port])])]
            environ = os.environ | env
        elif kind == "postgres":
            pg.ImageSettings.of(env, name)   # its errors now, not once the servers are up
            rest = args[1:] if args and args[0] == "postgres" else args
            argv = pg.server_argv(self.pgdata(name), self.ports[name, self._container_ports(name, svc)[0]], rest)
            environ = os.environ | env
        else:
            image_env = {k: self._paths(v, mounts) for k, v in IMAGE_DEFAULTS.items()}
            # as in a container, none of this shell's settings: only what the file (and the image) give
            host = {k: v for k, v in os.environ.items()
                    if not k.startswith(("TRADEFLOW_", "OTEL_")) and k not in ("NATS_URL", "REDIS_URL")}
            environ = service_env(host, **{**image_env, **env, "TRADEFLOW_HTTP_HOST": "127.0.0.1",
                                           "TRADEFLOW_HTTP_PORT": str(self.http_ports[name])})
            argv = [sys.executable, "-m", "services.cli", *args]
        try:
            restart = RestartPolicy.parse(svc.get("restart", "no"))
        except ConfigError as exc:
            raise ConfigError(f"{self.files[0]}: service {name}: {exc}") from exc
        proc = Proc(name, argv, environ, self.home / "logs" / f"{name}.log", restart=restart,
                    stop_signal=_stop_signal(svc, name, kind), user=pg.run_as() if kind == "postgres" else None)
        proc.http_port = self.http_ports.get(name)
        return proc

    def _service_env(self, name: str) -> dict[str, str]:
        """A server's environment as its process gets it: addresses and mounted paths this machine's."""
        mounts = self._mounts(name, self.services[name])
        return {k: self._paths(self._rewrite(v, name), mounts)
                for k, v in _environment(self.services[name], name, self.variables).items()}

    def _mounted(self, name: str, path: str) -> Path | None:
        """The folder of this machine that is `path` in service `name`'s container (None: not mounted)."""
        mapped = self._paths(path, self._mounts(name, self.services[name]))
        return None if mapped == path else Path(mapped)

    def pgdata(self, name: str) -> Path:
        """Where postgres service `name` keeps its cluster: the folder of the volume at its PGDATA (one of its
        own under the home if none is mounted there) or, under root, the place postgres_local gives it."""
        container = _environment(self.services[name], name, self.variables).get("PGDATA") or pg.PGDATA
        return pg.data_folder(self._mounted(name, container) or self.home / "containers" / name / "data")

    def postgres_url(self, name: str) -> str:
        """The superuser's URL of postgres service `name`, on this machine."""
        settings = pg.ImageSettings.of(self._service_env(name), name)
        return settings.url(self.ports[name, self._container_ports(name, self.services[name])[0]])

    async def _start_postgres(self, name: str) -> Proc:
        """Postgres service `name` started; on an empty volume set up first, as the image does."""
        env = self._service_env(name)
        cluster = pg.Cluster(pg.ImageSettings.of(env, name), self.pgdata(name),
                             self.ports[name, self._container_ports(name, self.services[name])[0]],
                             pg.init_scripts(self._mounted(name, pg.INITDB_FOLDER)), env,
                             self.home / "logs" / f"{name}.log")
        try:
            return await pg.bring_up(cluster, self.supervisor, self.proc(name))
        except ConfigError as exc:
            raise ConfigError(f"service {name}: {exc}") from None

    def nats_url_for(self, user: str) -> str | None:
        """NATS `user`'s URL, every node listed, with the password the servers were given (None: no such user)."""
        urls = []
        for name, svc in self.services.items():
            password = _environment(svc, name, self.variables).get(f"TRADEFLOW_NATS_PASSWORD_{user.upper()}")
            if self.kinds[name] == "nats" and password is not None:   # nats.conf reads it quoted
                password = password[1:-1] if len(password) > 1 and password[0] == password[-1] == '"' else password
                urls.append(f"nats://{user}:{password}@127.0.0.1:{self.ports[name, 4222]}")
        return ",".join(urls) or None

    def redis_url_for(self, user: str) -> str | None:
        """Redis `user`'s URL, with the password its `--user NAME on >PASSWORD` argument gives."""
        for name, svc in self.services.items():
            args = _command(svc, name)
            for i, arg in enumerate(args[:-1]):
                if self.kinds[name] == "redis" and arg == "--user" and args[i + 1] == user:
                    rule = next((a for a in args[i + 2:] if a.startswith((">", "--"))), "")
                    if rule.startswith(">"):
                        port = self.ports[name, self._container_ports(name, svc)[0]]
                        return f"redis://{user}:{rule[1:]}@127.0.0.1:{port}/0"
        return None

    def dashboard_url(self) -> str | None:
        """The dashboard's page with its token (in the fragment: it never reaches a server or a log)."""
        for name, svc in self.services.items():
            env = _environment(svc, name, self.variables) if self.kinds[name] == "tradeflow" else {}
            if "TRADEFLOW_DASHBOARD_TOKEN" in env:
                token = env["TRADEFLOW_DASHBOARD_TOKEN"]
                return f"http://127.0.0.1:{self.http_ports[name]}/" + (f"#token={token}" if token else "")
        return None

    def announcement(self) -> list[str]:
        """What `deploy local` prints once everything is up: the URLs to connect with, as `tradeflow up` does."""
        lines = [f"deployed {', '.join(self.services)} (home {self.home})"]
        if self.made_up:
            lines.append(f"  made up for this run: {', '.join(self.made_up)} (set them to choose)")
        if self.unset:
            lines.append(f"  not set, so blank: {', '.join(sorted(self.unset))}")
        if operator := self.nats_url_for("operator"):
            lines += [f"  NATS   {operator}    (the operator: everything; each service has its own user)",
                      f"         export NATS_URL={operator}   # for tradeflow init/dlq/replay/events and "
                      "nats --server \"$NATS_URL\""]
        if injector := self.nats_url_for("injector"):
            lines.append(f"         {injector}    (the injector: publish test events, read)")
        if redis := self.redis_url_for("operator"):
            lines.append(f"  Redis  {redis}")
        lines += [f"  PostgreSQL  {self.postgres_url(name)}    (the superuser; the services' roles: "
                  "deploy/compose/postgres-init/)" for name in self.services if self.kinds[name] == "postgres"]
        if dashboard := self.dashboard_url():
            lines.append(f"  Dashboard  {dashboard}")
        lines += [f"  {name:<12} http://127.0.0.1:{port}/healthz" for name, port in self.http_ports.items()]
        lines += [f"  {name:<12} {container} -> 127.0.0.1:{local}"
                  for (name, container), local in sorted(self.ports.items())]
        return lines

    def port(self, service: str, container_port: int) -> int:
        return self.ports[service, container_port]

    async def start(self) -> None:
        """The servers, healthy; then every tradeflow service, ready."""
        self.home.mkdir(parents=True, exist_ok=True)
        servers = [n for n in self.services if self.kinds[n] not in ("tradeflow", "postgres")]
        procs = {n: await self.supervisor.start(self.proc(n)) for n in servers}
        for name in self.services:   # its set-up, on a first run, takes a while: beside the others starting
            if self.kinds[name] == "postgres":
                await self._start_postgres(name)
        for name in servers:
            if self.kinds[name] == "nats":
                await wait_port("127.0.0.1", self.ports[name, 4222], 20, procs[name].process)
                await wait_nats_healthy([self.ports[name, 8222]], 60, f"{name} (log: {procs[name].log_path})")
            else:
                await wait_port("127.0.0.1", self.ports[name, self._container_ports(name, self.services[name])[0]], 20,
                                procs[name].process)
        once = self.one_shots()
        for name in once:   # e.g. `tradeflow init`: the services that depend on it start once it succeeded
            proc = await self.supervisor.start(self.proc(name))
            code = await asyncio.wait_for(proc.process.wait(), self.ready_timeout)
            if code != 0:
                raise ConfigError(f"{name} exited with {code} (log: {proc.log_path}); the services were not started")
        services = [await self.supervisor.start(self.proc(n)) for n in self.services
                    if self.kinds[n] == "tradeflow" and n not in once]
        await asyncio.gather(*(wait_ready(p.http_port, self.ready_timeout, p) for p in services))

    def one_shots(self) -> list[str]:
        """The tradeflow services another waits for with `condition: service_completed_successfully`."""
        waited = {dep for svc in self.services.values() for dep, how in _depends_on(svc).items()
                  if how.get("condition") == "service_completed_successfully"}
        return [n for n in self.services if n in waited and self.kinds[n] == "tradeflow"]

    async def stop(self) -> dict[str, int | None]:
        """Stop the services, then the servers."""
        first = [n for n in self.services if self.kinds[n] == "tradeflow" and n in self.supervisor.procs]
        return await self.supervisor.stop_all(order=first)   # the servers after: the services drain into them
