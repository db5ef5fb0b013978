"""The postgres image as a local process, for `tradeflow deploy local`: what the official image's entrypoint
does, with Debian's PostgreSQL (`initdb`, `postgres`, `psql`).

On an empty data folder (the volume mounted at PGDATA, /var/lib/postgresql/data by default): initdb
(POSTGRES_USER, POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, POSTGRES_HOST_AUTH_METHOD,
POSTGRES_INITDB_ARGS), the server started, POSTGRES_DB created, then the scripts of the folder mounted at
/docker-entrypoint-initdb.d in name order (`*.sh` run by sh, `*.sql` by psql; others ignored), with the
service's environment and PGHOST, PGPORT, PGUSER and PGPASSWORD pointing at the server. On a folder that
holds a cluster already, the server only. A script that fails stops the deployment and the data folder is
removed, so the next run starts afresh rather than on a half-made database (the image would keep it).

What differs from the image, on a machine without containers: the server listens on 127.0.0.1 (on a free
port, as every server of a local deployment) and on no socket. PostgreSQL refuses to run as root: under
root it runs as the `postgres` user, its data in /var/tmp/tradeflow-postgres/<hash of the volume's
folder> (which may be in a tree only root can enter), and the scripts run as that user too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pwd
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from contracts.errors import ConfigError
from replay.store.pg import reason
from services.ops.supervisor import Proc, Supervisor
from services.runtime.deathsig import on_parent_death

PGDATA = "/var/lib/postgresql/data"
INITDB_FOLDER = "/docker-entrypoint-initdb.d"
PORT = 5432
ROOT_DATA = Path("/var/tmp/tradeflow-postgres")
_PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
_STEP_TIMEOUT = 300.0
_NOT_YET = ("starting up", "not yet accepting", "Connection refused")   # libpq's words for a server not up yet


def pg_binary(name: str) -> str:
    """`initdb`, `postgres`, `psql`, ... from PATH, else from Debian's newest /usr/lib/postgresql/N/bin."""
    found = shutil.which(name) or next((str(d / name) for d in _PG_BIN_DIRS if (d / name).exists()), None)
    if found is None:
        raise ConfigError(f"{name} not found: apt-get install postgresql (scripts/bootstrap does)")
    return found


def run_as() -> str | None:
    """The user the server runs as: `postgres` under root (which PostgreSQL refuses), else this one."""
    return "postgres" if os.geteuid() == 0 else None


