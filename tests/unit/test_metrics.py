"""A service's registry: the standard process_* and python_* metrics under their usual names, its build info,
and no quantile made in the process posing as a Summary."""

from __future__ import annotations

import platform
from importlib import metadata

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.runtime.build import version
from services.runtime.looplag import LoopLag
from services.runtime.metrics import Metrics


def _families(metrics: Metrics) -> dict:
    return {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}


def test_the_standard_process_and_python_metrics_are_exported_under_their_usual_names():
    families = _families(Metrics("strategy"))
    samples = {s.name for f in families.values() for s in f.samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
            "process_open_fds", "process_max_fds", "process_start_time_seconds", "python_info"} <= samples
    if platform.python_implementation() == "CPython":
        assert {"python_gc_objects_collected_total", "python_gc_collections_total"} <= samples
    assert not [name for name in samples if name.startswith("tradeflow_process_")]
    assert all(name.startswith(("tradeflow_", "process_", "python_")) for name in families), sorted(families)


def test_build_info_is_one_sample_of_1_with_the_service_and_what_it_runs():
    [sample] = _families(Metrics("risk"))["tradeflow_build_info"].samples
    assert sample.value == 1
    assert sample.labels == {"service": "risk", "version": version(), "nats_py": metadata.version("nats-py"),
                             "python": f"{platform.python_implementation()} {platform.python_version()}"}


def test_no_metric_has_a_quantile_label_but_a_summary():
    metrics = Metrics("audit")
    lag = LoopLag(metrics)
    lag.samples.extend([0.001, 0.002, 0.5])
    lag._publish()
    families = _families(metrics)
    assert families["tradeflow_event_loop_lag_max_seconds"].samples[0].value == 0.5
    assert "tradeflow_event_loop_lag_quantile_seconds" not in families
    assert not [f.name for f in families.values() if f.type != "summary"
                for s in f.samples if "quantile" in s.labels]
