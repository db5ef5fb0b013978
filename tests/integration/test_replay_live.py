"""`tradeflow replay` into a live pipeline: a window replayed twice yields its outputs once, marked as a replay."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import datetime, timezone

import pytest

from contracts import envelope as ce
from contracts.codec import decode, encode
from contracts.envelope import Envelope, headers_for
from contracts.subjects import PIPELINE_STREAM, stage_of, subject_for
from replay.store import StoredEvent, open_store
from services import registry
from services.data.service import DataSettings, bar_id, load_bars
from services.offline.simulate import simulate
from services.ops import observe
from tests.integration.conftest import stream_messages, wait_for
from tests.unit.test_backtesting_parity import PARITY_ENV

pytestmark = pytest.mark.integration

WINDOW = ("--since", "2010-01-01", "--until", "2011-01-01")


async def recorded_goog(path) -> list:
    """A store holding GOOG's bars as the data service records them; the bars."""
    bars = load_bars(DataSettings(source="csv", files=["GOOG"]))
    now = datetime.now(timezone.utc)
    rows = []
    for seq, bar in enumerate(bars, 1):
        env = Envelope(id=bar_id(bar), type="tradeflow.market_bar.v1", source="data", time=now,
                       subject=subject_for(bar), trace_id=ce.trace_id_for(bar_id(bar)), sequence=seq)
        body, headers = encode(bar), headers_for(env)
        rows.append(StoredEvent.of(decode(env.subject, body, headers, sequence=seq), recorded_at=now))
    async with open_store(path) as store:
        await store.append(rows)
    return bars


def tradeflow(*args: str, nats_url: str, store) -> subprocess.CompletedProcess:
    env = {**os.environ, "NATS_URL": nats_url, "TRADEFLOW_STORE": str(store)}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


async def test_a_window_replayed_twice_yields_its_outputs_once(make_stack, tmp_path):
    store = tmp_path / "recorded.sqlite"
    bars = await recorded_goog(store)
    in_window = [b for b in bars if b.ts.year == 2010]
    expected = simulate(in_window, **{n: registry.build(n, PARITY_ENV) for n in registry.CONSUMERS}).counts
    stack, nc = await make_stack(env=PARITY_ENV)   # a fresh deployment, its data service idle

    first = tradeflow("replay", *WINDOW, nats_url=stack.nats_url, store=store)
    assert first.returncode == 0, first.stderr
    assert f"{len(in_window)} events into PIPELINE: {len(in_window)} published, 0 already there" in first.stdout
    await observe.wait_drained(nc.jsm(), registry.DURABLES, timeout=120)
    after_first = await stream_messages(nc, PIPELINE_STREAM)

    second = tradeflow("replay", *WINDOW, nats_url=stack.nats_url, store=store)
    assert second.returncode == 0, second.stderr
    assert f"0 published, {len(in_window)} already there" in second.stdout
    await observe.wait_drained(nc.jsm(), registry.DURABLES, timeout=120)
    after_second = await stream_messages(nc, PIPELINE_STREAM)

    assert [m.headers["ce-id"] for m in after_second] == [m.headers["ce-id"] for m in after_first]
    stages = Counter(stage_of(m.subject) for m in after_second)
    assert stages["data_ready"] == len(in_window)
    for stage in ("signals_ready", "validated_ready", "approved_ready", "executed_ready"):
        assert stages[stage] == expected[stage] > 0, stage
    run = {m.headers[ce.REPLAY_RUN] for m in after_second}
    assert len(run) == 1, "every replayed event and every output of one says which replay it belongs to"
    originals = {bar_id(b) for b in in_window}
    assert {m.headers[ce.REPLAY_OF] for m in after_second if m.subject.startswith("data_ready")} == originals
    assert not originals & {m.headers["ce-id"] for m in after_second}, "replayed events have new ids"
    assert await observe.dead_letters(nc.jsm()) == 0

    again = tradeflow("replay", *WINDOW, "--run-id", "another-run", "--isolate", "look", nats_url=stack.nats_url,
                      store=store)
    assert again.returncode == 0 and f"{len(in_window)} published" in again.stdout, again.stderr
    assert len(await stream_messages(nc, PIPELINE_STREAM)) == len(after_second), "isolated replay reached live"
    assert len(await stream_messages(nc, "REPLAY", "replay.look.data_ready.GOOG")) == len(in_window)

    for name in registry.CONSUMERS:   # the pipeline stops; only the recorder still listens
        await stack.supervisor.stop(name)

    async def idle() -> bool:
        infos = [await nc.jsm().consumer_info(PIPELINE_STREAM, n) for n in registry.CONSUMERS]
        return all(info.num_waiting == 0 for info in infos)

    await wait_for(idle, timeout=30, what="data_ready consumers to go idle")
    refused = tradeflow("replay", *WINDOW, "--run-id", "third", nats_url=stack.nats_url, store=store)
    assert refused.returncode == 1 and "no service is consuming data_ready" in refused.stderr, refused.stderr
    nowhere = tradeflow("replay", *WINDOW, nats_url="nats://127.0.0.1:1", store=store)
    assert nowhere.returncode == 1 and "cannot reach NATS" in nowhere.stderr
