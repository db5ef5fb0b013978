"""A simulation written down as the recorder would have recorded the live run it predicts.

For what-if's tests and bench: every event of a `simulate` run with its id, subject, exact
JSON body, envelope headers, causation and trace (a journey's trace comes from its bar), the
bars first in the stream, as when the data service runs ahead of the agents.
"""

from __future__ import annotations

from datetime import datetime, timezone

from contracts.codec import ce_type_of, encode
from contracts.envelope import Envelope, headers_for, trace_id_for
from contracts.events import BarReceived
from contracts.subjects import stage_of, subject_for
from replay.store import StoredEvent
from services.offline.simulate import Simulation


def as_recorded(sim: Simulation, *, source: str = "simulation",
                recorded_at: datetime | None = None) -> list[StoredEvent]:
    """Every event of `sim` as a StoredEvent, in the stream order a live run would give it."""
    recorded_at = recorded_at or datetime.now(timezone.utc)
    traces: dict[str, str] = {}
    for event_id, _ in sim.events:  # causes come before their outputs
        cause = sim.causes.get(event_id)
        traces[event_id] = trace_id_for(event_id) if cause is None else traces[cause]
    ordered = sorted(sim.events, key=lambda item: not isinstance(item[1], BarReceived))
    rows = []
    for seq, (event_id, event) in enumerate(ordered, 1):
        subject = subject_for(event)
        env = Envelope(id=event_id, type=ce_type_of(event), source=source, time=event.ts, subject=subject,
                       trace_id=traces[event_id], causation_id=sim.causes.get(event_id), sequence=seq)
        rows.append(StoredEvent(id=event_id, type=env.type, subject=subject, stage=stage_of(subject),
                                symbol=event.symbol, source=env.source, time=env.time, event_ts=event.ts,
                                trace_id=env.trace_id, causation_id=env.causation_id, stream_seq=seq,
                                headers=headers_for(env), body=encode(event), recorded_at=recorded_at))
    return rows