def data_folder(volume: Path) -> Path:
    """Where the cluster of the volume whose folder is `volume` lives: in it, or under root, outside it."""
    if run_as() is None:
        return volume
    return ROOT_DATA / hashlib.sha256(str(volume.resolve()).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ImageSettings:
    """The postgres image's settings, from a service's environment."""

    user: str
    password: str
    database: str
    host_auth: str
    initdb_args: tuple[str, ...]

    @classmethod
    def of(cls, env: Mapping[str, str], service: str) -> ImageSettings:
        """The settings `env` gives (its paths, POSTGRES_PASSWORD_FILE's, this machine's)."""
        user = env.get("POSTGRES_USER") or "postgres"
        password = env.get("POSTGRES_PASSWORD") or ""
        if not password and env.get("POSTGRES_PASSWORD_FILE"):
            path = Path(env["POSTGRES_PASSWORD_FILE"])
            try:
                password = path.read_text().rstrip("\n")
            except OSError as exc:
                raise ConfigError(f"service {service}: POSTGRES_PASSWORD_FILE {path}: {exc.strerror}") from None
        host_auth = env.get("POSTGRES_HOST_AUTH_METHOD") or "scram-sha-256"
        if not password and host_auth != "trust":
            raise ConfigError(f"service {service}: POSTGRES_PASSWORD is not set (nor POSTGRES_PASSWORD_FILE): "
                              "the postgres image does not start without a superuser password")
        try:
            args = tuple(shlex.split(env.get("POSTGRES_INITDB_ARGS") or ""))
        except ValueError as exc:
            raise ConfigError(f"service {service}: POSTGRES_INITDB_ARGS: {exc}") from None
        return cls(user, password, env.get("POSTGRES_DB") or user, host_auth, args)

    def url(self, port: int, database: str | None = None) -> str:
        """The superuser's URL on this machine."""
        auth = quote(self.user, safe="") + (f":{quote(self.password, safe='')}" if self.password else "")
        return f"postgresql://{auth}@127.0.0.1:{port}/{quote(database or self.database, safe='')}"


@dataclass(frozen=True)
class Cluster:
    """One postgres service of a local deployment: its settings, data folder, local port, init scripts,
    environment (this machine's paths and addresses) and log."""

    settings: ImageSettings
    data: Path
    port: int
    scripts: Sequence[Path]
    env: Mapping[str, str]
    log: Path


async def bring_up(cluster: Cluster, supervisor: Supervisor, server: Proc) -> Proc:
    """`server` started by `supervisor` on `cluster`'s data folder, set up first if it is empty (initdb, then,
    once it takes connections, POSTGRES_DB and the init scripts); a set-up that fails keeps no cluster."""
    prepare(cluster.data)
    fresh = not is_initialised(cluster.data)
    try:
        if fresh:
            await initdb(cluster.data, cluster.settings, cluster.log)
        proc = await supervisor.start(server)
        await wait_accepting(cluster.settings, cluster.port, 60, proc.process)
        if fresh:
            await create_database(cluster.settings, cluster.port)
            await run_init_scripts(cluster.scripts, cluster.settings, cluster.port, cluster.data, cluster.env,
                                   cluster.log)
    except BaseException:
        if fresh:   # a half-made cluster is not kept for the next run
            if server.name in supervisor.procs:
                await supervisor.stop(server.name)
            remove(cluster.data)
        raise
    return proc


def server_argv(data: Path, port: int, args: Sequence[str]) -> list[str]:
    """The server's command: the image's `postgres` arguments, on 127.0.0.1:`port` and no socket."""
    return [pg_binary("postgres"), "-D", str(data), *args, "-c", "listen_addresses=127.0.0.1", "-p", str(port),
            "-c", "unix_socket_directories="]


def is_initialised(data: Path) -> bool:
    return (data / "PG_VERSION").is_file()


def prepare(data: Path) -> None:
    """The data folder made, and the server's user's."""
    user = run_as()
    if user is None:
        data.mkdir(parents=True, exist_ok=True)
        return
    ROOT_DATA.mkdir(mode=0o755, parents=True, exist_ok=True)
    data.mkdir(mode=0o700, exist_ok=True)
    entry = pwd.getpwnam(user)
    os.chown(data, entry.pw_uid, entry.pw_gid)


async def initdb(data: Path, settings: ImageSettings, log: Path) -> None:
    """A new cluster in `data` with the image's superuser, as the image's entrypoint makes it."""
    user = run_as()
    with tempfile.TemporaryDirectory(prefix="tradeflow-pg-") as folder:
        pwfile = Path(folder) / "password"
        pwfile.write_text(settings.password + "\n")
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (Path(folder), pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        argv = [pg_binary("initdb"), "-D", str(data), "-U", settings.user, "-E", "UTF8", "--locale=C",
                "--auth-local=trust", f"--auth-host={settings.host_auth}",
                *([f"--pwfile={pwfile}"] if settings.password else []), *settings.initdb_args]
        code = await run(argv, env=_tool_env(dict(os.environ)), log=log)
    if code != 0:
        raise ConfigError(f"initdb exited with {code} (log: {log})")


async def wait_accepting(settings: ImageSettings, port: int, timeout: float,
                         process: asyncio.subprocess.Process | None = None) -> None:
    """Wait until the server takes the superuser's connections (it listens before it has recovered);
    ConfigError with the server's answer if it refuses them (a wrong password: POSTGRES_PASSWORD is not
    the one the volume's cluster was made with), has not within `timeout` seconds, or exited."""
    import psycopg

    deadline, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.returncode is not None:
            raise ConfigError(f"the server exited with {process.returncode}")
        try:
            async with await psycopg.AsyncConnection.connect(settings.url(port, "postgres"), connect_timeout=2):
                return
        except psycopg.OperationalError as exc:
            last = reason(exc)
            if not any(words in str(exc) for words in _NOT_YET):
                raise ConfigError(f"the server refuses the superuser: {last}") from None
        await asyncio.sleep(0.1)
    raise ConfigError(f"the server does not take connections after {timeout:.0f}s: {last}")


async def create_database(settings: ImageSettings, port: int) -> None:
    """POSTGRES_DB, unless it is `postgres`, which initdb made."""
    if settings.database == "postgres":
        return
    import psycopg
    from psycopg import sql

    try:
        async with await psycopg.AsyncConnection.connect(settings.url(port, "postgres"), autocommit=True) as conn:
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.database)))
    except psycopg.Error as exc:
        raise ConfigError(f"POSTGRES_DB {settings.database!r}: cannot create it: {reason(exc)}") from None


