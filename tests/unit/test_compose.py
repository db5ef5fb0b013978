"""Compose files read, interpolated and merged as the Compose Specification says (12-interpolation.md,
13-merge.md of github.com/compose-spec/compose-spec), and `.env` read as Compose reads it; no servers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from contracts.errors import ConfigError
from replay.store.location import parse_location
from services.ops import postgres_local as pg
from services.ops.compose import MAX_BYTES, interpolate, load, names, read
from services.ops.deploy_local import LocalDeployment, _command
from services.ops.envfile import read_env_file
from services.ops.interpolation import references, substitute

ENV = {"A": "1", "EMPTY": "", "B": "two"}
COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "compose"


@pytest.mark.parametrize("template, expected", [
    ("${A}", "1"), ("$A", "1"), ("x$A.y", "x1.y"), ("${NOPE}", ""), ("$NOPE", ""),
    ("${NOPE:-d}", "d"), ("${EMPTY:-d}", "d"), ("${A:-d}", "1"),
    ("${NOPE-d}", "d"), ("${EMPTY-d}", ""), ("${A-d}", "1"),
    ("${A:?e}", "1"), ("${EMPTY?e}", ""),
    ("${A:+r}", "r"), ("${EMPTY:+r}", ""), ("${NOPE:+r}", ""),
    ("${A+r}", "r"), ("${EMPTY+r}", "r"), ("${NOPE+r}", ""),
    ("$$", "$"), ("$$A", "$A"), ("$${A}", "${A}"), ("a$$$A", "a$1"),
    ("$1 $ $-", "$1 $ $-"), ("{A}", "{A}"), ("100%", "100%"),
    ("${NOPE:-${B}}", "two"), ("${NOPE:-${NADA:-c}}", "c"), ("${NOPE:-x${B}y}", "xtwoy"),
    ("${A:-${NOPE:?never evaluated}}", "1"), ("${NOPE:-$B}", "two"), ("${NOPE:-{x}}", "{x}"),
    ("${NOPE:-a:b-c}", "a:b-c"), ("${A}${B}", "1two"),
], ids=lambda v: v if isinstance(v, str) and "$" in v else None)
def test_each_form_of_interpolation(template, expected):
    assert substitute(template, ENV) == expected


def test_the_specs_examples_of_nesting():
    """12-interpolation.md: `${VARIABLE:-${FOO}}`, `${VARIABLE?$FOO}`, `${VARIABLE:-${FOO:-default}}`."""
    assert substitute("${VARIABLE:-${FOO}}", {"FOO": "foo"}) == "foo"
    assert substitute("${VARIABLE:-${FOO:-default}}", {}) == "default"
    with pytest.raises(ConfigError, match="is required: foo"):
        substitute("${VARIABLE?$FOO}", {"FOO": "foo"})


@pytest.mark.parametrize("template, message", [
    ("${NOPE:?set NOPE}", r"f.yaml: \$\{NOPE\} is required: set NOPE"),
    ("${EMPTY:?no ${B}}", r"\$\{EMPTY\} is required: no two"),
    ("${NOPE?}", r"\$\{NOPE\} is required: not set"),
    ("${A", r"f.yaml: unterminated \$\{"),
    ("x ${NOPE:-${B}", "unterminated"),
    ("${}", "invalid variable"), ("${A B}", "invalid variable"), ("${A/x/y}", "invalid variable"),
    ("${1}", "invalid variable"),
])
def test_bad_templates_are_clear_errors(template, message):
    with pytest.raises(ConfigError, match=message):
        substitute(template, ENV, "f.yaml")


def test_unset_variables_are_blank_and_noted():
    missing: set[str] = set()
    assert substitute("${X}$Y${Z:-z}${A}", ENV, missing=missing) == "z1"
    assert missing == {"X", "Y"}
    assert references("${A:-${B:?$C}} $$D $E") == {"A", "B", "C", "E"}


def test_values_are_interpolated_keys_are_not():
    """12-interpolation.md: labels keyed `$VAR` are not interpolated; the `$VAR=BAR` list form is."""
    doc = {"services": {"foo": {"labels": {"$VAR_NOT_INTERPOLATED_BY_COMPOSE": "BAR"},
                                "environment": ["$A=${B}"], "command": "$$VAR_NOT_INTERPOLATED_BY_COMPOSE",
                                "ports": [8080, "${A}:80"], "x": True}}}
    out = interpolate(doc, ENV)["services"]["foo"]
    assert out["labels"] == {"$VAR_NOT_INTERPOLATED_BY_COMPOSE": "BAR"}
    assert out["environment"] == ["1=two"]
    assert out["command"] == "$VAR_NOT_INTERPOLATED_BY_COMPOSE"
    assert out["ports"] == [8080, "1:80"] and out["x"] is True


def files(tmp_path: Path, *texts: str) -> list[Path]:
    paths = []
    for i, text in enumerate(texts):
        path = tmp_path / f"compose{i}.yaml"
        path.write_text(textwrap.dedent(text))
        paths.append(path)
    return paths


def merged(tmp_path: Path, *texts: str, variables: dict | None = None) -> dict:
    return load(files(tmp_path, *texts), variables)["services"]


def overridden(tmp_path: Path, attribute: str, base: str, over: str):
    """Service foo's `attribute` once a file setting it to `over` is merged over one setting it to `base`."""
    base_file, over_file = (f"services:\n  foo:\n    {attribute}: {value}\n" for value in (base, over))
    return merged(tmp_path, base_file, over_file)["foo"][attribute]


