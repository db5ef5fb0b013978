"""The Compose application model of one or more files, built as the Compose Specification says:
each file read (YAML, `!reset` and `!override`), interpolated on its own ("Interpolation": values,
never keys), put in its canonical form, then merged into the ones before it ("Merge and override").

Canonical form: `environment`, `labels`, `annotations`, `sysctls`, `extra_hosts`, `build.args`,
`build.labels` and `deploy.labels` as mappings; `depends_on` as names with their condition; `command`
and `entrypoint` as lists (a string split as shell words); `healthcheck.test` a list; `build` a mapping.

Merge: mappings merge key by key; `command`, `entrypoint` and `healthcheck.test` are replaced; `ports`
(by host ip, published, target, protocol), `volumes`, `secrets`, `configs` (by target) and `profiles`,
`dns`, `cap_add`, ... (by value) keep one entry per key, the later one in the earlier one's place;
other sequences are appended; `logging` with another driver is replaced.

A file over 1 MiB, not UTF-8 text, or whose aliases expand to more than 100,000 YAML nodes (an alias
bomb) is refused before anything walks it: a ConfigError naming the file, as every bad input here.
"""

from __future__ import annotations

import shlex
from functools import partial
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from contracts.errors import ConfigError
from services.ops.interpolation import references, substitute

MAX_BYTES = 1 << 20
MAX_NODES = 100_000
_MAPPINGS = ("environment", "labels", "annotations", "sysctls", "extra_hosts")
_REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}


class Reset:
    """`!reset`: drop what the earlier files said."""