def init_scripts(folder: Path | None) -> list[Path]:
    """The scripts the image runs after initdb, in its order; ConfigError for a kind it runs and this cannot."""
    if folder is None or not folder.is_dir():
        return []
    scripts = sorted(p for p in folder.iterdir() if p.is_file())
    for path in scripts:
        if path.name.endswith((".sql.gz", ".sql.xz", ".sql.zst")):
            raise ConfigError(f"{path}: compressed init scripts cannot run here: give it as .sql")
    return [p for p in scripts if p.suffix in (".sh", ".sql")]


async def run_init_scripts(scripts: Sequence[Path], settings: ImageSettings, port: int, data: Path,
                           env: Mapping[str, str], log: Path) -> None:
    """Each script, with the service's environment and libpq's pointing at the server; ConfigError on a failure."""
    environ = _tool_env({**os.environ, **env, "POSTGRES_USER": settings.user, "POSTGRES_DB": settings.database,
                         "POSTGRES_PASSWORD": settings.password, "PGDATA": str(data), "PGHOST": "127.0.0.1",
                         "PGPORT": str(port), "PGUSER": settings.user, "PGPASSWORD": settings.password})
    for script in scripts:
        if script.suffix == ".sh":
            argv = ["sh", "-s", "--"]
        else:
            argv = [pg_binary("psql"), "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "--no-password",
                    "--username", settings.user, "--dbname", settings.database, "-f", "-"]
        with log.open("ab") as out:
            out.write(f"running {script}\n".encode())
        code = await run(argv, env=environ, log=log, stdin=script.read_bytes())   # read here: the user may not
        if code != 0:
            raise ConfigError(f"{script.name} exited with {code} (log: {log})")


def _tool_env(env: dict[str, str]) -> dict[str, str]:
    """`env` with the server's own binaries first on PATH (as in the image) and the run-as user's home."""
    bin_dir = str(Path(pg_binary("postgres")).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH") or os.defpath])
    if (user := run_as()) is not None:
        env["HOME"] = pwd.getpwnam(user).pw_dir
    return env


async def run(argv: Sequence[str], *, env: Mapping[str, str], log: Path, stdin: bytes | None = None,
              timeout: float = _STEP_TIMEOUT) -> int:
    """Run one step (initdb, a script) as the server's user, its output in `log`; its exit status.
    It is killed if it takes longer than `timeout` or if the caller is cancelled."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=dict(env), stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=out, stderr=out, user=run_as(), cwd="/", start_new_session=True,
            preexec_fn=on_parent_death(signal.SIGTERM))
    try:
        await asyncio.wait_for(proc.communicate(stdin), timeout)
    except BaseException as exc:   # timed out, or cancelled: the step does not outlive the call
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(exc, asyncio.TimeoutError):
            raise ConfigError(f"{Path(argv[0]).name} did not finish in {timeout:.0f}s (log: {log})") from None
        raise
    assert proc.returncode is not None
    return proc.returncode


def remove(data: Path) -> None:
    """The data folder of a cluster whose set-up failed, gone."""
    shutil.rmtree(data, ignore_errors=True)
