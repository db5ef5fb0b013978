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
`_conn`), the third replaces `Client._parse_header_lines`: what NATS_PY_SERIES (pinned in pyproject.toml)
lays out. Should a nats-py lay it out
otherwise, the fast path turns itself off and says so once in the log; `queued` then finds nothing,
and JetStream redelivers those messages after ack_wait instead. tests/unit/test_nats_internals.py
fails on a nats-py whose layout or series differs, before anything runs slower unnoticed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from datetime import datetime, timezone
from importlib.metadata import version

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError

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
    inner: Subscription | None = getattr(sub, "_sub", None)
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
    inner = getattr(sub, "_sub", None)
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
    Client._parse_header_lines = staticmethod(parse_header_lines)
    return True


_V1_TOKENS, _V2_MIN_TOKENS = 9, 11   # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>, or with domain and hash


def delivery(reply: str | None) -> tuple[int, int, datetime]:
    """(stream sequence, delivery count, stream timestamp) of a JetStream message, from its reply subject;
    ValueError if it is not one."""
    tokens = (reply or "").split(".")
    if len(tokens) < _V1_TOKENS or tokens[0] != "$JS" or tokens[1] != "ACK":
        raise ValueError(f"not a JetStream message: reply {str(reply)[:80]!r}")
    at = 4 if len(tokens) == _V1_TOKENS else 6 if len(tokens) >= _V2_MIN_TOKENS else None
    if at is None:
        raise ValueError(f"not a JetStream message: reply {str(reply)[:80]!r}")
    return (int(tokens[at + 1]), int(tokens[at]),
            datetime.fromtimestamp(int(tokens[at + 3]) / 1e9, timezone.utc))


class Puller:
    """Keeps pull requests standing on a consumer and takes messages as they come: `fetch` without a request per batch.

    nats-py's `fetch` sends a pull request per call (a no-wait probe that the server holds as a lingering
    request), and the server answers each with a status when it ends. At light load that is a request, a
    status and two JSON documents per message, for the client and for nats-server alike. Here, as nats.go's
    `Consume` does, requests for `batch` messages each stand for `expires` seconds with an idle heartbeat;
    another is sent when fewer than half a batch are still asked for, so a message goes out the moment it
    is stored. A request ended early (408 on expiry, 409 on a leadership change), with its pending count,
    lowers what is asked for; a reconnection or a silence of two heartbeats means the server has forgotten
    them: everything is asked for again. `fetch(batch, timeout)` has nats-py's meaning: the messages queued
    (up to `batch`), waiting up to `timeout` for the first; nats.errors.TimeoutError if none came.

    Private to nats-py: the subscription's next-message subject (`_nms`), its inbox (`_deliver`), its
    client (`_nc`) and queue (see `layout_problem`). `pull(sub)` gives None if this nats-py has none of them.
    """

    def __init__(self, sub, *, expires: float = 5.0) -> None:
        self.sub, self.nc, self.inner = sub, sub._nc, sub._sub
        self.queue = self.inner._pending_queue
        self.next_subject, self.inbox = sub._nms, sub._deliver
        self.expires, self.heartbeat = expires, min(1.0, expires / 2)
        self.asked = 0               # messages the standing requests may still deliver
        self.last_ends = 0.0         # when the newest request expires (loop time)
        self.heard = 0.0             # when the server last sent anything
        self.reconnects = self.nc.stats.get("reconnects", 0)

    async def fetch(self, batch: int = 1, timeout: float | None = 1.0) -> list[Msg]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout or 0.0)
        first: Msg | None = None
        while True:
            if not self.nc.is_connected:   # a failure, not an idle wait: the worker backs off and checks for limbo after
                raise ConnectionError("nats: not connected")
            msgs = self._take(batch, first)
            await self._ask(batch)
            if msgs:
                return msgs
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise NatsTimeoutError
            try:
                async with asyncio.timeout(min(remaining, self.heartbeat)):
                    first = await self.queue.get()
            except TimeoutError:
                first = None
                continue

    def queued(self) -> int:
        """Messages delivered and queued, not yet taken (status messages included)."""
        return self.queue.qsize()

    def _take(self, batch: int, first: Msg | None = None) -> list[Msg]:
        """`first` (just taken off the queue) and the messages queued now, up to `batch`; status messages are
        read and dropped."""
        queue, taken = self.queue, []
        if first is not None:
            self._one(first, taken)
        while len(taken) < batch and not queue.empty():
            self._one(queue.get_nowait(), taken)
        return taken

    def _one(self, msg: Msg, taken: list[Msg]) -> None:
        self.queue.task_done()
        self.inner._pending_size -= len(msg.data)
        self.heard = asyncio.get_running_loop().time()
        status = msg.headers.get("Status") if msg.headers else None
        if status is None:
            self.asked = max(0, self.asked - 1)
            taken.append(msg)
        else:
            self._status(status, msg)

    def _status(self, status: str, msg: Msg) -> None:
        if status == "100":   # idle heartbeat: the requests stand
            return
        if status in ("408", "409"):   # a request ended (expired, leadership change, max waiting): what it still had
            left = msg.headers.get("Nats-Pending-Messages")
            self.asked = max(0, self.asked - int(left)) if left and left.isdigit() else 0
            description = msg.headers.get("Description", "")
            if status == "409" and ("Deleted" in description or "Push Based" in description.title()):
                raise APIError.from_msg(msg)
            return
        if status == "404":
            return
        raise APIError.from_msg(msg)

    async def _ask(self, batch: int) -> None:
        """Ask for more when fewer than half a batch are asked for; everything again if the server forgot."""
        now = asyncio.get_running_loop().time()
        reconnects = self.nc.stats.get("reconnects", 0)
        silent = self.asked and now - self.heard > 2 * self.heartbeat + 1.0
        if reconnects != self.reconnects or silent or now > self.last_ends + 0.5:
            self.reconnects, self.asked = reconnects, 0
        if self.asked >= batch // 2 + 1 or not self.nc.is_connected:
            return
        want = batch - self.asked if self.asked else batch
        request = {"batch": want, "expires": int(self.expires * 1e9), "idle_heartbeat": int(self.heartbeat * 1e9)}
        await self.nc.publish(self.next_subject, json.dumps(request).encode(), reply=self.inbox)
        self.asked += want
        self.last_ends = now + self.expires
        if not self.heard or silent:
            self.heard = now   # the clock for the first heartbeat starts with the request


def pull(sub, **options) -> Puller | None:
    """A Puller on `sub`, or None (said once) if this nats-py lays its pull subscription out otherwise."""
    reason = layout_problem(getattr(sub, "_sub", None))
    if reason is None and not all(hasattr(sub, name) for name in ("_nc", "_nms", "_deliver")):
        reason = f"nats-py {version('nats-py')} has no PullSubscription._nc, ._nms or ._deliver"
    if reason is not None:
        _off(reason)
        return None
    return Puller(sub, **options)
