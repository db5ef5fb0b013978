"""The stage of a subject: one answer for the runtime's metrics, the store, the counts and the simulation."""

from __future__ import annotations

import pytest

from contracts.subjects import PIPELINE_SUBJECTS, STAGES, parse_subject, stage_of


@pytest.mark.parametrize("subject, stage, by_origin", [
    ("data_ready.GOOG", "data_ready", "data_ready"),
    ("signals_ready.BRK.B", "signals_ready", "signals_ready"),
    ("executed_ready.EURUSD", "executed_ready", "executed_ready"),
    ("rejected.quant.GOOG", "rejected", "rejected.quant"),
    ("rejected.risk.A_B", "rejected", "rejected.risk"),
    ("dlq.strategy.data_ready.GOOG", "dlq", "dlq.strategy"),
    ("dlq.execution.approved_ready.BRK.B", "dlq", "dlq.execution"),
    ("rejected", "rejected", "rejected"),
    ("data_ready.>", "data_ready", "data_ready"),
    (">", ">", ">"),
])
def test_the_stage_of_a_subject(subject: str, stage: str, by_origin: str):
    assert stage_of(subject) == stage
    assert stage_of(subject, by_origin=True) == by_origin


@pytest.mark.parametrize("subject", ["data_ready.GOOG", "approved_ready.BRK.B", "rejected.quant.GOOG",
                                     "rejected.risk.A_B", "validated_ready.X"])
def test_it_is_the_stage_parse_subject_names(subject: str):
    assert stage_of(subject) == parse_subject(subject)[0]


def test_every_stream_subject_pattern_is_a_stage():
    assert [stage_of(p) for p in PIPELINE_SUBJECTS] == list(STAGES)
