"""`tradeflow deploy local`: run a Compose file's services as local processes, so the file is exercised,
not just written, on a machine without a container engine.

    tradeflow deploy local                                        deploy/compose/compose.yaml
    tradeflow deploy local -f deploy/compose/compose.yaml -f deploy/compose/scaled.yaml --profile scaled

What it does with each service of the merged files (the active ones: no profile, or a profile given):
- `nats*` images run the nats-server binary with the service's command: its ports become free
  local ports, `-a 0.0.0.0` becomes 127.0.0.1, mounted paths become their host paths (a named
  volume is a folder under the home), and other services' `nats:4222`-style addresses follow.
- `redis*` images run redis-server with the command's arguments, on a free local port.
- tradeflow's image (a service with `build`, or an image named tradeflow) runs `tradeflow <command>`
  with exactly the environment the file gives it, addresses rewritten, on its own HTTP port
  (containers each have 8080; here they would collide) and its volume's folder as data directory.
Variables are interpolated as Compose does (${VAR}, ${VAR:-default}, ${VAR:?error}, $$), from the
environment, then `.env` beside the first file; a password or token left unset is made up for the
run. `!reset` and `!override` work as in Compose. The servers start first and must become healthy,
then what others wait for with `condition: service_completed_successfully` (`tradeflow init`) runs
to its end and must exit 0, then the services, which must become ready; a service whose restart
policy asks for it is restarted when it exits. Ctrl-C stops everything in reverse order.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contracts.errors import ConfigError
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
_VARIABLE = re.compile(r"\$(?:\$|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|"
                       r"(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")
_SECRET = re.compile(r"(PASSWORD|TOKEN|SECRET)", re.I)


class _Reset:
    """`!reset`: drop what the earlier files said."""


class _Override:
    """`!override`: replace what the earlier files said instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!reset", lambda loader, node: _Reset())
_Loader.add_constructor("!override", lambda loader, node: _Override(
    loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode)
    else loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode)
    else loader.construct_scalar(node)))


def _merge(base: Any, over: Any) -> Any:
    """Compose's merge of a later file into an earlier one: mappings merge, anything else is replaced."""
    if isinstance(over, _Override):
        return _clean(over.value)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, _Reset):
                out.pop(key, None)
            else:
                out[key] = _merge(base.get(key), value) if key in base else _clean(value)
        return out
    return _clean(over)


def _clean(value: Any) -> Any:
    if isinstance(value, _Override):
        return _clean(value.value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not isinstance(v, _Reset)}
    if isinstance(value, list):
        return [_clean(v) for v in value if not isinstance(v, _Reset)]
    return value


def load_files(files: Sequence[Path]) -> dict:
    """The merged model of Compose `files` (later ones override earlier ones), not yet interpolated."""
    model: dict = {}
    for path in files:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            doc = yaml.load(text, Loader=_Loader)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not YAML: {str(exc)[:300]}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("services", {}), dict):
            raise ConfigError(f"{path}: not a Compose file (a mapping with `services`)")
        model = _merge(model, doc)
    return _clean(model)


def interpolate(value: Any, variables: Mapping[str, str], where: str = "") -> Any:
    """Compose's variable interpolation over every string in `value`."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables, where) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        present = name in variables and (variables[name] != "" or op in (None, "-", "?"))
        if op in (":-", "-"):
            return variables[name] if present else interpolate(arg, variables, where)
        if op in (":?", "?") and not present:
            raise ConfigError(f"{where}: ${{{name}}} is required: {arg or 'not set'}")
        return variables.get(name, "")

    return _VARIABLE.sub(one, value)


def _variables(model: dict, env_file: Path | None) -> tuple[dict[str, str], list[str]]:
    """The environment, then the env file, then made-up values for unset passwords and tokens."""
    variables = {}
    if env_file is not None and env_file.is_file():
        for line in env_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                variables[key.strip()] = value.strip().strip('"').strip("'")
    variables.update(os.environ)
    made = []
    for name in sorted(set(m.group("braced") or m.group("bare") or ""
                           for m in _VARIABLE.finditer(yaml.safe_dump(model)))):
        if name and _SECRET.search(name) and not variables.get(name):
            variables[name] = secrets.token_urlsafe(18)
            made.append(name)
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
    raise ConfigError(f"service {name}: image {image or '(none)'!r} cannot run as a local process "
                      "(tradeflow's image, nats and redis can)")


def _depends_on(service: dict) -> dict[str, dict]:
    """depends_on in either of Compose's forms (a list of names, or names with their conditions)."""
    deps = service.get("depends_on") or {}
    return {d: {} for d in deps} if isinstance(deps, list) else {d: (how or {}) for d, how in deps.items()}


def _command(service: dict, name: str) -> list[str]:
    command = service.get("command") or []
    if isinstance(command, str):
        command = command.split()
    if not isinstance(command, list) or not all(isinstance(c, (str, int, float)) for c in command):
        raise ConfigError(f"service {name}: command must be a list of strings")
    return [str(c) for c in command]


def _environment(service: dict, name: str) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, os.environ.get(item, "")) for item in env)
    if not isinstance(env, dict):
        raise ConfigError(f"service {name}: environment must be a mapping or a list")
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


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
        raw = load_files(self.files)
        env_file = self.env_file or self.files[0].parent / ".env"
        self.variables, self.made_up = _variables(raw, Path(env_file))
        self.model = interpolate(raw, self.variables)
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
        return sorted(ports)

    def _mounts(self, name: str, svc: dict) -> list[tuple[str, Path]]:
        """(container path, host path) of each volume, longest container path first."""
        out = []
        base = self.files[0].parent
        for spec in svc.get("volumes") or []:
            source, _, rest = str(spec).partition(":")
            target = rest.split(":")[0]
            if not target:
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
        env = {k: self._paths(self._rewrite(v, name), mounts) for k, v in _environment(svc, name).items()}
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
        proc = Proc(name, argv, environ, self.home / "logs" / f"{name}.log", restart=restart)
        proc.http_port = self.http_ports.get(name)
        return proc

    def port(self, service: str, container_port: int) -> int:
        return self.ports[service, container_port]

    async def start(self) -> None:
        """The servers, healthy; then every tradeflow service, ready."""
        self.home.mkdir(parents=True, exist_ok=True)
        servers = [n for n in self.services if self.kinds[n] != "tradeflow"]
        procs = {n: await self.supervisor.start(self.proc(n)) for n in servers}
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
