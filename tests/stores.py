"""The event store's two adapters as test parameters: the embedded SQLite file, and PostgreSQL once its
adapter (`replay.store.postgres`) is there (until then its cases are skipped, saying why)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _has_postgres() -> bool:
    try:
        return importlib.util.find_spec("replay.store.postgres") is not None
    except ImportError:
        return False


HAS_POSTGRES = _has_postgres()
needs_postgres = pytest.mark.skipif(not HAS_POSTGRES, reason="no PostgreSQL event store adapter "
                                    "(replay.store.postgres) yet")
KINDS = [pytest.param("sqlite", id="sqlite"), pytest.param("postgresql", id="postgresql", marks=needs_postgres)]


def location_for(kind: str, request: pytest.FixtureRequest, folder: Path) -> str:
    """A new, empty store's TRADEFLOW_STORE value: a file in `folder`, or a fresh PostgreSQL database (the
    per-process cluster starts only for the PostgreSQL cases)."""
    if kind == "postgresql":
        return request.getfixturevalue("pg_url")
    return str(folder / "events.sqlite")
