"""The deployment files exercised: the Compose file run as local processes end to end with real data,
its scale-out, 3-node cluster and PostgreSQL variants, its postgres service and the roles its init
scripts make, and the Dockerfile and Kubernetes manifests through linters."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import nats
import psycopg
import pytest
import redis.asyncio as aioredis
import yaml
from psycopg import sql

from contracts.errors import ConfigError
from replay.store.location import parse_location
from services import registry
from services.offline.backtest import run_backtest
from replay.store.pg import check_schema
from services.audit.trail import open_trail
from services.ops.compose import interpolate
from services.ops.compose import load as load_files
from services.ops.compose import read
from services.ops.deploy_local import LocalDeployment
from services.ops.observe import wait_drained
from services.ops.supervisor import http_json
from services.runtime.agent import Agent
from services.runtime.connect import nats_options
from services.runtime.permissions import REDIS_USERS, USERS, redis_acl
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
BIN = Path(sys.executable).parent


async def run_and_check(tmp_path: Path, files: list[Path], profiles: tuple[str, ...], strategies: list[str],
                        then: Callable[[LocalDeployment], Awaitable[None]] | None = None) -> None:
    """The deployment runs GOOG through to the pure logic's result; `then` checks it further while it is up."""
    deployment = LocalDeployment(files=files, home=tmp_path / "deploy", profiles=profiles)
    assert [n for n in deployment.services if n.startswith("strategy")] == strategies
    env = {k: v for k, v in deployment.services["audit"]["environment"].items() if k.startswith("TRADEFLOW_")}
    expected = run_backtest(("GOOG",), env)   # what the compose file's settings give in one process
    try:
        await deployment.start()
        data = deployment.http_ports["data"]

        async def published() -> bool:
            return (await http_json(data, "/v1/progress"))[1]["done"]

        await wait_for(published, timeout=120, what="the data service to publish GOOG")
        printed = await check_what_it_prints(deployment.announcement(), len([n for n in deployment.services
                                                                            if n.startswith("nats")]))
        nc = await nats.connect(**nats_options(printed["operator"]))
        try:
            durables = [c.name for c in await nc.jsm().consumers_info("PIPELINE")]
            await wait_drained(nc.jsm(), durables, timeout=120)
        finally:
            await nc.close()
        status, portfolio = await http_json(deployment.http_ports["audit"], "/v1/portfolio")
        assert status == 200
        assert portfolio["final_equity"] == pytest.approx(expected["final_equity"], rel=1e-12)
        assert portfolio["trade_count"] == len(expected["trades"]) == 93 and portfolio["bars"] == 2148
        if then is not None:
            await then(deployment)
    finally:
        codes = await deployment.stop()
        remove_clusters(deployment)
    assert all(code == 0 for code in codes.values()), codes


