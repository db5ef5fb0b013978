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
import signal
import subprocess
import tempfile
import time
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
        if not self.host.startswith("127."):   # another host's clients: its own (test) subnet, trusted too
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write("host all all samenet trust\n")
        return self.resume()

    def resume(self) -> PostgresServer:
        """Start the server on the cluster made by start() (again, after halt())."""
        options = (f"-c listen_addresses={self.host} -p {self.port} -k {self.home} -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60",
                  "start")
        return self

    def halt(self, mode: str = "fast") -> None:
        """Stop the server but keep its cluster, for resume() (`immediate`: as a crash would)."""
        self._run(pg_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

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


Place = tuple[Sequence[str], str]   # (command prefix, e.g. ("ip", "netns", "exec", "h1"); the address to bind)


class SentinelSet:
    """A Redis master, one replica and three sentinels (quorum 2) watching them as `service`, each on a free
    port, in a temporary folder: `start()`, `url`, `kill_master()`, `wait_failover()`, `stop()`.

    `prefix` runs every server elsewhere (`ip netns exec HOST`) and `host` is the address they bind; or
    `places`, one (prefix, host) per machine, spreads them: the master on the first, the replica on the
    second, sentinel i on place i (round the list). `password`: the data nodes' (the sentinels take none).
    Nothing is saved to disk (`--save "" --appendonly no`): a killed master's data lives in its replica only.
    """

    def __init__(self, *, host: str = "127.0.0.1", prefix: Sequence[str] = (), places: Sequence[Place] = (),
                 service: str = "tradeflow", password: str | None = None, down_after_ms: int = 1000,
                 failover_timeout_ms: int = 2000) -> None:
        self.places = [(list(p), h) for p, h in places] or [(list(prefix), host)]
        self.service, self.password = service, password
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.home = Path(tempfile.mkdtemp(prefix="tradeflow-sentinel-"))
        n = len(self.places)
        # name: (prefix, host, port); the master on the first place, the replica on the second
        self.nodes = {f"redis-{i + 1}": (*self.places[i % n], free_port()) for i in (0, 1)}
        self.sentinels = [(*self.places[i % n], free_port()) for i in range(3)]
        self.procs: dict[str, subprocess.Popen] = {}
        self.master = "redis-1"
        self.killed: list[str] = []

    # -- life ------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> SentinelSet:
        """Start the five servers; return once the replica is in sync and each sentinel sees the replica and
        the two other sentinels (before that, a failover could not happen)."""
        try:
            _, master_host, master_port = self.nodes["redis-1"]
            self._data_node("redis-1")
            self._data_node("redis-2", replica_of=(master_host, master_port))
            for i in range(3):
                self._sentinel(i, master_host, master_port)
            self._until(self._settled, timeout, "the sentinels to see the replica and one another")
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, prefix: Sequence[str], argv: list[str]) -> None:
        with open(self.home / f"{name}.log", "ab") as log:   # the process keeps its own copy
            self.procs[name] = subprocess.Popen([*prefix, *argv], stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)

    def _data_node(self, name: str, replica_of: tuple[str, int] | None = None) -> None:
        prefix, host, port = self.nodes[name]
        folder = self.home / name
        folder.mkdir()
        argv = [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", host,
                "--save", "", "--appendonly", "no", "--dir", str(folder), "--daemonize", "no",
                "--protected-mode", "no", "--repl-diskless-sync-delay", "0",   # a replica in sync at once
                "--replica-announce-ip", host]   # not the source address of its link to the master
        if self.password:
            argv += ["--requirepass", self.password, "--masterauth", self.password]
        if replica_of:
            argv += ["--replicaof", replica_of[0], str(replica_of[1])]
        self._spawn(name, prefix, argv)

    def _sentinel(self, i: int, master_host: str, master_port: int) -> None:
        prefix, host, port = self.sentinels[i]
        folder = self.home / f"sentinel-{i + 1}"
        folder.mkdir()
        conf = folder / "sentinel.conf"   # sentinel rewrites it: a file of its own, writable
        lines = [f"port {port}", f"bind {host}", f"sentinel announce-ip {host}", "daemonize no", f"dir {folder}",
                 "protected-mode no",
                 f"sentinel monitor {self.service} {master_host} {master_port} 2",
                 f"sentinel down-after-milliseconds {self.service} {self.down_after_ms}",
                 f"sentinel failover-timeout {self.service} {self.failover_timeout_ms}",
                 f"sentinel parallel-syncs {self.service} 1"]
        if self.password:
            lines.append(f"sentinel auth-pass {self.service} {self.password}")
        conf.write_text("\n".join(lines) + "\n")
        self._spawn(f"sentinel-{i + 1}", prefix, [shutil.which("redis-server") or "redis-server", str(conf),
                                                  "--sentinel"])

    def stop(self) -> None:
        """Stop every server still running (SIGTERM, then SIGKILL after 10 s) and remove the folder."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.home, ignore_errors=True)

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what a test uses ----------------------------------------------------------

    def url(self, db: int = 0, service: str | None = None) -> str:
        """REDIS_URL for this set (`service`: another master name, for a URL the sentinels do not know)."""
        auth = f":{self.password}@" if self.password else ""
        members = ",".join(f"{host}:{port}" for _, host, port in self.sentinels)
        return f"redis+sentinel://{auth}{members}/{service or self.service}/{db}"

    @property
    def master_address(self) -> str:
        _, host, port = self.nodes[self.master]
        return f"{host}:{port}"

    def kill_master(self) -> str:
        """SIGKILL the master (as a crash would); its address."""
        address = self.master_address
        proc = self.procs[self.master]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self.killed.append(self.master)
        return address

    def wait_failover(self, timeout: float = 30.0) -> str:
        """Wait until every sentinel names a master that is alive and says it is one; its address."""
        self._until(self._failed_over, timeout, f"a failover away from {self.killed}")
        return self.master_address

    # -- looking ---------------------------------------------------------------

    def cli(self, prefix: Sequence[str], host: str, port: int, *command: str, auth: bool = False) -> list[str]:
        """redis-cli's answer lines to `command` on host:port (through `prefix`, so across namespaces too);
        [] if the server does not answer."""
        env = {**os.environ, "REDISCLI_AUTH": self.password} if auth and self.password else None
        try:
            done = subprocess.run([*prefix, shutil.which("redis-cli") or "redis-cli", "-h", host, "-p", str(port),
                                   *command], capture_output=True, text=True, timeout=5, env=env)
        except subprocess.TimeoutExpired:
            return []
        return done.stdout.splitlines() if done.returncode == 0 else []

    def _sentinel_view(self, i: int) -> dict[str, str]:
        prefix, host, port = self.sentinels[i]
        lines = self.cli(prefix, host, port, "SENTINEL", "MASTER", self.service)
        return dict(zip(lines[::2], lines[1::2]))

    def _settled(self) -> bool:
        info = self.cli(*self.nodes["redis-2"], "INFO", "replication", auth=True)
        if "master_link_status:up" not in [line.strip() for line in info]:
            return False
        views = [self._sentinel_view(i) for i in range(3)]
        return all(v.get("num-other-sentinels") == "2" and v.get("num-slaves") == "1" for v in views)

    def _failed_over(self) -> bool:
        named = set()
        for i in range(3):
            prefix, host, port = self.sentinels[i]
            named.add(tuple(self.cli(prefix, host, port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service)))
        if len(named) != 1:
            return False
        [address] = named
        alive = [name for name, (_, host, port) in self.nodes.items()
                 if (host, str(port)) == tuple(address) and name not in self.killed]
        if not alive:
            return False
        role = self.cli(*self.nodes[alive[0]], "ROLE", auth=True)
        if role[:1] != ["master"]:
            return False
        self.master = alive[0]
        return True

    @staticmethod
    def _until(check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.1)


@contextlib.contextmanager
def sentinel_set(**kwargs) -> Iterator[SentinelSet]:
    """A started Sentinel set for the length of the block."""
    with SentinelSet(**kwargs) as started:
        yield started