class Override:
    """`!override`: replace what the earlier files said instead of merging."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!reset", lambda loader, node: Reset())
_Loader.add_constructor("!override", lambda loader, node: Override(
    loader.construct_mapping(node, deep=True) if isinstance(node, yaml.MappingNode)
    else loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode)
    else loader.construct_scalar(node)))


def read(path: Path) -> dict:
    """One Compose file's YAML, checked to be a mapping of services, not yet interpolated."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES} bytes: not a Compose file")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    if "\0" in text:
        raise ConfigError(f"{path}: binary, not YAML text")
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded(node, {}) > MAX_NODES:
            raise ConfigError(f"{path}: its aliases expand to more than {MAX_NODES} YAML nodes: refused")
        doc = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML: {str(exc)[:300]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    finally:
        loader.dispose()
    if not isinstance(doc, dict) or not isinstance(doc.get("services") or {}, dict):
        raise ConfigError(f"{path}: not a Compose file (a mapping with `services`)")
    for key in ("include", "extends"):
        if key in doc or any(isinstance(s, dict) and key in s for s in (doc.get("services") or {}).values()):
            raise ConfigError(f"{path}: `{key}` is not supported here")
    for name, service in (doc.get("services") or {}).items():
        if not isinstance(service, (dict, Override, Reset)):
            raise ConfigError(f"{path}: service {name} is not a mapping")
    return doc


def _expanded(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes `node` is with every alias expanded (each node counted once: linear time)."""
    if id(node) in sizes:   # -1: an alias to a node that contains it, which expands for ever
        return sizes[id(node)] if sizes[id(node)] >= 0 else MAX_NODES + 1
    sizes[id(node)] = -1
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded(k, sizes) + _expanded(v, sizes) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded(v, sizes) for v in node.value)
    else:
        size = 1
    sizes[id(node)] = size
    return size


def names(doc: Any) -> set[str]:
    """Every variable the values of `doc` refer to."""
    if isinstance(doc, Override):
        return names(doc.value)
    if isinstance(doc, dict):
        return set().union(*map(names, doc.values()))
    if isinstance(doc, list):
        return set().union(*map(names, doc))
    return references(doc) if isinstance(doc, str) else set()


def interpolate(value: Any, variables: Mapping[str, str], where: str = "", missing: set[str] | None = None) -> Any:
    """Compose's interpolation over every string value in `value` (keys are left as they are)."""
    if isinstance(value, Override):
        return Override(interpolate(value.value, variables, where, missing))
    if isinstance(value, dict):
        return {k: interpolate(v, variables, f"{where}.{k}" if where else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables, where, missing) for v in value]
    return substitute(value, variables, where, missing) if isinstance(value, str) else value


def load(files: Sequence[Path], variables: Mapping[str, str] | None = None, missing: set[str] | None = None,
         docs: Sequence[dict] | None = None) -> dict:
    """The merged model of `files` (later ones override earlier ones), each interpolated with `variables`
    first (None: not interpolated); `docs` are the files already read."""
    model: dict = {}
    for path, doc in zip(files, docs if docs is not None else map(read, files)):
        if variables is not None:
            doc = interpolate(doc, variables, str(path), missing)
        try:
            model = merge(model, canonical(doc))
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return _clean(model)


def canonical(doc: dict) -> dict:
    """`doc` with its services' attributes in one form each (see the module's docstring)."""
    services = doc.get("services") or {}
    return {**doc, "services": {n: _unwrap(s, _service) for n, s in services.items()}} if services else doc


def _unwrap(value: Any, fix: Callable[[Any], Any]) -> Any:
    return Override(fix(value.value)) if isinstance(value, Override) else value if isinstance(value, Reset) \
        else fix(value)


def _service(service: dict) -> dict:
    out = dict(service)
    for key in _MAPPINGS:
        if key in out:
            out[key] = _unwrap(out[key], partial(_mapping, separator=":" if key == "extra_hosts" else None))
    for key in ("command", "entrypoint"):
        if isinstance(out.get(key), str):
            try:
                out[key] = shlex.split(out[key])
            except ValueError as exc:   # an unclosed quote
                raise ConfigError(f"{key} {out[key][:80]!r}: {exc}") from None
    if "depends_on" in out:
        out["depends_on"] = _unwrap(out["depends_on"], _depends_on)
    if isinstance(out.get("build"), str):
        out["build"] = {"context": out["build"]}
    if isinstance(out.get("build"), dict):
        out["build"] = {**out["build"], **{k: _mapping(out["build"][k]) for k in ("args", "labels")
                                           if isinstance(out["build"].get(k), list)}}
    if isinstance(out.get("deploy"), dict) and isinstance(out["deploy"].get("labels"), list):
        out["deploy"] = {**out["deploy"], "labels": _mapping(out["deploy"]["labels"])}
    if isinstance(out.get("healthcheck"), dict) and isinstance(out["healthcheck"].get("test"), str):
        out["healthcheck"] = {**out["healthcheck"], "test": ["CMD-SHELL", out["healthcheck"]["test"]]}
    return out


def _mapping(value: Any, separator: str | None = None) -> Any:
    """A list of `KEY=VALUE` (or `KEY`: no value) as a mapping; a mapping as it is."""
    if not isinstance(value, list):
        return value
    out: dict = {}
    for item in value:
        text = str(item)
        sep = "=" if "=" in text or separator is None else separator
        key, found, rest = text.partition(sep)
        out[key] = rest if found else None
    return out


def _depends_on(value: Any) -> Any:
    """The short form (a list of names) as the long one; the long one as it is (compose-go's mergeDependsOn)."""
    if isinstance(value, list):
        return {name: {"condition": "service_started", "required": True} for name in value}
    return value


def _port_key(entry: Any) -> tuple[str, str, str, str]:
    """(host ip, published, target, protocol) of a port in either syntax."""
    if isinstance(entry, dict):
        return (str(entry.get("host_ip") or ""), str(entry.get("published") or ""), str(entry.get("target")),
                str(entry.get("protocol") or "tcp"))
    text, _, protocol = str(entry).partition("/")
    host = ""
    if text.startswith("["):   # [::1]:8080:80
        host, _, text = text[1:].partition("]")
        text = text.removeprefix(":")
    parts = text.split(":")
    if len(parts) == 3:
        host, *parts = parts
    published, target = parts if len(parts) == 2 else ("", parts[0])
    return host, published, target, protocol or "tcp"


def _volume_target(entry: Any) -> str:
    """A volume's container path (short syntax: `[source:]target[:mode]`)."""
    if isinstance(entry, dict):
        return str(entry.get("target"))
    parts = str(entry).split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _file_target(directory: str) -> Callable[[Any], str]:
    """A secret's or config's path in the container (short syntax: its name, under `directory`)."""
    def key(entry: Any) -> str:
        if isinstance(entry, dict):
            return str(entry.get("target") or f"{directory}/{entry.get('source')}")
        return f"{directory}/{entry}"
    return key


_UNIQUE: dict[str, Callable[[Any], Any]] = {
    "ports": _port_key, "volumes": _volume_target, "secrets": _file_target("/run/secrets"), "configs": _file_target(""),
    **{k: str for k in ("profiles", "dns", "dns_opt", "dns_search", "cap_add", "cap_drop", "expose", "tmpfs",
                        "links", "env_file", "devices", "security_opt", "group_add")},
}


def merge(base: Any, over: Any, path: tuple[str, ...] = ()) -> Any:
    """`over` (a later file) merged into `base` (the files before it), at `path` in the model."""
    if isinstance(over, Override):
        return _clean(over.value)
    service = path[2:] if len(path) > 2 and path[0] == "services" else None
    if service in _REPLACED or (service == ("logging",) and isinstance(base, dict) and isinstance(over, dict)
                                and over.get("driver", base.get("driver")) != base.get("driver")):
        return _clean(over)
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = merge(base[key], value, (*path, str(key))) if key in base else _clean(value)
        return out
    if isinstance(base, list) and isinstance(over, list):
        unique = _UNIQUE.get(service[0]) if service and len(service) == 1 else None
        return _unique(base + _clean(over), unique) if unique else base + _clean(over)
    return _clean(over)


def _unique(entries: list, key: Callable[[Any], Any]) -> list:
    """One entry per key, the later one in the place of the first (compose-go's EnforceUnicity)."""
    out: list = []
    at: dict = {}
    for entry in entries:
        k = key(entry)
        if k in at:
            out[at[k]] = entry
        else:
            at[k] = len(out)
            out.append(entry)
    return out


def _clean(value: Any) -> Any:
    """`value` without its `!reset` entries, `!override` taken as its value."""
    if isinstance(value, Override):
        return _clean(value.value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if not isinstance(v, Reset)}
    if isinstance(value, list):
        return [_clean(v) for v in value if not isinstance(v, Reset)]
    return value