async def check_what_it_prints(lines: list[str], nodes: int) -> dict[str, str]:
    """The URLs `deploy local` prints open what it deployed: the dashboard with its token, NATS as the
    operator and as the injector (every node listed), Redis as the operator; they are returned."""
    words = [w for line in lines for w in line.split()]
    printed = {"operator": next(w.removeprefix("NATS_URL=") for w in words if w.startswith("NATS_URL=nats://")),
               "injector": next(w for w in words if w.startswith("nats://injector:")),
               "redis": next(w for w in words if w.startswith("redis://operator:")),
               "dashboard": next(w for w in words if "/#token=" in w)}
    assert all(u.count("nats://") == nodes for u in (printed["operator"], printed["injector"])), printed
    base, token = printed["dashboard"].split("/#token=")
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/") as r:
            assert r.status == 200 and "/static/app.js" in await r.text()
        async with s.get(base + "/v1/state") as r:
            assert r.status == 401
        async with s.get(base + "/v1/state", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status == 200
    for user in ("operator", "injector"):
        nc = await nats.connect(**nats_options(printed[user]))
        try:
            assert (await nc.jetstream().stream_info("PIPELINE")).config.name == "PIPELINE"
        finally:
            await nc.close()
    client = aioredis.from_url(printed["redis"])
    try:
        assert await client.ping()
    finally:
        await client.aclose()
    return printed


async def test_the_compose_file_runs_end_to_end_with_real_data(tmp_path):
    await run_and_check(tmp_path, [COMPOSE / "compose.yaml"], (), ["strategy"])


async def test_scaled_out_on_a_three_node_cluster_it_gives_the_same_result(tmp_path):
    files = [COMPOSE / "compose.yaml", COMPOSE / "scaled.yaml", COMPOSE / "cluster.yaml"]
    deployment = LocalDeployment(files=files, home=tmp_path / "probe", profiles=("scaled", "cluster"))
    assert {n for n in deployment.services if n.startswith("nats")} == {"nats-1", "nats-2", "nats-3"}
    assert deployment.services["risk"]["environment"]["TRADEFLOW_STREAM_REPLICAS"] == "3"
    await run_and_check(tmp_path, files, ("scaled", "cluster"), ["strategy-0", "strategy-1"])


async def test_with_the_postgres_profile_the_store_ledger_and_audit_trail_are_in_postgresql(tmp_path):
    """The same result as on the embedded SQLite files, and the event store, the fill ledger and the audit
    trail are in PostgreSQL (each in its writer's schema), nothing of them in the services' volume."""
    files = [COMPOSE / "compose.yaml", COMPOSE / "postgres.yaml"]
    await run_and_check(tmp_path, files, ("postgres",), ["strategy"], then=check_in_postgres)


async def check_in_postgres(deployment: LocalDeployment) -> None:
    nc = await nats.connect(**nats_options(deployment.nats_url_for("operator")))
    try:
        recorded = (await nc.jetstream().stream_info("PIPELINE")).state.messages
        filled = sum((await nc.jetstream().stream_info("PIPELINE", subjects_filter="executed_ready.>"))
                     .state.subjects.values())
    finally:
        await nc.close()
    rows = await rows_by_schema(deployment.postgres_url("postgres"))
    assert filled > 0 and max(rows["events"].values()) == recorded, rows    # every pipeline event, once
    assert max(rows["ledger"].values()) == filled, rows                     # a fill an order
    assert max(rows["audit"].values()) >= filled, rows                      # each fill in the trail
    left = [p for p in (deployment.home / "volumes").rglob("*") if p.name.endswith((".sqlite", ".jsonl"))]
    assert not left, left
    table = max(rows["events"], key=rows["events"].__getitem__)
    async with await psycopg.AsyncConnection.connect(role_url(deployment, "reader"), autocommit=True) as conn:
        count = await (await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))).fetchone()
    assert count == (recorded,)   # what the services rebuild from, as they read it


async def rows_by_schema(admin_url: str) -> dict[str, dict[str, int]]:
    """Each tradeflow schema's tables (but tradeflow_schema) and their row counts, read as the superuser."""
    out: dict[str, dict[str, int]] = {"events": {}, "ledger": {}, "audit": {}}
    async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True) as conn:
        tables = await (await conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema = ANY(%s) AND table_name <> 'tradeflow_schema'", [list(out)])).fetchall()
        for schema, table in tables:
            row = await (await conn.execute(sql.SQL("SELECT count(*) FROM {}.{}").format(
                sql.Identifier(schema), sql.Identifier(table)))).fetchone()
            out[schema][table] = row[0] if row else 0
    assert all(out.values()), f"a schema with no table: {out}"
    return out


def role_url(deployment: LocalDeployment, role: str) -> str:
    """The URL of tradeflow_`role`, with the password the deployment gave it."""
    password = deployment.variables[f"TRADEFLOW_POSTGRES_PASSWORD_{role.upper()}"]
    return f"postgresql://tradeflow_{role}:{password}@127.0.0.1:{deployment.port('postgres', 5432)}/tradeflow"


def remove_clusters(deployment: LocalDeployment) -> None:
    """The deployment's PostgreSQL data, which under root is outside its home (and the test's tmp folder)."""
    for name, kind in deployment.kinds.items():
        if kind == "postgres":
            shutil.rmtree(deployment.pgdata(name), ignore_errors=True)


def postgres_only(tmp_path: Path, init: Path = COMPOSE / "postgres-init") -> Path:
    """A Compose file of the repository's postgres service alone, its init scripts from `init`."""
    service = dict(read(COMPOSE / "compose.yaml")["services"]["postgres"])
    service["volumes"] = [v.replace("./postgres-init", str(init)) for v in service["volumes"]]
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump({"services": {"postgres": service}, "volumes": {"postgres-data": {}}}))
    return path


