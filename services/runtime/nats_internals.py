"""Every use of nats-py's private attributes, in one place.

nats-py has no public API for three things the worker needs:

- taking a pull subscription's already-queued messages without the cost of `next_msg` (a task, a
  timer and a uuid per message, about half of what a message cost a service; nats-py PRs #752 and
  #862 address it upstream): `take_queued_first`;
- giving back, at shutdown, the messages a fetch left in the subscription's queue: `queued`;
- parsing header blocks faster: nats-py parses every message's headers in Python, one generator per
  header name to look for whitespace in it (a tenth of what a message costs a service carrying the
  CloudEvents envelope); `fast_headers` puts in an equivalent parser that checks a name with one
  regular expression (tests/unit/test_nats_internals.py holds it to nats-py's on hostile input).

`delivery` is not private: it reads a JetStream message's reply subject (ADR-15's layout, which
nats-py's `Msg.metadata` parses into four frozen dataclasses and a datetime) for the three figures
the worker needs.

The first two read the layout of nats-py's `Subscription` (`_pending_queue`, `_pending_size`, `_cb`,
`_conn`), the third replaces `Client._parse_header_lines`: what NATS_PY_SERIES (pinned in
pyproject.toml) lays out. Should a nats-py lay it out otherwise, the fast path turns itself off and
says so once in the log; `queued` then finds nothing, and JetStream redelivers those messages after
ack_wait instead. tests/unit/test_nats_internals.py
fails on a nats-py whose layout or series differs, before anything runs slower unnoticed.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone
from importlib.metadata import version
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

log = logging.getLogger(__name__)

NATS_PY_SERIES = "2.16"   # the nats-py minor version this module was written against (pyproject.toml pins it)
REQUIRED = ("_pending_queue", "_pending_size", "_cb", "_conn", "next_msg")   # what a Subscription must have

_said: set[str] = set()   # reasons already logged: each is said once per process


def layout_problem(inner: object) -> str | None:
    """Why `inner` (a nats-py Subscription) is not laid out as this module expects; None if it is."""
    if inner is None:
        return "the pull subscription has no inner subscription"
    missing = [name for name in REQUIRED if not hasattr(inner, name)]
    if missing:
        return f"nats-py {version('nats-py')} has no Subscription.{', .'.join(missing)}"
    if getattr(inner, "_cb", None) is not None:
        return "the subscription has a callback (messages are not queued)"
    return None


def _off(reason: str) -> None:
    if reason not in _said:
        _said.add(reason)
        log.warning("nats-py fast path off: fetch takes queued messages through next_msg", extra={"reason": reason})


def take_queued_first(sub) -> bool:
    """Make `sub.fetch` take messages already queued on the pull subscription at once, with the same
    bookkeeping as nats-py's `next_msg`; an empty queue goes to nats-py's own `next_msg`, timeout and
    all. True if installed; False (said once in the log) if this nats-py lays its subscription out otherwise."""
    inner: Any = getattr(sub, "_sub", None)   # nats-py's Subscription, laid out as layout_problem checks
    reason = layout_problem(inner)
    if reason is not None:
        _off(reason)
        return False
    queue = inner._pending_queue
    wait_for_next = inner.next_msg

    async def next_msg(timeout: float | None = 1.0) -> Msg:
        if queue.empty() or inner._conn.is_closed:
            return await wait_for_next(timeout)
        msg = queue.get_nowait()
        inner._pending_size -= len(msg.data)
        queue.task_done()
        return msg

    inner.next_msg = next_msg
    return True


def queued(sub) -> list[Msg]:
    """Take the messages a fetch left on the subscription's queue (status messages dropped): at shutdown,
    to nak them rather than let them wait out ack_wait. Empty if nats-py lays its subscription out otherwise."""
    inner: Any = getattr(sub, "_sub", None)
    if layout_problem(inner) is not None:
        return []
    queue = inner._pending_queue
    taken = []
    while not queue.empty():
        msg = queue.get_nowait()
        inner._pending_size -= len(msg.data)
        if not (msg.headers and msg.headers.get("Status")):
            taken.append(msg)
    return taken


# A header name nats-py keeps as it is: ASCII, no whitespace (str.isspace: \t-\r, \x1c-\x1f, space), no colon.
_PLAIN_NAME = re.compile(rb"[\x00-\x08\x0e-\x1b!-9;-\x7f]+")
_nats_py_parse = Client.__dict__.get("_parse_header_lines")


def parse_header_lines(raw: bytes) -> dict[str, str]:
    """nats-py's `Client._parse_header_lines`, the same result for every input, with a plain name taken at once."""
    out: dict[str, str] = {}
    plain = _PLAIN_NAME.fullmatch
    for line in raw.split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        if plain(name):
            key = name.decode("ascii")
        else:   # surrounding whitespace, whitespace inside, or not ASCII: nats-py's own rules
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if any(c.isspace() for c in key):
                continue
        out[key] = value.strip().decode("utf-8", "replace")
    return out


def fast_headers() -> bool:
    """Put `parse_header_lines` in place of nats-py's parser (once per process); False, said once, if this
    nats-py has no `Client._parse_header_lines` to replace."""
    if not isinstance(_nats_py_parse, staticmethod):
        _off("nats-py has no Client._parse_header_lines")
        return False
    Client._parse_header_lines = staticmethod(parse_header_lines)   # type: ignore[method-assign]  # the point
    return True


# $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>, or with a domain and an account hash
_V1_TOKENS, _V2_MIN_TOKENS = 9, 11


def _ack_tokens(reply: str | None) -> tuple[list[str], int]:
    """The reply subject's tokens and where the delivery count is among them; ValueError if not JetStream's."""
    tokens = (reply or "").split(".")
    if len(tokens) < _V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        raise ValueError(f"not a JetStream message: reply {str(reply)[:80]!r}")
    at = 4 if len(tokens) == _V1_TOKENS else 6 if len(tokens) >= _V2_MIN_TOKENS else None
    if at is None:
        raise ValueError(f"not a JetStream message: reply {str(reply)[:80]!r}")
    return tokens, at


def delivery(reply: str | None) -> tuple[int, int, datetime]:
    """(stream sequence, delivery count, stream timestamp) of a JetStream message, from its reply subject;
    ValueError if it is not one."""
    tokens, at = _ack_tokens(reply)
    return (int(tokens[at + 1]), int(tokens[at]),
            datetime.fromtimestamp(int(tokens[at + 3]) / 1e9, timezone.utc))


def consumer_sequence(reply: str | None) -> int:
    """The consumer's number for this delivery (it numbers every delivery it makes, redeliveries too, one
    after the other), from the reply subject; ValueError if it is not a JetStream message."""
    tokens, at = _ack_tokens(reply)
    _delivered, _stream_seq, number = (int(token) for token in tokens[at:at + 3])   # refused as delivery() refuses
    return number
