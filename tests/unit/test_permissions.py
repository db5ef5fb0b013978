"""The NATS permissions, as written: one source (services/runtime/permissions.py) for nats.conf, the Kubernetes
manifest and `tradeflow up`; no service's user names another's consumer, outputs or dead letters."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig

from services import registry
from services.cli import cli
from services.ops.provision import deployment_consumers
from services.runtime.agent import Agent
from services.runtime.config import RuntimeSettings
from services.runtime.permissions import (
    BEGIN,
    COMPOSE_DURABLES,
    END,
    OUTPUTS,
    STATEFUL,
    authorization,
    permissions,
    service_permissions,
    with_authorization,
)
from services.runtime.topology import (
    consumer_drifted,
    consumer_problems,
    pipeline_stream,
    stream_drifted,
    stream_problems,
)

ROOT = Path(__file__).resolve().parents[2]


def test_nats_conf_and_the_kubernetes_manifest_hold_what_the_code_writes():
    conf = (ROOT / "nats.conf").read_text()
    assert with_authorization(conf, COMPOSE_DURABLES) == conf, "nats.conf: run `tradeflow permissions`"
    manifest = yaml.safe_load((ROOT / "deploy" / "k8s" / "nats-authorization.yaml").read_text())
    assert manifest["data"]["authorization.conf"] == authorization(COMPOSE_DURABLES)
    printed = CliRunner().invoke(cli, ["permissions"])
    assert printed.exit_code == 0 and printed.output == authorization(COMPOSE_DURABLES)


def _stateful(component) -> bool:
    return isinstance(component, Agent) and component.options.stateful


def test_the_table_of_services_is_the_registry_s():
    assert set(OUTPUTS) == set(registry.SERVICES)
    assert set(STATEFUL) == {name for name in registry.SERVICES if _stateful(registry.build(name, {}))}


def test_no_service_user_names_another_s_consumer_outputs_or_dead_letters():
    for service in OUTPUTS:
        allowed = service_permissions(service)["publish"]["allow"] + service_permissions(service)["subscribe"]["allow"]
        assert not any(s in ("$JS.API.>", "$JS.ACK.>", ">", "_INBOX.>") for s in allowed), service
        for other in OUTPUTS:
            if other == service:
                continue
            assert not any(f".{other}." in s or s.endswith(f".{other}") or s.startswith(f"dlq.{other}.")
                           or f"{other}-" in s or f"_INBOX_{other}." in s for s in allowed), (service, other)
            assert not set(OUTPUTS[other]) & set(allowed), (service, other)
        assert not any(".CREATE." in s and not s.split(".")[5].endswith("-rebuild") for s in allowed), service
        assert not any(word in s for s in allowed for word in (".PURGE.", ".UPDATE.", ".PAUSE.",
                                                                "STREAM.DELETE", "MSG.DELETE"))
        assert not any(".DELETE." in s and not s.endswith("-rebuild") for s in allowed), service


def test_replicas_each_get_their_own_durable_and_nothing_of_the_single_service_s():
    allowed = service_permissions("strategy", ["strategy-p0of2", "strategy-p1of2"])["publish"]["allow"]
    assert "$JS.ACK.PIPELINE.strategy-p1of2.>" in allowed and "$JS.ACK.PIPELINE.strategy.>" not in allowed
    assert permissions()["operator"] is None
    injector = permissions()["injector"]["publish"]["allow"]
    assert "data_ready.>" in injector and not any("DELETE" in s or "CREATE" in s or "PURGE" in s or
                                                  "PAUSE" in s or s.startswith("$JS.ACK") for s in injector)


def test_a_conf_without_the_markers_is_refused():
    with pytest.raises(ValueError, match="markers"):
        with_authorization("listen: 127.0.0.1:4222\n")
    assert with_authorization(f"a\n{BEGIN}\nold\n{END}\nb\n").startswith(f"a\n{BEGIN}\nauthorization {{")


def test_the_cli_refuses_a_malformed_replica_count():
    for spec in ("strategy", "strategy=0", "strategy=x", "strategy=65", "=2", "nobody=2"):
        result = CliRunner().invoke(cli, ["permissions", "--replicas", spec])
        assert result.exit_code == 2 and "SERVICE=N" in result.output, spec


def test_a_stream_someone_else_configured_is_a_problem_and_an_older_one_of_ours_only_drifted():
    want = pipeline_stream(RuntimeSettings())
    older = StreamConfig(name=want.name, subjects=want.subjects[:-1], retention=want.retention,
                         storage=want.storage, max_age=want.max_age, duplicate_window=want.duplicate_window)
    assert stream_problems(older, want) == [] and stream_drifted(older, want)
    theirs = StreamConfig(name=want.name, subjects=["orders.>", *want.subjects], retention=RetentionPolicy.WORK_QUEUE,
                          storage=StorageType.MEMORY)
    problems = stream_problems(theirs, want)
    assert len(problems) == 3 and all(p.startswith("stream PIPELINE: ") for p in problems)
    assert any("orders.>" in p for p in problems)


def test_a_consumer_with_another_ack_policy_cannot_be_updated():
    [(_, want), *_] = deployment_consumers(RuntimeSettings())
    have = ConsumerConfig(durable_name=want.durable_name, ack_policy=AckPolicy.NONE, deliver_policy=want.deliver_policy,
                          filter_subject=want.filter_subject, ack_wait=want.ack_wait, max_deliver=want.max_deliver,
                          max_ack_pending=want.max_ack_pending, metadata=want.metadata)
    assert consumer_problems("PIPELINE", have, want) and not consumer_drifted(have, want)
    assert not consumer_problems("PIPELINE", want, want) and not consumer_drifted(want, want)


def test_a_deployment_declares_each_durable_and_its_advisories_durable():
    names = [config.durable_name for _, config in deployment_consumers(RuntimeSettings())]
    assert names == [n for d in registry.DURABLES for n in (d, f"{d}-advisories")]
    split = [c.durable_name for _, c in deployment_consumers(RuntimeSettings(), {"strategy": 2}, ["A", "B", "C"])]
    assert "strategy" not in split and {"strategy-p0of2", "strategy-p1of2-advisories"} <= set(split)
    with pytest.raises(Exception, match="cannot run as replicas"):
        deployment_consumers(RuntimeSettings(), {"risk": 2}, ["A", "B"])


@pytest.mark.parametrize("url, says", [("nats://u:secret@127.0.0.1:1", "cannot reach NATS at nats://***@127.0.0.1:1"),
                                       ("::bad", "invalid connect url"), ("x" * 5000, "cannot reach NATS")])
def test_init_against_no_nats_is_one_line_naming_the_setting_without_its_password(url, says):
    result = CliRunner().invoke(cli, ["init"], env={"NATS_URL": url})
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert line.startswith("Error: NATS_URL: ") and says in line and "secret" not in line


def test_the_compose_file_s_redis_users_are_the_code_s():
    from services.runtime.permissions import REDIS_USERS, redis_acl

    compose = yaml.safe_load((ROOT / "deploy" / "compose" / "compose.yaml").read_text())
    args = compose["services"]["redis"]["command"]
    rules, current = [], None
    for arg in args:
        if arg == "--user":
            current = []
            rules.append(current)
        elif arg.startswith("--"):
            current = None
        elif current is not None:
            current.append(arg)
    assert rules[0] == ["default", "off"]
    assert [" ".join(r) for r in rules[1:]] == [redis_acl(u, f"${{TRADEFLOW_REDIS_PASSWORD_{u.upper()}:?required}}")
                                              for u in REDIS_USERS]
    for name, service in compose["services"].items():
        url = (service.get("environment") or {}).get("REDIS_URL")
        if url:   # each service with its own Redis user, strategy's replicas with strategy's
            assert url.startswith(f"redis://{name.split('-')[0]}:"
                                  f"${{TRADEFLOW_REDIS_PASSWORD_{name.split('-')[0].upper()}"), name