# what each role may do (and does, as the adapters will: creating its tables at start-up) and may not
ALLOWED = [
    ("recorder", "CREATE TABLE IF NOT EXISTS events (seq BIGSERIAL, id TEXT PRIMARY KEY)"),
    ("recorder", "INSERT INTO events (id) VALUES ('e1'), ('e2')"),
    ("recorder", "DELETE FROM events WHERE id = 'e2'"),
    ("execution", "CREATE TABLE IF NOT EXISTS fills (order_id TEXT PRIMARY KEY)"),
    ("execution", "INSERT INTO fills VALUES ('o1') ON CONFLICT DO NOTHING"),
    ("audit", "CREATE TABLE IF NOT EXISTS trail (id TEXT PRIMARY KEY)"),
    ("audit", "INSERT INTO trail VALUES ('t1')"),
    ("reader", "SELECT id FROM events"),
    ("reader", "SELECT version FROM tradeflow_schema"),
]
REFUSED = [
    ("reader", "SET default_transaction_read_only = off; INSERT INTO events (id) VALUES ('x')"),   # not only read-only
    ("reader", "INSERT INTO events (id) VALUES ('x')"),
    ("reader", "DELETE FROM events"),
    ("reader", "CREATE TABLE x (a INT)"),
    ("reader", "SELECT * FROM ledger.fills"),
    ("reader", "SELECT * FROM audit.trail"),
    ("execution", "INSERT INTO events.events (id) VALUES ('x')"),
    ("execution", "CREATE TABLE events.x (a INT)"),
    ("execution", "SELECT * FROM audit.trail"),
    ("audit", "SELECT * FROM ledger.fills"),
    ("audit", "UPDATE events.events SET id = 'y'"),
    ("recorder", "SELECT * FROM ledger.fills"),
    ("recorder", "CREATE TABLE public.x (a INT)"),
    ("execution", "CREATE TABLE public.x (a INT)"),
    ("recorder", "CREATE DATABASE other"),
    ("recorder", "CREATE ROLE other"),
]


async def test_the_postgres_service_sets_up_once_a_role_per_writer_and_a_read_only_one(tmp_path):
    deployment = LocalDeployment(files=[postgres_only(tmp_path)], home=tmp_path / "home", profiles=("postgres",))
    assert deployment.proc("postgres").stop_signal == 2   # SIGINT: a fast shutdown
    try:
        await deployment.start()
        await check_roles(deployment)
    finally:
        await deployment.stop()
    # the same volume and passwords (as a .env would keep them): the cluster as it was, the scripts not run again
    (tmp_path / ".env").write_text("".join(f"{k}={deployment.variables[k]}\n" for k in deployment.made_up))
    again = LocalDeployment(files=[postgres_only(tmp_path)], home=tmp_path / "home", profiles=("postgres",))
    try:
        await again.start()
        async with await psycopg.AsyncConnection.connect(role_url(again, "reader"), autocommit=True) as conn:
            assert await (await conn.execute("SELECT id FROM events")).fetchall() == [("e1",)]
    finally:
        codes = await again.stop()
        remove_clusters(again)
    assert codes == {"postgres": 0}
    assert (tmp_path / "home" / "logs" / "postgres.log").read_text().count("10-roles.sql") == 1


