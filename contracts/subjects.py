"""Subject names, which stage owns which event type, and ce-type names."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import msgspec

from contracts.errors import UnknownSubject
from contracts.events import (
    BarReceived,
    Event,
    OrderApproved,
    OrderFilled,
    SignalGenerated,
    SignalRejected,
    SignalValidated,
)

DATA_READY = "data_ready"
SIGNALS_READY = "signals_ready"
VALIDATED_READY = "validated_ready"
APPROVED_READY = "approved_ready"
EXECUTED_READY = "executed_ready"
REJECTED = "rejected"
DLQ = "dlq"

PIPELINE_STREAM = "PIPELINE"
DLQ_STREAM = "DLQ"
ADVISORY_STREAM = "ADVISORIES"   # JetStream's advisories of what PIPELINE's consumers gave up on

# stage prefix -> (event type, ce-type)
STAGES: dict[str, tuple[type[msgspec.Struct], str]] = {
    DATA_READY: (BarReceived, "tradeflow.market_bar.v1"),
    SIGNALS_READY: (SignalGenerated, "tradeflow.signal.v1"),
    VALIDATED_READY: (SignalValidated, "tradeflow.validated_signal.v1"),
    APPROVED_READY: (OrderApproved, "tradeflow.approved_order.v1"),
    EXECUTED_READY: (OrderFilled, "tradeflow.fill.v1"),
    REJECTED: (SignalRejected, "tradeflow.rejection.v1"),
}
CE_TYPES: dict[type[msgspec.Struct], str] = {cls: ce for cls, ce in STAGES.values()}
PIPELINE_SUBJECTS = [f"{stage}.>" for stage in STAGES]

REJECTING_STAGES = ("quant", "risk")
SYMBOL_RE = re.compile(r"[A-Z0-9._-]{1,32}")


def subject_for(event: Event) -> str:
    """The subject an event is published on: `<stage>.<SYM>` or `rejected.<stage>.<SYM>`."""
    if isinstance(event, SignalRejected):
        return f"{REJECTED}.{event.stage}.{event.symbol}"
    for stage, (cls, _) in STAGES.items():
        if type(event) is cls:
            return f"{stage}.{event.symbol}"
    raise TypeError(f"not a wire event: {type(event).__name__}")


def parse_subject(subject: str) -> tuple[str, str]:
    """Split a pipeline subject into (stage, symbol); UnknownSubject if no stage owns it."""
    stage, _, rest = subject.partition(".")
    if stage not in STAGES:
        raise UnknownSubject(f"subject {subject!r} belongs to no pipeline stage")
    if stage == REJECTED:
        rejecting, _, rest = rest.partition(".")
        if rejecting not in REJECTING_STAGES:
            raise UnknownSubject(f"subject {subject!r}: rejections come from {', '.join(REJECTING_STAGES)}")
    if not SYMBOL_RE.fullmatch(rest):
        raise UnknownSubject(f"subject {subject!r} has no valid symbol (upper case [A-Z0-9._-])")
    return stage, rest


def stage_of(subject: str, *, by_origin: bool = False) -> str:
    """The stage a subject belongs to: its first token, a key of STAGES (`data_ready`, ..., `rejected`) or
    `dlq`, as `parse_subject` has it. With `by_origin`, rejections and dead letters are told apart by who
    rejected or dead-lettered them (`rejected.quant`, `dlq.strategy`): how counts per stage are kept."""
    stage, _, rest = subject.partition(".")
    if by_origin and rest and stage in (REJECTED, DLQ):
        return f"{stage}.{rest.partition('.')[0]}"
    return stage


def dlq_subject(service: str, original: str) -> str:
    """Where `service` dead-letters a message that came in on `original`."""
    return f"{DLQ}.{service}.{original}"


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether `subject` matches the NATS pattern (`*` one token, `>` one or more at the end)."""
    tokens, parts = pattern.split("."), subject.split(".")
    for i, token in enumerate(tokens):
        if token == ">":
            return len(parts) > i
        if i >= len(parts) or (token != "*" and token != parts[i]):
            return False
    return len(parts) == len(tokens)


def matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A test of whether a subject matches any of `patterns`; a set lookup when each is `<stage>.>`."""
    stages = {p[:-2] for p in patterns if p.endswith(".>") and p.count(".") == 1}
    if len(stages) == len(patterns):
        return lambda subject: (part := subject.partition("."))[0] in stages and bool(part[1])
    return lambda subject: any(subject_matches(pattern, subject) for pattern in patterns)