def test_mappings_merge_by_key(tmp_path):
    """13-merge.md, Mapping: missing entries added, conflicting ones merged."""
    out = merged(tmp_path, "services:\n  foo:\n    key1: value1\n    key2: value2\n",
                 "services:\n  foo:\n    key2: VALUE\n    key3: value3\n")
    assert out == {"foo": {"key1": "value1", "key2": "VALUE", "key3": "value3"}}


def test_sequences_are_appended(tmp_path):
    """13-merge.md, Sequence: DNS 1.1.1.1 then 8.8.8.8."""
    out = merged(tmp_path, "services:\n  foo:\n    DNS:\n      - 1.1.1.1\n",
                 "services:\n  foo:\n    DNS:\n      - 8.8.8.8\n")
    assert out["foo"]["DNS"] == ["1.1.1.1", "8.8.8.8"]


@pytest.mark.parametrize("attribute, base, over, expected", [
    ("command", '["echo", "foo"]', '["echo", "bar"]', ["echo", "bar"]),   # 13-merge.md, Shell commands
    ("entrypoint", '["a", "b"]', '["c"]', ["c"]),
    ("command", '"echo foo"', "\"sh -c 'echo a b'\"", ["sh", "-c", "echo a b"]),
], ids=["command", "entrypoint", "shell-words"])
def test_commands_are_replaced(tmp_path, attribute, base, over, expected):
    assert overridden(tmp_path, attribute, base, over) == expected


def test_a_healthcheck_test_is_replaced_the_rest_merged(tmp_path):
    out = merged(tmp_path, "services:\n  foo:\n    healthcheck:\n      test: [CMD, a]\n      interval: 5s\n",
                 "services:\n  foo:\n    healthcheck:\n      test: curl -f x\n")
    assert out["foo"]["healthcheck"] == {"test": ["CMD-SHELL", "curl -f x"], "interval": "5s"}


def test_a_string_command_is_split_as_shell_words(tmp_path):
    out = merged(tmp_path, """\
        services:
          foo:
            command: run "a b" 'c d' e\\ f
        """)
    assert out["foo"]["command"] == ["run", "a b", "c d", "e f"]
    assert _command({"command": 'x "y z"'}, "foo") == ["x", "y z"]


def test_volumes_merge_by_target(tmp_path):
    """13-merge.md, Unique resources: foo:/work then bar:/work gives bar:/work."""
    out = merged(tmp_path, "services:\n  foo:\n    volumes:\n      - foo:/work\n      - ./a:/a:ro\n",
                 "services:\n  foo:\n    volumes:\n      - bar:/work\n      - {type: bind, source: ./b, target: /a}\n"
                 "      - /anonymous\n")
    assert out["foo"]["volumes"] == ["bar:/work", {"type": "bind", "source": "./b", "target": "/a"}, "/anonymous"]