async def check_roles(deployment: LocalDeployment) -> None:
    """Each role does what it is for (creating its tables at start-up, as the adapters do) and nothing else."""
    schemas = {"recorder": "events", "execution": "ledger", "audit": "audit"}
    for role, schema in schemas.items():   # the adapters' version table, each in its writer's schema
        async with await psycopg.AsyncConnection.connect(role_url(deployment, role), autocommit=True) as conn:
            assert not await check_schema(conn, component=schema, version=1, setting="X", create=True)
            where = await (await conn.execute("SELECT relnamespace::regnamespace::text FROM pg_class "
                                              "WHERE oid = to_regclass('tradeflow_schema')")).fetchone()
            assert where == (schema,)
    wrong = []
    for role, statement in ALLOWED:
        async with await psycopg.AsyncConnection.connect(role_url(deployment, role), autocommit=True) as conn:
            await conn.execute(statement)
    for role, statement in REFUSED:
        async with await psycopg.AsyncConnection.connect(role_url(deployment, role), autocommit=True) as conn:
            try:
                await conn.execute(statement)
                wrong.append((role, statement))
            except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction):
                pass
    assert not wrong, f"allowed, and should not be: {wrong}"
    async with await psycopg.AsyncConnection.connect(role_url(deployment, "reader"), autocommit=True) as conn:
        assert await check_schema(conn, component="events", version=1, setting="X", create=False)
    bad = role_url(deployment, "reader").replace(deployment.variables["TRADEFLOW_POSTGRES_PASSWORD_READER"], "no")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        await psycopg.AsyncConnection.connect(bad)
    async with open_trail(role_url(deployment, "audit")) as trail:   # the adapter, as audit opens it
        assert await trail.append([{"id": "f1", "kind": "fill"}]) == 1
    async with await psycopg.AsyncConnection.connect(deployment.postgres_url("postgres"), autocommit=True) as conn:
        assert await (await conn.execute("SELECT count(*) FROM audit.audit_trail")).fetchone() == (1,)
    for read_only, why in ((True, "no audit trail"), (False, "read-only transaction|permission denied")):
        with pytest.raises(ConfigError, match=f"^TRADEFLOW_AUDIT_LOG: .*({why})"):   # the reader sees none, makes none
            async with open_trail(role_url(deployment, "reader"), read_only=read_only):
                pass


async def test_an_init_script_that_fails_stops_the_deployment_and_keeps_no_cluster(tmp_path):
    init = tmp_path / "init"
    init.mkdir()
    (init / "10-fine.sql").write_text("CREATE TABLE kept (a INT);\n")
    (init / "20-broken.sql").write_text("SELECT 1/0;\n")
    deployment = LocalDeployment(files=[postgres_only(tmp_path, init)], home=tmp_path / "home", profiles=("postgres",))
    try:
        with pytest.raises(ConfigError, match=r"service postgres: 20-broken.sql exited with 3 \(log: "):
            await deployment.start()
        assert deployment.supervisor.procs["postgres"].process.returncode is not None   # the server stopped
        assert not deployment.pgdata("postgres").exists()   # the next run starts afresh
        assert "division by zero" in (tmp_path / "home" / "logs" / "postgres.log").read_text()
    finally:
        await deployment.stop()
        remove_clusters(deployment)


def test_variables_are_interpolated_as_compose_does():
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("x${A}y$$z${B:-two}${EMPTY:-e}${EMPTY-f}$A", env) == "x1y$ztwoe1"
    with pytest.raises(ConfigError, match="services.x: \\${NOPE} is required: set NOPE"):
        interpolate({"services": {"x": "${NOPE:?set NOPE}"}}, env)


@pytest.mark.parametrize("text, message", [
    ("services: [1, 2]", "not a Compose file"),
    (": : :", "not YAML"),
    ("services:\n  web:\n    image: nginx:1.27\n", "image 'nginx:1.27' cannot run as a local process"),
    ("services:\n  x:\n    image: tradeflow:1\n    profiles: [later]\n", "no service is active"),
    ("services:\n  x:\n    image: tradeflow:1\n    command: {run: data}\n", "command must be a list"),
])
def test_a_file_it_cannot_run_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "compose.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        deployment = LocalDeployment(files=[path], home=tmp_path / "home")
        deployment.proc(next(iter(deployment.services)))


