"""Prometheus metrics every service exports: its own, named tradeflow_*, and the standard
process_* and python_* of prometheus-client's default collectors, under their usual names.

Labels are the service and the stage (the subject's first token), not the full
subject: a subject per symbol would make one time series per instrument. The standard
metrics carry no service label; `tradeflow_build_info{service,version,python,nats_py}`
(always 1) names the service of a scrape target, to join them on (job, instance).
Latency quantiles are the histograms' (`histogram_quantile` in PromQL): nothing here
exports a quantile computed in the process.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from services.runtime.build import build_labels


def quantile(ordered: Sequence[float], q: float) -> float:
    """The `q` quantile (0 to 1) of sorted, non-empty samples: the value at rank floor(q * n), the last at most."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Metrics:
    """One registry per service process."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.service = service
        # the default registry's standard collectors, in ours: process_cpu_seconds_total,
        # process_resident_memory_bytes, process_open_fds, process_start_time_seconds, ..., python_info, python_gc_*
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge(
            "tradeflow_build_info", "Always 1: the service and what it runs (tradeflow, Python, nats-py versions)",
            ["service", "version", "python", "nats_py"], registry=r
        )
        self.build_info.labels(service=service, **build_labels()).set(1)
        self.messages_in = Counter(
            "tradeflow_messages_in", "Messages received", ["service", "stage"], registry=r
        )
        self.messages_out = Counter(
            "tradeflow_messages_out", "Messages published (PubAck received)", ["service", "stage"], registry=r
        )
        self.messages_failed = Counter(
            "tradeflow_messages_failed", "Messages that failed, by reason", ["service", "stage", "reason"], registry=r
        )
        self.duplicates = Counter(
            "tradeflow_duplicates_skipped", "Redelivered inputs found in the dedup registry", ["service"], registry=r
        )
        self.dead_letters = Counter(
            "tradeflow_dead_letters", "Messages sent to the DLQ", ["service", "reason"], registry=r
        )
        self.processing = Histogram(
            "tradeflow_processing_seconds",
            "Decode to ack, per message",
            ["service", "stage"],
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.batch_size = Histogram(
            "tradeflow_batch_size", "Messages per fetched batch", ["service"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r,
        )
        self.loop_lag = Histogram(
            "tradeflow_event_loop_lag_seconds",
            "How late the event loop ran a timer",
            ["service"],
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "tradeflow_event_loop_lag_max_seconds", "Largest event-loop lag in the last window", ["service"], registry=r
        )
        self.offloop = Histogram(
            "tradeflow_offloop_seconds", "Off-loop work (process or thread pool), queueing included, by operation",
            ["service", "pool", "op"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10), registry=r,
        )
        self.ready = Gauge("tradeflow_ready", "1 when the service can do its work", ["service"], registry=r)
        self.cache_requests = Counter(
            "tradeflow_cache_requests", "Cache keys asked for or stored, by result (hit, miss, set, error)",
            ["service", "kind", "result"], registry=r
        )
        self.consumer_pending = Gauge(
            "tradeflow_consumer_pending",
            "Messages in the stream not yet delivered to this service's consumer (its lag)",
            ["service"], registry=r
        )
        self.consumer_ack_pending = Gauge(
            "tradeflow_consumer_ack_pending", "Messages delivered to this service and not yet acknowledged",
            ["service"], registry=r
        )
        self.oldest_waiting = Gauge(
            "tradeflow_oldest_waiting_seconds",
            "How long the oldest event this service has not processed has waited (0: nothing waits)",
            ["service"], registry=r
        )
        self.journey_overdue = Gauge(
            "tradeflow_journey_overdue",
            "1 when this service's oldest waiting event has waited longer than TRADEFLOW_JOURNEY_TIMEOUT",
            ["service"], registry=r
        )
        self.data_polls = Counter(
            "tradeflow_data_polls", "Symbols polled from the data provider, by tier and outcome (ok, error)",
            ["service", "tier", "outcome"], registry=r
        )
        self.data_poll_seconds = Histogram(
            "tradeflow_data_poll_seconds", "One polling round over a tier's symbols, publishing included",
            ["service", "tier"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r,
        )
        self.rebuilt_events = Counter(
            "tradeflow_state_rebuild_events", "Events folded into state at start-up", ["service"], registry=r
        )