def test_ports_merge_by_ip_published_target_and_protocol(tmp_path):
    out = merged(tmp_path, """\
        services:
          foo:
            ports: ["8080:80", "127.0.0.1:9090:90", "53:53/udp", 7000]
        """, """\
        services:
          foo:
            ports:
              - "8080:80"
              - "8443:443"
              - "53:53"
              - {target: 90, published: "9090", host_ip: 127.0.0.1, protocol: tcp, mode: host}
              - "[::1]:8080:80"
              - 7000
        """)
    assert out["foo"]["ports"] == ["8080:80", {"target": 90, "published": "9090", "host_ip": "127.0.0.1",
                                               "protocol": "tcp", "mode": "host"},
                                   "53:53/udp", 7000, "8443:443", "53:53", "[::1]:8080:80"]


def test_environment_merges_by_name_in_either_form(tmp_path):
    out = merged(tmp_path, "services:\n  foo:\n    environment: [A=1, B=2, C]\n",
                 "services:\n  foo:\n    environment:\n      B: 3\n      D: ''\n",
                 "services:\n  foo:\n    environment: ['A=x=y', E]\n")
    assert out["foo"]["environment"] == {"A": "x=y", "B": 3, "C": None, "D": "", "E": None}


@pytest.mark.parametrize("attribute, base, over, expected", [
    ("labels", "[a=1, b=2]", "{b: 3}", {"a": "1", "b": 3}),
    ("annotations", "{a: 1}", "[a=2]", {"a": "2"}),
    ("sysctls", "[net.core.somaxconn=1024]", "{net.core.somaxconn: 2048}", {"net.core.somaxconn": 2048}),
    ("extra_hosts", '["db:10.0.0.1", "x=10.0.0.2"]', '["db=10.0.0.9"]', {"db": "10.0.0.9", "x": "10.0.0.2"}),
    ("profiles", "[a, b]", "[b, c]", ["a", "b", "c"]),
    ("cap_add", "[NET_ADMIN]", "[NET_ADMIN, SYS_TIME]", ["NET_ADMIN", "SYS_TIME"]),
    ("secrets", "[s, {source: t, target: /x}]", "[{source: s2, target: /run/secrets/s}, {source: t}]",
     [{"source": "s2", "target": "/run/secrets/s"}, {"source": "t", "target": "/x"}, {"source": "t"}]),
])
def test_keyed_attributes_merge_by_key(tmp_path, attribute, base, over, expected):
    assert overridden(tmp_path, attribute, base, over) == expected


def test_depends_on_merges_short_and_long_forms(tmp_path):
    out = merged(tmp_path, "services:\n  foo:\n    depends_on: [db, cache]\n",
                 "services:\n  foo:\n    depends_on:\n      db: {condition: service_healthy}\n      init:\n"
                 "        condition: service_completed_successfully\n",
                 "services:\n  foo:\n    depends_on:\n      db: {required: false}\n")
    assert out["foo"]["depends_on"] == {
        "db": {"condition": "service_healthy", "required": False},
        "cache": {"condition": "service_started", "required": True},
        "init": {"condition": "service_completed_successfully"}}


def test_reset_removes_and_override_replaces(tmp_path):
    """13-merge.md, Reset value (ports: !reset [], FOO: !reset null) and Replace value (ports: !override)."""
    base = "services:\n  app:\n    image: myapp\n    ports:\n      - '8080:80'\n    environment:\n      FOO: BAR\n"
    reset = merged(tmp_path, base, "services:\n  app:\n    image: myapp\n    ports: !reset []\n"
                   "    environment:\n      FOO: !reset null\n")
    assert reset == {"app": {"image": "myapp", "environment": {}}}
    replaced = merged(tmp_path, base, "services:\n  app:\n    ports: !override\n      - '8443:443'\n")
    assert replaced["app"]["ports"] == ["8443:443"]
    env = merged(tmp_path, base, "services:\n  app:\n    environment: !override [X=1]\n")
    assert env["app"]["environment"] == {"X": "1"}


def test_logging_with_another_driver_is_replaced(tmp_path):
    base = "services:\n  foo:\n    logging: {driver: json-file, options: {max-size: 1m}}\n"
    same = merged(tmp_path, base, "services:\n  foo:\n    logging: {options: {max-file: '3'}}\n")
    assert same["foo"]["logging"] == {"driver": "json-file", "options": {"max-size": "1m", "max-file": "3"}}
    other = merged(tmp_path, base, "services:\n  foo:\n    logging: {driver: syslog}\n")
    assert other["foo"]["logging"] == {"driver": "syslog"}