def test_overrides_merge_reset_and_replace_as_compose_does():
    model = load_files([COMPOSE / "compose.yaml", COMPOSE / "cluster.yaml"])
    assert set(model["services"]["data"]["depends_on"]) == {"nats-1", "nats-2", "nats-3", "redis", "init"}   # !override
    assert model["services"]["data"]["environment"]["TRADEFLOW_DATA_FILES"] == "GOOG"              # merged
    assert model["services"]["nats"]["profiles"] == ["single-nats"]


def test_the_dockerfile_passes_hadolint():
    run = subprocess.run([str(BIN / "hadolint"), str(ROOT / "deploy" / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_kubernetes_manifests_are_valid():
    manifests = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
    assert manifests
    run = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "-k", "1.30.0", *map(str, manifests)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    docs = [d for m in manifests for d in yaml.safe_load_all(m.read_text()) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    assert set(deployments) >= {"data", "strategy", "quant", "risk", "execution", "audit", "recorder", "dashboard"}
    for name, d in deployments.items():
        [container] = d["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["run", name]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert any(e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]), name
    secret = named(docs, "Secret", "tradeflow-credentials")
    for name, d in deployments.items():   # each service reads its own URLs, which the Secret holds
        refs = {e["valueFrom"]["secretKeyRef"]["key"] for c in d["spec"]["template"]["spec"]["containers"]
                for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert refs <= set(secret["stringData"]), (name, refs - set(secret["stringData"]))
        assert {f"{name}-nats-url", f"{name}-redis-url"} <= refs and all(r.startswith(f"{name}-") for r in refs), refs


K8S = ROOT / "deploy" / "k8s"
STORES = ("TRADEFLOW_STORE", "TRADEFLOW_EXECUTION_LEDGER", "TRADEFLOW_AUDIT_LOG")


def k8s_docs(*paths: Path) -> list[dict]:
    return [d for path in paths or sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]


def named(docs: list[dict], kind: str, name: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def single_instance() -> set[str]:
    """The services of which one process at most may be alive (per durable): every agent whose state is
    rebuilt at start-up, and the recorder, the event store's one writer."""
    return {n for n in registry.SERVICES
            if isinstance(agent := registry.build(n, {}), Agent) and agent.options.stateful} | {"recorder"}


def test_kubernetes_shares_no_file_and_runs_one_pod_of_each_single_instance_service():
    docs = k8s_docs()
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    secret = named(docs, "Secret", "tradeflow-credentials")["stringData"]
    settings = named(docs, "ConfigMap", "tradeflow-settings")["data"]
    assert not [d for d in docs if d["kind"] in ("PersistentVolumeClaim", "PersistentVolume")]
    assert not set(STORES) & set(settings) and not any(".sqlite" in v or ".jsonl" in v for v in settings.values())
    headless = {d["metadata"]["name"] for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"}
    redis = yaml.safe_load((K8S / "charts" / "redis.yaml").read_text())
    sentinels = [f"redis-node-{i}.redis-headless.tradeflow.svc:26379" for i in range(redis["replica"]["replicaCount"])]
    roles = {}
    for name, workload in workloads.items():
        pod = workload["spec"]["template"]["spec"]
        assert "volumeClaimTemplates" not in workload["spec"], name
        assert all(set(v) - {"name"} <= {"emptyDir", "configMap", "secret"} for v in pod["volumes"]), name
        [container] = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert not any(".sqlite" in e.get("value", "") or ".jsonl" in e.get("value", "") for e in env.values())
        for key in set(STORES) & set(env):   # from the Secret (a KeyError if a literal), a postgresql:// URL
            location = parse_location(secret[env[key]["valueFrom"]["secretKeyRef"]["key"]], key)
            assert location.kind == "postgresql", (name, key)
            roles[name, key] = urlsplit(location.url or "").username
        url = urlsplit(secret[env["REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"]])
        assert url.scheme == "redis+sentinel" and url.netloc.rpartition("@")[2].split(",") == sentinels, name
        assert url.path == f"/{redis['sentinel']['masterSet']}/0", name
    for name in single_instance():
        spec = workloads[name]["spec"]
        assert workloads[name]["kind"] == "StatefulSet" and spec["replicas"] == 1, name
        assert spec["podManagementPolicy"] == "OrderedReady" and spec["serviceName"] in headless, name
    readers = single_instance() - {"recorder"}
    assert roles == {("recorder", "TRADEFLOW_STORE"): "tradeflow_recorder",
                     ("execution", "TRADEFLOW_EXECUTION_LEDGER"): "tradeflow_execution",
                     ("audit", "TRADEFLOW_AUDIT_LOG"): "tradeflow_audit",
                     **{(n, "TRADEFLOW_STORE"): "tradeflow_reader" for n in readers}}


def test_the_servers_charts_hold_the_compose_deployments_roles_users_and_replicas():
    docs = k8s_docs()
    servers = k8s_docs(K8S / "servers-secrets.yaml")
    sql = named(docs, "ConfigMap", "tradeflow-postgres-roles")["data"]["roles.sql"]
    assert sql == (COMPOSE / "postgres-init" / "10-roles.sql").read_text()
    [cluster] = k8s_docs(K8S / "charts" / "postgres.yaml")
    spec = cluster["spec"]
    assert spec["bootstrap"]["initdb"]["postInitApplicationSQLRefs"]["configMapRefs"] == [
        {"name": "tradeflow-postgres-roles", "key": "roles.sql"}]
    made = {"tradeflow_recorder", "tradeflow_execution", "tradeflow_audit", "tradeflow_reader"}
    assert all(f"'{role}'" in sql for role in made)
    assert {r["name"] for r in spec["managed"]["roles"]} == made and all(r["login"] for r in spec["managed"]["roles"])
    for role in spec["managed"]["roles"]:
        login = named(servers, "Secret", role["passwordSecret"]["name"])
        assert login["type"] == "kubernetes.io/basic-auth" and login["stringData"]["username"] == role["name"]
    assert spec["instances"] >= 3 and spec["postgresql"]["synchronous"]["number"] >= 1
    hosts = {urlsplit(u).hostname for u in named(docs, "Secret", "tradeflow-credentials")["stringData"].values()
             if u.startswith("postgresql://")}
    assert hosts == {f"{cluster['metadata']['name']}-rw.tradeflow.svc"}
    redis = yaml.safe_load((K8S / "charts" / "redis.yaml").read_text())
    assert redis["sentinel"]["enabled"] and redis["auth"]["acl"]["enabled"]
    for user in redis["auth"]["acl"]["users"]:   # the Compose file's rules, as the code writes them
        rule = [t for t in redis_acl(user["username"], "x").split() if t[0] in "~&+-"]
        assert " ".join(user.get(k, "") for k in ("keys", "channels", "commands")).split() == rule, user
    assert [u["username"] for u in redis["auth"]["acl"]["users"]] == list(REDIS_USERS)
    assert set(named(servers, "Secret", "redis-acl-users")["stringData"]) == set(REDIS_USERS)
    nats_values = yaml.safe_load((K8S / "charts" / "nats.yaml").read_text())
    settings = named(docs, "ConfigMap", "tradeflow-settings")["data"]
    assert nats_values["config"]["cluster"]["replicas"] == int(settings["TRADEFLOW_STREAM_REPLICAS"]) == 3
    assert nats_values["config"]["jetstream"]["enabled"]
    passwords = nats_values["container"]["env"]
    assert set(passwords) == {f"TRADEFLOW_NATS_PASSWORD_{u.upper()}" for u in USERS}
    assert {p["valueFrom"]["secretKeyRef"]["key"] for p in passwords.values()} == \
        set(named(servers, "Secret", "nats-passwords")["stringData"])
