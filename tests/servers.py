"""Servers the tests start for themselves, beside the NATS and Redis a deployment starts: a PostgreSQL
cluster (Debian's `initdb` and `pg_ctl`, into a temporary folder, on a free loopback port), each test
then taking a database of its own.

PostgreSQL refuses to run as root; under root the cluster runs as the `postgres` user, in a folder
outside pytest's (root-only) tmp tree.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from services.ops.postgres_local import pg_binary
from services.ops.supervisor import free_port

__all__ = ["PostgresServer", "pg_binary", "postgres"]


class PostgresServer:
    """One throwaway PostgreSQL cluster: `start()`, `database()` for a fresh database's URL, `stop()`.

    `prefix` runs its commands elsewhere (`ip netns exec HOST`); `host` is the address it listens on.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None, prefix: Sequence[str] = ()) -> None:
        self.host, self.port, self.prefix = host, port or free_port(), list(prefix)
        self.home = Path(tempfile.mkdtemp(prefix="tradeflow-pg-"))
        self.data, self.log = self.home / "data", self.home / "postgres.log"
        self._user = "postgres" if os.geteuid() == 0 else None
        self._admin_url = f"postgresql://postgres@{host}:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        as_user = ["runuser", "-u", self._user, "--"] if self._user else []   # after the prefix, which needs root
        return subprocess.run([*self.prefix, *as_user, *args], check=check, timeout=timeout, capture_output=True,
                              text=True)

    def start(self) -> PostgresServer:
        if self._user:
            entry = pwd.getpwnam(self._user)
            os.chown(self.home, entry.pw_uid, entry.pw_gid)
        self._run(pg_binary("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")
        options = (f"-c listen_addresses={self.host} -p {self.port} -k {self.home} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                  "start")
        return self

    @property
    def url(self) -> str:
        return self._admin_url

    def database(self, name: str | None = None) -> str:
        """Create a new, empty database; its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self._admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@{self.host}:{self.port}/{name}"

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (`immediate`: as a crash would) and remove its folder."""
        with contextlib.suppress(subprocess.SubprocessError):
            self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def postgres(**kwargs) -> Iterator[PostgresServer]:
    """A started cluster for the length of the block."""
    server = PostgresServer(**kwargs)
    try:
        yield server.start()
    finally:
        server.stop()
