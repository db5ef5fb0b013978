"""Prometheus: every service's /metrics parses, names are tradeflow_* beside the standard process_* and
python_*, no quantile is a Gauge's, and deploy/'s scrape config and Grafana dashboard ask only for metrics the
services export."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from services.registry import SERVICES
from tests.integration.conftest import wait_for
from tests.integration.test_cli_and_http import BAR

pytestmark = pytest.mark.integration
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
# what the README documents as every service's metrics
DOCUMENTED = {"tradeflow_messages_in", "tradeflow_messages_out", "tradeflow_messages_failed", "tradeflow_dead_letters",
              "tradeflow_duplicates_skipped", "tradeflow_processing_seconds", "tradeflow_batch_size",
              "tradeflow_event_loop_lag_seconds", "tradeflow_event_loop_lag_max_seconds", "tradeflow_offloop_seconds",
              "tradeflow_cache_requests", "tradeflow_consumer_pending", "tradeflow_consumer_ack_pending",
              "tradeflow_ready", "tradeflow_state_rebuild_events", "tradeflow_build_info", "process_cpu_seconds",
              "process_resident_memory_bytes", "process_open_fds", "process_start_time_seconds", "python_info"}
HISTOGRAMS = {"tradeflow_processing_seconds", "tradeflow_batch_size", "tradeflow_event_loop_lag_seconds",
              "tradeflow_offloop_seconds"}


async def test_metrics_parse_are_named_consistently_and_cover_the_grafana_dashboard(make_stack):
    stack, nc = await make_stack()
    await nc.publish("data_ready.AAPL", json.dumps(BAR).encode())
    await nc.flush()
    parsed: dict[str, dict[str, Metric]] = {}

    async def scraped() -> bool:
        async with aiohttp.ClientSession() as s:
            for name in SERVICES:
                async with s.get(f"http://127.0.0.1:{stack.http_port(name)}/metrics") as r:
                    assert r.status == 200 and r.content_type == "text/plain"
                    parsed[name] = {f.name: f for f in text_string_to_metric_families(await r.text())}
        return "tradeflow_messages_in" in parsed["strategy"]

    await wait_for(scraped, what="metrics with the bar counted")
    exported = {name: set(families) for name, families in parsed.items()}
    for name, families in parsed.items():
        assert all(f.startswith(("tradeflow_", "process_", "python_")) for f in families), (name, sorted(families))
        assert DOCUMENTED <= set(families), (name, sorted(DOCUMENTED - set(families)))
        samples = {s.name for f in families.values() for s in f.samples}
        assert "process_cpu_seconds_total" in samples and not any(n.startswith("tradeflow_process_") for n in samples)
        [build] = families["tradeflow_build_info"].samples
        assert build.value == 1 and build.labels["service"] == name, build
        assert set(build.labels) == {"service", "version", "python", "nats_py"} and all(build.labels.values())
        assert all(families[h].type == "histogram" for h in HISTOGRAMS), name
        assert not [f.name for f in families.values() if f.type != "summary"
                    for s in f.samples if "quantile" in s.labels], name
    everything = set().union(*exported.values())
    dashboard = json.loads((DEPLOY / "grafana" / "tradeflow.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 12
    asked = {re.sub(r"_(bucket|total|sum|count)$", "", m)
             for e in exprs for m in re.findall(r"\b(?:tradeflow|process|python)_[a-z_]+", e)}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "tradeflow_build_info"} <= asked
    asked -= {"tradeflow_data_polls", "tradeflow_data_poll_seconds"}   # the data service's, once it polls
    assert asked <= everything, sorted(asked - everything)
    # the alert rules ask for metrics the consuming services export
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerted = {m for group in rules["groups"] for rule in group["rules"]
               for m in re.findall(r"\btradeflow_[a-z_]+", rule["expr"])}
    assert alerted == {"tradeflow_oldest_waiting_seconds", "tradeflow_journey_overdue"}
    assert all(alerted <= exported[name] for name in ("strategy", "quant", "risk", "execution", "audit", "recorder"))
    assert {p["id"] for p in dashboard["panels"]} == set(range(1, len(dashboard["panels"]) + 1))
    # `tradeflow up` and Stack write the scrape targets Prometheus' file_sd reads
    targets = orjson.loads((stack.home / "prometheus-targets.json").read_bytes())
    assert {t["labels"]["process"]: t["targets"][0] for t in targets} == {
        name: f"127.0.0.1:{stack.http_port(name)}" for name in SERVICES}


def test_the_prometheus_config_scrapes_every_service():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"] and (DEPLOY / "prometheus" / "alerts.yml").is_file()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["tradeflow-local"]["file_sd_configs"][0]["files"][0].endswith("prometheus-targets.json")
    static = jobs["tradeflow"]["static_configs"][0]["targets"]
    assert {t.split(":")[0] for t in static} >= set(SERVICES)
