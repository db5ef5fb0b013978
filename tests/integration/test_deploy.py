"""The deployment files exercised: the Compose file run as local processes end to end with real data,
its scale-out and 3-node cluster variants, and the Dockerfile and Kubernetes manifests through linters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import nats
import pytest
import redis.asyncio as aioredis

from contracts.errors import ConfigError
from services.offline.backtest import run_backtest
from services.ops.compose import interpolate
from services.ops.compose import load as load_files
from services.ops.deploy_local import LocalDeployment
from services.ops.observe import wait_drained
from services.ops.supervisor import http_json
from services.runtime.connect import nats_options
from tests.integration.conftest import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
BIN = Path(sys.executable).parent


async def run_and_check(tmp_path: Path, files: list[Path], profiles: tuple[str, ...], strategies: list[str]) -> None:
    deployment = LocalDeployment(files=files, home=tmp_path / "deploy", profiles=profiles)
    assert [n for n in deployment.services if n.startswith("strategy")] == strategies
    env = {k: v for k, v in deployment.services["audit"]["environment"].items() if k.startswith("TRADEFLOW_")}
    expected = run_backtest(("GOOG",), env)   # what the compose file's settings give in one process
    await deployment.start()
    try:
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
    finally:
        codes = await deployment.stop()
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
    import yaml

    docs = [d for m in manifests for d in yaml.safe_load_all(m.read_text()) if d]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    assert set(deployments) >= {"data", "strategy", "quant", "risk", "execution", "audit", "recorder", "dashboard"}
    for name, d in deployments.items():
        [container] = d["spec"]["template"]["spec"]["containers"]
        assert container["args"] == ["run", name]
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert any(e.get("valueFrom", {}).get("secretKeyRef") for e in container["env"]), name
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    for name, d in deployments.items():   # each service reads its own URLs, which the Secret holds
        refs = {e["valueFrom"]["secretKeyRef"]["key"] for c in d["spec"]["template"]["spec"]["containers"]
                for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})}
        assert refs <= set(secret["stringData"]), (name, refs - set(secret["stringData"]))
        assert {f"{name}-nats-url", f"{name}-redis-url"} <= refs and all(r.startswith(f"{name}-") for r in refs), refs
