"""What services/runtime/nats_internals.py relies on in nats-py: this fails on an upgrade that changes it."""

import asyncio
import logging
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from services.runtime import nats_internals
from services.runtime.nats_internals import NATS_PY_SERIES, layout_problem, queued, take_queued_first

ROOT = Path(__file__).resolve().parents[2]


def pull_subscription() -> JetStreamContext.PullSubscription:
    """nats-py's own classes, as `pull_subscribe_bind` makes them (a client not connected: no server needed)."""
    nc = NATS()
    return JetStreamContext.PullSubscription(nc.jetstream(), Subscription(nc, id=1, subject="_INBOX.x"), "S", "c",
                                             b"_INBOX.x")


def test_the_installed_nats_py_is_the_series_the_module_was_written_for():
    assert version("nats-py").startswith(NATS_PY_SERIES + "."), (
        f"nats-py {version('nats-py')} installed; nats_internals.py was written for {NATS_PY_SERIES}: check "
        "what it reads of Subscription, then move NATS_PY_SERIES and the pin in pyproject.toml together")


def test_pyproject_pins_nats_py_to_that_series():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(dep for dep in deps if dep.startswith("nats-py"))
    major, minor = NATS_PY_SERIES.split(".")
    assert re.fullmatch(rf"nats-py>={major}\.{minor}(\.\d+)?,<{major}\.{int(minor) + 1}", pin.replace(" ", "")), pin


def test_a_nats_py_pull_subscription_is_laid_out_as_the_fast_path_expects():
    async def go():
        sub = pull_subscription()
        assert layout_problem(sub._sub) is None
        assert take_queued_first(sub) is True
        inner = sub._sub
        msg = Msg(_client=None, subject="a.b", data=b"12345")
        inner._pending_queue.put_nowait(msg)
        inner._pending_size += len(msg.data)
        assert await inner.next_msg(timeout=0.1) is msg          # taken at once, without nats-py's task
        assert inner._pending_size == 0 and inner._pending_queue.empty()
        with pytest.raises(nats.errors.TimeoutError):             # an empty queue: nats-py's own wait and timeout
            await inner.next_msg(timeout=0.01)

    asyncio.run(go())


def test_queued_gives_back_messages_and_drops_status_messages():
    async def go():
        sub = pull_subscription()
        keep = Msg(_client=None, subject="a.b", data=b"x")
        status = Msg(_client=None, subject="_INBOX.x", data=b"", headers={"Status": "408"})
        for msg in (keep, status):
            sub._sub._pending_queue.put_nowait(msg)
            sub._sub._pending_size += len(msg.data)
        assert queued(sub) == [keep]
        assert sub._sub._pending_size == 0 and queued(sub) == []

    asyncio.run(go())


def test_a_subscription_laid_out_otherwise_turns_the_fast_path_off_and_says_so_once(caplog, monkeypatch):
    monkeypatch.setattr(nats_internals, "_said", set())

    class Elsewhere:   # what a nats-py that renamed its queue would give
        _sub = type("Inner", (), {"next_msg": None, "_cb": None, "_conn": None, "_pending_size": 0})()

    with caplog.at_level(logging.WARNING, logger="services.runtime.nats_internals"):
        assert take_queued_first(Elsewhere()) is False
        assert take_queued_first(Elsewhere()) is False
    said = [r for r in caplog.records if "fast path off" in r.getMessage()]
    assert len(said) == 1 and "_pending_queue" in said[0].reason
    assert queued(Elsewhere()) == []


NATS_PY_PARSE = nats_internals._nats_py_parse.__func__ if isinstance(nats_internals._nats_py_parse, staticmethod) \
    else nats_internals._nats_py_parse

HOSTILE_BLOCKS = [
    b"", b"\r\n", b"ce-id: a\r\nce-type: tradeflow.market_bar.v1\r\n\r\n", b"Name:Value\r\n", b"Name:\tValue\r\n",
    b"  padded  :  v  \r\n", b"na me: v\r\n", b"na\tme: v\r\n", b"n\x1cm: v\r\n", b"n\x01m: v\r\n", b"n\x7fm: v\r\n",
    b"\xc3\xa9t\xc3\xa9: v\r\n", b"k: \xff\xfe bad utf8\r\n", b"k: caf\xc3\xa9\r\n",
    b"no colon here\r\n", b":empty name\r\n",
    b"k:\r\n", b"k: a: b: c\r\n", b"dup: 1\r\ndup: 2\r\n", b"k: v\nwith lf\r\n", b"k: v\rcr\r\n", b"k\x0b: v\r\n",
    b"Nats-Msg-Id: x\r\n" * 40, b"k: " + b"v" * 70_000 + b"\r\n",
]


@pytest.mark.parametrize("raw", HOSTILE_BLOCKS, ids=range(len(HOSTILE_BLOCKS)))
def test_the_fast_header_parser_gives_what_nats_py_gives(raw):
    assert nats_internals.parse_header_lines(raw) == NATS_PY_PARSE(raw)


def test_the_fast_header_parser_gives_what_nats_py_gives_on_random_bytes():
    import random
    rng = random.Random(7)
    alphabet = b"ab:: \t\r\n\x00\x1c\x7f\x80\xc3\xa9-_.Z"
    for _ in range(5000):
        raw = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert nats_internals.parse_header_lines(raw) == NATS_PY_PARSE(raw), raw


def test_fast_headers_replaces_nats_py_s_parser_in_place():
    assert nats_internals.fast_headers() is True
    assert NATS.__dict__["_parse_header_lines"].__func__ is nats_internals.parse_header_lines


@pytest.mark.parametrize("reply", [
    "$JS.ACK.PIPELINE.risk.3.1207.45.1733054400123456789.12",                       # v1
    "$JS.ACK.hub.ACCHASH.PIPELINE.risk.3.1207.45.1733054400123456789.12.r4nd0m",   # v2, with a domain
    "$JS.ACK._.ACCHASH.PIPELINE.risk.1.9.9.1733054400000000000.0.x",
])
def test_delivery_reads_what_nats_py_s_metadata_reads(reply):
    md = Msg(_client=None, subject="a.b", reply=reply).metadata
    assert nats_internals.delivery(reply) == (md.sequence.stream, md.num_delivered, md.timestamp)
    assert nats_internals.consumer_sequence(reply) == md.sequence.consumer


@pytest.mark.parametrize("reply", [None, "", "_INBOX.abc", "$JS.ACK.a.b.1.2", "$JS.ACK.a.b.c.1.2.3.4.5",
                                   "$JS.NAK.PIPELINE.risk.3.1207.45.1733054400123456789.12",
                                   "$JS.ACK.PIPELINE.risk.x.1207.45.1733054400123456789.12"])
def test_delivery_refuses_what_is_not_a_jetstream_reply(reply):
    with pytest.raises(ValueError):
        nats_internals.delivery(reply)
    with pytest.raises(ValueError):
        nats_internals.consumer_sequence(reply)
