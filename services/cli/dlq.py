"""`tradeflow dlq list | show | redrive | purge`: look at dead letters, send them back, or drop them.

A dead letter's id is its sequence in the DLQ stream (the first column of `list`). Filters:
--service, --subject (a NATS pattern over the original subject), --reason, --older-than and
--newer-than (30s, 15m, 2h, 7d).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import click
import msgspec
import orjson
from nats.js.errors import NotFoundError

from contracts.deadletters import DeadLetter
from contracts.envelope import rfc3339
from contracts.errors import TradeflowError
from contracts.subjects import DLQ_STREAM
from services.cli.common import connect, run_async
from services.runtime.deadletters import MAX_REDRIVES, RedriveRefused, Selection, by_original, select
from services.runtime.deadletters import redrive as redrive_one

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class Age(click.ParamType):
    """A duration: a number and s, m, h or d."""

    name = "AGE"

    def convert(self, value, param, ctx) -> timedelta:
        if isinstance(value, timedelta):
            return value
        match = _AGE.fullmatch(str(value).strip())
        if not match:
            self.fail(f"{value!r} is not an age: use e.g. 30s, 15m, 2h or 7d", param, ctx)
        return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


def selection_options(command):
    for option in reversed([
        click.argument("seqs", nargs=-1, type=click.IntRange(min=1)),
        click.option("--service", help="Only what this service dead-lettered."),
        click.option("--subject", metavar="PATTERN", help="Only these original subjects, e.g. 'data_ready.*'."),
        click.option("--reason", help="Only this reason (bad_input, max_deliveries, undecodable, ...)."),
        click.option("--older-than", type=Age(), help="Only dead letters at least this old."),
        click.option("--newer-than", type=Age(), help="Only dead letters younger than this."),
    ]):
        command = option(command)
    return command


def _selection(seqs, service, subject, reason, older_than, newer_than) -> Selection:
    return Selection(seqs=frozenset(seqs), service=service, subject=subject, reason=reason, older_than=older_than,
                     newer_than=newer_than)


async def _letters(nc, selection: Selection) -> list[DeadLetter]:
    """The dead letters the selection picks, oldest first (by seq when given, else a scan of the stream)."""
    jsm = nc.jsm()
    try:
        await jsm.stream_info(DLQ_STREAM)
    except NotFoundError:
        raise TradeflowError("no DLQ stream on this NATS server: is tradeflow running? (tradeflow up)") from None
    if selection.seqs:
        letters = []
        for seq in sorted(selection.seqs):
            try:
                raw = await jsm.get_msg(DLQ_STREAM, seq)
            except NotFoundError:
                raise TradeflowError(f"no dead letter {seq} in the DLQ stream (tradeflow dlq list)") from None
            letters.append(DeadLetter.of(raw.seq, raw.subject, raw.headers, raw.data, raw.time))
    else:
        from services.ops.observe import stream_messages

        letters = [DeadLetter.of(m.metadata.sequence.stream, m.subject, m.headers, m.data, m.metadata.timestamp)
                   for m in await stream_messages(nc, DLQ_STREAM, "dlq.>")]
    return select(letters, selection)


def _line(letter: DeadLetter, copies: Sequence[DeadLetter] = ()) -> str:
    """A dead letter in a line; with the other copies of its event, their ids and services too."""
    error = " ".join(letter.error.split())
    ids = f"{letter.seq}+{len(copies)}" if copies else str(letter.seq)
    services = ",".join(dict.fromkeys([letter.service, *(c.service for c in copies)]))
    return (f"{ids:>7}  {rfc3339(letter.dead_at)[:19]}  {services:<10} {letter.subject:<28} "
            f"{letter.reason:<15} {letter.deliveries or '-':>3} {letter.redrives:>3}  {error[:70]}")


def _as_json(letter: DeadLetter) -> dict:
    body: object
    try:
        body = orjson.loads(letter.body)
    except orjson.JSONDecodeError:
        body = letter.body.decode(errors="replace")
    return msgspec.to_builtins(letter) | {"body": body}


@click.group("dlq")
def dlq() -> None:
    """Dead letters: list, show, redrive, purge."""


def _on_letters(selection: Selection, act: Callable[[Any, list[DeadLetter]], Awaitable[None]]) -> None:
    """Connect, read the dead letters `selection` picks, and `act` on them (with the connection)."""

    async def main() -> None:
        nc = await connect()
        try:
            await act(nc, await _letters(nc, selection))
        finally:
            await nc.close()

    run_async(main())


@dlq.command("list")
@selection_options
@click.option("--json", "as_json", is_flag=True, help="JSON lines, one dead letter each.")
@click.option("--each", is_flag=True, help="One line per dead letter, not one per event dead-lettered.")
def list_command(seqs, service, subject, reason, older_than, newer_than, as_json, each) -> None:
    """List dead letters, oldest first: id, time, service, original subject, reason, deliveries, redrives, error.

    Copies of one event (a bad bar that every stage consuming bars dead-lettered) are one line, its
    services listed and its ids as FIRST+N (--each: a line for every copy; --json: each copy, with the
    `copies` of its event)."""

    async def show_all(_, letters: list[DeadLetter]) -> None:
        groups = by_original(letters)
        if as_json:
            for group in groups:
                copies = [letter.seq for letter in group]
                for letter in group:
                    click.echo(orjson.dumps(_as_json(letter) | {"copies": copies}).decode())
            return
        click.echo(f"{'id':>7}  {'dead at':<19}  {'service':<10} {'subject':<28} {'reason':<15} {'dlv':>3} "
                   f"{'rdr':>3}  error")
        for group in ([[letter] for letter in letters] if each else groups):
            click.echo(_line(group[0], group[1:]))
        click.echo(f"{len(letters)} dead letter(s) of {len(groups)} event(s)", err=True)

    _on_letters(_selection(seqs, service, subject, reason, older_than, newer_than), show_all)


@dlq.command("show")
@click.argument("seq", type=click.IntRange(min=1))
def show(seq: int) -> None:
    """One dead letter whole: why, its history, headers and decoded body."""

    async def show_one(_, letters: list[DeadLetter]) -> None:
        [letter] = letters
        click.echo(orjson.dumps(_as_json(letter), option=orjson.OPT_INDENT_2).decode())

    _on_letters(Selection(seqs=frozenset([seq])), show_one)


@dlq.command("redrive")
@selection_options
@click.option("--all", "everything", is_flag=True, help="Every dead letter (when no id or filter is given).")
@click.option("--max-redrives", type=click.IntRange(min=1), default=MAX_REDRIVES, show_default=True,
              help="Refuse a dead letter redriven this many times already.")
def redrive(seqs, service, subject, reason, older_than, newer_than, everything, max_redrives) -> None:
    """Send dead letters back to their original subjects, each under an id derived from it: redriving
    the same one twice has one effect. A dead letter is removed from the DLQ once its redrive is stored."""
    from services.runtime.publish import Publisher

    selection = _selection(seqs, service, subject, reason, older_than, newer_than)
    _require_some(selection, everything)

    async def send_back(nc, letters: list[DeadLetter]) -> None:
        publisher, jsm = Publisher(nc.jetstream(), timeout=10, window=256), nc.jsm()
        sent = again = refused = 0
        for letter in letters:
            try:
                ack, subject = await redrive_one(publisher, jsm, letter, max_redrives)
            except RedriveRefused as exc:
                refused += 1
                click.echo(f"refused {letter.seq}: {exc}", err=True)
                continue
            duplicate = bool(ack.duplicate)
            sent, again = sent + (not duplicate), again + duplicate
            click.echo(f"redrove {letter.seq} -> {subject} (stream seq {ack.seq}"
                       f"{', already there' if duplicate else ''})")
        click.echo(f"{sent} redriven, {again} already redriven, {refused} refused", err=True)
        if refused:
            sys.exit(1)

    _on_letters(selection, send_back)


@dlq.command("purge")
@selection_options
@click.option("--all", "everything", is_flag=True, help="Every dead letter (when no id or filter is given).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(seqs, service, subject, reason, older_than, newer_than, everything, yes) -> None:
    """Delete dead letters for good."""
    selection = _selection(seqs, service, subject, reason, older_than, newer_than)
    _require_some(selection, everything)

    async def drop(nc, letters: list[DeadLetter]) -> None:
        if not letters:
            raise TradeflowError("no dead letters match: nothing to purge")
        if not yes and not click.confirm(f"delete {len(letters)} dead letter(s) for good?"):
            raise click.Abort()
        for letter in letters:
            await nc.jsm().delete_msg(DLQ_STREAM, letter.seq)
        click.echo(f"purged {len(letters)} dead letter(s)")

    _on_letters(selection, drop)


def _require_some(selection: Selection, everything: bool) -> None:
    """A command that changes the DLQ needs ids, a filter or --all; not a bare invocation."""
    if selection == Selection() and not everything:
        raise click.UsageError("give dead letter ids, a filter (--service, --subject, ...) or --all")
