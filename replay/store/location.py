"""Where a store lives, read from a setting: a path or `sqlite:///path` (the embedded default), or a
`postgresql://` URL. One parser for the event store, the fill ledger and the audit trail, so every
setting is spelled, checked and shown (password hidden) the same way.

SQLite URLs follow SQLAlchemy's spelling: `sqlite:///events.sqlite` is relative to the working
folder, `sqlite:////var/lib/tradeflow/events.sqlite` absolute.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from contracts.errors import ConfigError

Kind = Literal["sqlite", "postgresql"]
POSTGRES_SCHEMES = ("postgresql", "postgres")


@dataclass(frozen=True)
class Location:
    """A parsed store location: `kind` and either `path` (SQLite) or `url` (PostgreSQL)."""

    kind: Kind
    setting: str
    path: Path | None = None
    url: str | None = None

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else redact(self.url or "")


def parse_location(value: str | os.PathLike[str], setting: str) -> Location:
    """The location `value` names; ConfigError naming `setting` if it is not one."""
    text = os.fspath(value).strip()
    if not text:
        raise ConfigError(f"{setting} is empty: give a path, sqlite:///path or postgresql://host/db")
    if "\x00" in text or len(text) > 4096:
        raise ConfigError(f"{setting} is not a path or URL (NUL byte, or over 4096 characters)")
    scheme, sep, rest = text.partition("://")
    if not sep or os.sep in scheme or not scheme.replace("+", "").isalnum():
        return Location("sqlite", setting, path=Path(text))   # a plain path (may hold "://" further on)
    scheme = scheme.lower()
    if scheme == "sqlite":
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(f"{setting}={text!r}: a SQLite URL is sqlite:///relative/path or "
                              "sqlite:////absolute/path")
        return Location("sqlite", setting, path=Path(urllib.parse.unquote(rest[1:])))
    if scheme in POSTGRES_SCHEMES:
        return Location("postgresql", setting, url=_checked_postgres(text, setting))
    raise ConfigError(f"{setting}={redact(text)!r}: unknown scheme {scheme!r}; give a path, sqlite:///path or "
                      "postgresql://host/db")


def _checked_postgres(url: str, setting: str) -> str:
    """`url` if libpq can parse it (and it names a database); ConfigError naming the setting otherwise."""
    import psycopg
    from psycopg import conninfo

    try:
        params = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:   # the text is libpq's
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        reason = reason.replace(url, redact(url))   # libpq quotes the URI, password and all
        raise ConfigError(f"{setting}={redact(url)!r} is not a PostgreSQL URL: {reason}") from None
    if not params.get("dbname"):
        raise ConfigError(f"{setting}={redact(url)!r} names no database: postgresql://host:port/DATABASE")
    return url


def redact(url: str) -> str:
    """`url` with its password (in the authority or a `password=` parameter) shown as ***."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user, _, host = netloc.rpartition("@")
            netloc = f"{user.partition(':')[0]}:***@{host}"
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        query = urllib.parse.urlencode([(k, "***" if k == "password" else v) for k, v in pairs], safe="*")
        return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<unparsable URL>"
