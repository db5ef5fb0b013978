"""The event store's two adapters as test parameters: the embedded SQLite file and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

KINDS = ["sqlite", "postgresql"]


def location_for(kind: str, request: pytest.FixtureRequest, folder: Path) -> str:
    """A new, empty store's TRADEFLOW_STORE value: a file in `folder`, or a fresh PostgreSQL database (the
    per-process cluster starts only for the PostgreSQL cases)."""
    if kind == "postgresql":
        return request.getfixturevalue("pg_url")
    return str(folder / "events.sqlite")
