"""Which durables nats-server filters, what their metadata says each service takes, and the subject test
the worker uses to pass over the rest."""

from __future__ import annotations

import asyncio
import dataclasses
import random

import pytest

from contracts.subjects import PIPELINE_SUBJECTS, STAGES, matcher, subject_matches
from services import registry
from services.runtime.config import RuntimeSettings
from services.runtime.partition import Partition
from services.runtime.topology import consumed, consumer_config, consumer_drifted, stream_filters


def filters_of(name: str, consumes) -> list[str]:
    config = consumer_config(name, list(consumes), RuntimeSettings())
    return config.filter_subjects or ([config.filter_subject] if config.filter_subject else [])


def test_every_agent_of_several_stages_with_bars_has_an_unfiltered_durable_and_the_others_keep_their_filter():
    durables = {name: filters_of(name, registry.build(name).consumes) for name in registry.DURABLES}
    assert durables == {"strategy": ["data_ready.>"], "quant": ["signals_ready.>"], "risk": [], "execution": [],
                        "audit": [], "recorder": []}


def test_a_partitioned_replica_keeps_the_filters_that_name_its_symbols():
    share = Partition.parse("0/2", ["AAA", "BBB", "CCC"])
    narrowed = share.filters(registry.build("strategy").consumes)
    assert stream_filters(list(narrowed)) == list(narrowed) and narrowed


def test_the_metadata_names_what_the_service_takes_whatever_the_filters():
    for name in registry.DURABLES:
        consumes = list(registry.build(name).consumes)
        assert consumed(consumer_config(name, consumes, RuntimeSettings())) == consumes


def test_a_durable_made_before_the_metadata_is_read_by_its_filters_and_updated():
    from nats.js.api import ConsumerConfig

    old = ConsumerConfig(durable_name="quant", filter_subject="signals_ready.>", max_ack_pending=4096,
                         ack_wait=30, max_deliver=8)
    assert consumed(old) == ["signals_ready.>"]
    assert consumed(ConsumerConfig(durable_name="x")) == [">"]
    want = consumer_config("quant", ["signals_ready.>"], RuntimeSettings())
    assert consumer_drifted(old, want)
    as_the_server_says = dataclasses.replace(want, metadata={**want.metadata, "_nats.ver": "2.15.0"})
    assert not consumer_drifted(as_the_server_says, want)   # the server's own metadata is not a drift


def random_subject(rng: random.Random) -> str:
    tokens = [rng.choice([*STAGES, "dlq", "x", ""])] + [rng.choice(["S", "AAPL", "*", ">", "a.b"])
                                                       for _ in range(rng.randint(0, 3))]
    return ".".join(tokens)


@pytest.mark.parametrize("patterns", [PIPELINE_SUBJECTS, ["data_ready.>", "executed_ready.>"], ["signals_ready.>"],
                                      ["data_ready.AAPL", "data_ready.S"], ["data_ready.*", "rejected.>"]])
def test_the_subject_test_agrees_with_nats_matching(patterns):
    takes, rng = matcher(patterns), random.Random(7)
    for subject in [random_subject(rng) for _ in range(3000)] + ["data_ready", "data_ready.", "data_ready.S.T"]:
        assert takes(subject) == any(subject_matches(p, subject) for p in patterns), subject


def test_init_asks_again_while_a_cluster_is_too_small_to_place_replicas_and_not_for_a_real_refusal():
    from nats.js.errors import BadRequestError

    from services.ops.provision import _not_yet

    assert _not_yet(BadRequestError(code=400, err_code=10005, description="no suitable peers for placement"))
    assert not _not_yet(BadRequestError(code=400, err_code=10058, description="stream name already in use"))
    assert _not_yet(asyncio.TimeoutError())