def test_each_file_is_interpolated_before_the_merge(tmp_path):
    """12-interpolation.md: interpolation is applied before a merge on a per-file basis, so a later
    file's `$$` stays a literal `$` and a literal from an earlier file is not interpolated again."""
    out = merged(tmp_path, "services:\n  foo:\n    command: ['$${A}']\n    environment: {X: '$${B}'}\n",
                 "services:\n  foo:\n    environment: {Y: '${B}'}\n", variables=ENV)
    assert out["foo"]["command"] == ["${A}"]
    assert out["foo"]["environment"] == {"X": "${B}", "Y": "two"}


def test_the_repositorys_files_merge(tmp_path):
    model = load([COMPOSE / "compose.yaml", COMPOSE / "scaled.yaml", COMPOSE / "cluster.yaml"])
    services = model["services"]
    assert services["strategy"]["profiles"] == ["single-strategy"]
    nodes = ("nats-1", "nats-2", "nats-3")
    assert services["init"]["depends_on"] == {n: {"condition": "service_healthy"} for n in nodes}
    assert services["init"]["environment"]["TRADEFLOW_REPLICAS"] == "strategy=2"
    assert services["nats"]["image"] == "nats:2.15-alpine"


@pytest.mark.parametrize("content, message", [
    (b"services: [1]", "not a Compose file"),
    (b"- 1\n- 2", "not a Compose file"),
    (b"services:\n  web: nginx\n", "service web is not a mapping"),
    (b"services:\n  web:\n", "service web is not a mapping"),
    (b"services: {a: {image: x}}\nservices: {}\nx: [", "not YAML"),
    (b"\x00\x01\x02binary", "binary"),
    (b"\xff\xfe\xfa", "not UTF-8"),
    (b"include: [other.yaml]\nservices: {}\n", "`include` is not supported"),
    (b"services:\n  a:\n    extends: {service: b}\n", "`extends` is not supported"),
    (b"a: &a [*a]\nservices: {}\n", "expand to more than"),
    (b"[" * 5000, "nested too deeply|not YAML"),
])
def test_bad_files_are_clear_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as err:
        read(path)
    assert str(path) in str(err.value)


def test_a_command_with_an_unclosed_quote_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="compose0.yaml: command 'run \"data': No closing quotation"):
        merged(tmp_path, "services:\n  foo:\n    command: run \"data\n")


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("services: {}\n" + "#" * MAX_BYTES)
    with pytest.raises(ConfigError, match="larger than"):
        read(path)


@pytest.mark.timeout(10)
def test_an_alias_bomb_is_refused_at_once(tmp_path):
    """A billion laughs: 9 levels of 9 aliases, 9**9 nodes if expanded; refused from its node graph."""
    lines = ['a0: &a0 ["lol"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nservices:\n  x:\n    command: *a9\n")
    with pytest.raises(ConfigError, match="aliases expand to more than"):
        read(path)


def test_the_compose_files_anchors_and_merge_keys_are_fine():
    assert read(COMPOSE / "compose.yaml")["services"]["data"]["restart"] == "unless-stopped"


ENV_FILE = r"""# a comment
export EXPORTED=1
PLAIN=plain value # an inline comment
HASH=a#b
DOUBLE="two\nlines ${EXPORTED} \"q\""
SINGLE='no ${EXPORTED} \n here'
REF=${PLAIN}-$EXPORTED
DEFAULT=${NOPE:-fallback}
FROM_ENV=${SHELL_VAR}
EMPTY=
BARE
  SPACED = yes
"""


def test_env_files_are_read_as_compose_reads_them(tmp_path):
    path = tmp_path / ".env"
    path.write_text(ENV_FILE)
    assert read_env_file(path, {"SHELL_VAR": "from the shell", "EXPORTED": "shell wins"}) == {
        "EXPORTED": "1", "PLAIN": "plain value", "HASH": "a#b", "DOUBLE": 'two\nlines shell wins "q"',
        "SINGLE": r"no ${EXPORTED} \n here", "REF": "plain value-shell wins", "DEFAULT": "fallback",
        "FROM_ENV": "from the shell", "EMPTY": "", "SPACED": "yes"}
    assert read_env_file(path, {})["REF"] == "plain value-1"


def test_a_required_variable_in_an_env_file_names_its_line(tmp_path):
    path = tmp_path / ".env"
    path.write_text("A=1\nB=${NOPE:?say why}\n")
    with pytest.raises(ConfigError, match=r"\.env:2: \$\{NOPE\} is required: say why"):
        read_env_file(path, {})


def test_a_deployment_takes_env_file_then_environment_and_makes_up_secrets(tmp_path, monkeypatch):
    [path] = files(tmp_path, """\
        services:
          app:
            image: tradeflow:1
            command: run data
            environment:
              FROM_FILE: ${FROM_FILE}
              SHELL: ${FROM_SHELL:-no}
              PASSWORD: ${APP_PASSWORD:?set it}
              TOKEN: ${APP_TOKEN:-${OTHER_TOKEN}}
              PASSED:
        """)
    (tmp_path / ".env").write_text("FROM_FILE='file $$'\nFROM_SHELL=file\nPASSED=through\n")
    monkeypatch.setenv("FROM_SHELL", "shell")
    deployment = LocalDeployment(files=[path], home=tmp_path / "home")
    assert deployment.made_up == ["APP_PASSWORD", "APP_TOKEN", "OTHER_TOKEN"]
    env = deployment.proc("app").env
    assert env["FROM_FILE"] == "file $$"   # a variable's value is not interpolated again
    assert env["SHELL"] == "shell" and env["PASSED"] == "through"
    assert env["PASSWORD"] == deployment.variables["APP_PASSWORD"] and len(env["PASSWORD"]) >= 20
    assert deployment.proc("app").argv[-2:] == ["run", "data"]


@pytest.mark.skipif(shutil.which("docker") is None or subprocess.run(["docker", "compose", "version"],
                    capture_output=True).returncode != 0, reason="docker compose is not installed")
def test_the_model_is_the_one_docker_compose_builds(tmp_path):
    files_ = [COMPOSE / "compose.yaml", COMPOSE / "scaled.yaml", COMPOSE / "cluster.yaml"]
    variables = {name: f"pw-{name.lower()}" for name in read_env_file(COMPOSE / "env.example", {})}
    run = subprocess.run(["docker", "compose", *[a for f in files_ for a in ("-f", str(f))], "--profile", "scaled",
                          "--profile", "cluster", "config", "--format", "json"],
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin:/usr/local/bin", **variables})
    assert run.returncode == 0, run.stderr
    theirs = json.loads(run.stdout)["services"]
    ours = load(files_, variables)["services"]
    for name, service in theirs.items():
        assert ours[name]["environment"] == service["environment"], name
        assert ours[name].get("command") == service.get("command"), name
        assert set(ours[name].get("depends_on") or {}) == set(service.get("depends_on") or {}), name
        assert ours[name]["image"] == service["image"], name


STORES = ("TRADEFLOW_STORE", "TRADEFLOW_EXECUTION_LEDGER", "TRADEFLOW_AUDIT_LOG")
WITH_POSTGRES = [COMPOSE / "compose.yaml", COMPOSE / "scaled.yaml", COMPOSE / "postgres.yaml"]


def example_variables() -> dict[str, str]:
    return {name: f"pw-{name.lower()}" for name in read_env_file(COMPOSE / "env.example", {})}


def test_every_variable_the_compose_files_use_is_in_env_example():
    used = set().union(*(names(read(path)) for path in COMPOSE.glob("*.yaml")))
    assert used <= set(example_variables()), used - set(example_variables())


def test_the_postgres_profile_gives_each_store_its_writer_s_role_and_the_rebuilds_the_reader():
    """Every store, ledger and audit setting is a postgresql:// URL on the postgres service, with the role
    that may do what that service does (postgres-init/10-roles.sql) and its password from the environment."""
    services = load(WITH_POSTGRES, example_variables())["services"]
    roles = {(name, key): parse_location(value, key) for name, svc in services.items()
             for key, value in (svc.get("environment") or {}).items() if key in STORES}
    readers = {"strategy", "strategy-0", "strategy-1", "quant", "risk", "execution", "audit"}
    assert {(n, k): urlsplit(loc.url or "").username for (n, k), loc in roles.items()} == {
        ("recorder", "TRADEFLOW_STORE"): "tradeflow_recorder",
        ("execution", "TRADEFLOW_EXECUTION_LEDGER"): "tradeflow_execution",
        ("audit", "TRADEFLOW_AUDIT_LOG"): "tradeflow_audit",
        **{(n, "TRADEFLOW_STORE"): "tradeflow_reader" for n in readers}}
    for (name, _), location in roles.items():
        url = urlsplit(location.url or "")
        assert location.kind == "postgresql" and (url.hostname, url.port, url.path) == ("postgres", 5432, "/tradeflow")
        assert url.password == f"pw-tradeflow_postgres_password_{(url.username or '').removeprefix('tradeflow_')}"
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    for name in (n for n in services if n not in {n for n, _ in roles}):
        assert "postgres" not in (services[name].get("depends_on") or {}), name


def test_without_the_postgres_file_the_stores_stay_embedded(tmp_path):
    deployment = LocalDeployment(files=[COMPOSE / "compose.yaml"], home=tmp_path / "home")
    assert "postgres" not in deployment.services
    assert not [(n, k) for n, svc in deployment.services.items() for k in svc.get("environment") or {} if k in STORES]


def test_deploy_local_runs_the_postgres_service_on_a_free_port_and_points_the_services_at_it(tmp_path):
    deployment = LocalDeployment(files=WITH_POSTGRES[::2], home=tmp_path / "home", profiles=("postgres",))
    port = deployment.port("postgres", 5432)
    server = deployment.proc("postgres")
    assert Path(server.argv[0]).name == "postgres" and server.argv[1:3] == ["-D", str(deployment.pgdata("postgres"))]
    assert server.argv[-6:] == ["-c", "listen_addresses=127.0.0.1", "-p", str(port), "-c", "unix_socket_directories="]
    assert server.stop_signal == signal.SIGINT and server.user == ("postgres" if os.geteuid() == 0 else None)
    volume = tmp_path / "home" / "volumes" / "postgres-data"
    assert deployment.pgdata("postgres") == (volume if os.geteuid() else pg.data_folder(volume))
    password = deployment.variables["TRADEFLOW_POSTGRES_PASSWORD_RECORDER"]
    assert deployment.proc("recorder").env["TRADEFLOW_STORE"] == \
        f"postgresql://tradeflow_recorder:{password}@127.0.0.1:{port}/tradeflow"
    assert deployment.postgres_url("postgres") == \
        f"postgresql://postgres:{deployment.variables['TRADEFLOW_POSTGRES_PASSWORD']}@127.0.0.1:{port}/tradeflow"


@pytest.mark.parametrize("service, message", [
    ("image: postgres:15\n", "POSTGRES_PASSWORD is not set"),
    ("image: postgres:15\n    environment: {POSTGRES_PASSWORD_FILE: /nope/pw}\n", "POSTGRES_PASSWORD_FILE /nope/pw"),
    ("image: postgres:15\n    environment: {POSTGRES_PASSWORD: x, POSTGRES_INITDB_ARGS: \"'\"}\n",
     "POSTGRES_INITDB_ARGS"),
    ("image: postgres:15\n    stop_signal: SIGNOPE\n    environment: {POSTGRES_PASSWORD: x}\n",
     "stop_signal 'SIGNOPE' is not a signal"),
], ids=["no password", "no password file", "unclosed quote", "no such signal"])
def test_a_postgres_service_it_cannot_run_is_a_clear_error(tmp_path, service, message):
    [path] = files(tmp_path, f"services:\n  db:\n    {service}")
    with pytest.raises(ConfigError, match=f"service db: {message}"):
        LocalDeployment(files=[path], home=tmp_path / "home").proc("db")


def test_a_compressed_init_script_is_refused_and_others_are_taken_in_name_order(tmp_path):
    for name in ("20-b.sql", "10-a.sh", "30-c.txt"):
        (tmp_path / name).write_text("")
    assert [p.name for p in pg.init_scripts(tmp_path)] == ["10-a.sh", "20-b.sql"]
    (tmp_path / "40-d.sql.gz").write_bytes(b"")
    with pytest.raises(ConfigError, match="compressed init scripts cannot run here"):
        pg.init_scripts(tmp_path)
