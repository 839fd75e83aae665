"""A throwaway PostgreSQL cluster (or ADCLICK_TEST_DATABASE_URL) and fresh, migrated databases for tests."""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
from adclick.core.db.migrate import upgrade
from adclick.core.db.session import create_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from .procs import ManagedProcess, ProcessGuard, ServerProcess, free_port, wait_until

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@asynccontextmanager
async def engine_on(url: str) -> AsyncIterator[AsyncEngine]:
    """The application's async engine on `url`, disposed on the way out (its pool closed, whatever happened)."""
    engine = create_engine(url)
    try:
        yield engine
    finally:
        await engine.dispose()


def find_postgres_bindir() -> Path:
    """ADCLICK_TEST_PG_BINDIR, else `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin."""
    candidates: list[str] = []
    if os.environ.get("ADCLICK_TEST_PG_BINDIR"):
        candidates.append(os.environ["ADCLICK_TEST_PG_BINDIR"])
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            candidates.append(found.stdout.strip())
    versions = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(versions, key=lambda path: int(Path(path).parent.name.split(".")[0]), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "postgres").is_file():
            return Path(candidate)
    raise RuntimeError("no PostgreSQL server binaries: install the postgresql package or set ADCLICK_TEST_DATABASE_URL")


class PostgresServer(ServerProcess):
    """A PostgreSQL server for tests: `.url(db)`, `.create_database(db)`, `.drop_database(db)`, `.stop()`, `.start()`.

    Without ADCLICK_TEST_DATABASE_URL it is a private cluster in a temp dir on a free 127.0.0.1 port (trust
    auth, fsync off), run as the `postgres` user when we are root (initdb refuses root). `stop()` then
    `start()` brings it back on the same port with its data, like a database that was down for a while.
    """

    def __init__(self, guard: ProcessGuard, external_url: str | None = None) -> None:
        self.guard = guard
        self.proc: ManagedProcess | None = None
        self._tmp: str | None = None
        self.external = external_url is not None
        if external_url is not None:
            self._base = make_url(external_url).set(drivername="postgresql+asyncpg")
            return
        self.bindir = find_postgres_bindir()
        self.host = "127.0.0.1"
        self.port = free_port(self.host)
        self._base = URL.create("postgresql+asyncpg", username="postgres", host=self.host, port=self.port)
        self._tmp = tempfile.mkdtemp(prefix="adclick-pg-")
        self.root = Path(self._tmp)
        self.datadir = self.root / "data"
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self._initdb()

    def _as_postgres(self, argv: list[str]) -> list[str]:
        if self._user is None:
            return argv
        # setpriv execs in place (runuser forks), so signals reach postgres itself; runuser is the fallback.
        if shutil.which("setpriv"):
            return ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--", *argv]
        return ["runuser", "-u", "postgres", "--", *argv]

    def _initdb(self) -> None:
        argv = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "-A", "trust"]
        argv += ["-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        done = subprocess.run(self._as_postgres(argv), capture_output=True, text=True, check=False, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def url(self, dbname: str = "postgres") -> str:
        """The SQLAlchemy URL (postgresql+asyncpg://...) of database `dbname` on this server."""
        return self._base.set(database=dbname).render_as_string(hide_password=False)

    def start(self) -> None:
        """Start (or restart on the same port, data kept) and wait until it accepts queries."""
        if self.external:
            raise RuntimeError("cannot start or stop the server at ADCLICK_TEST_DATABASE_URL")
        if self.running():
            return
        argv = [
            str(self.bindir / "postgres"),
            "-D", str(self.datadir),
            "-p", str(self.port),
            "-c", f"listen_addresses={self.host}",
            "-c", f"unix_socket_directories={self.root}",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
            "-c", "max_connections=300",
            "-c", "shared_buffers=128MB",
        ]  # fmt: skip
        self.proc = self.guard.spawn(self._as_postgres(argv), name=f"postgres-{self.port}", cwd=self.root)
        wait_until(self._answers, timeout=30.0, message=f"postgres on {self.port}", proc=self.proc)

    def _answers(self) -> bool:
        try:
            asyncio.run(self._execute("postgres", "SELECT 1", seconds=1.0))
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        return True

    def stop(self) -> None:
        """Fast shutdown (clients are disconnected, data stays on disk); connections are refused until `start()`."""
        if self.external:
            raise RuntimeError("cannot start or stop the server at ADCLICK_TEST_DATABASE_URL")
        if self.proc is None:
            return
        self.proc.stop(timeout=30.0, sig=signal.SIGINT)  # fast shutdown
        self.proc = None

    async def _execute(self, dbname: str, sql: str, seconds: float = 30.0) -> None:
        url = make_url(self.url(dbname))
        connection = await asyncpg.connect(
            host=url.host,
            port=url.port,
            user=url.username,
            password=url.password,
            database=url.database,
            timeout=seconds,
        )
        try:
            await connection.execute(sql, timeout=seconds)
        finally:
            await connection.close()

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        """Run one SQL statement outside any transaction (CREATE DATABASE needs that)."""
        asyncio.run(self._execute(dbname, sql))

    def create_database(self, name: str, template: str = "template0") -> str:
        """Create an empty database (a copy of `template`) and return its URL."""
        if not _NAME.match(name) or not _NAME.match(template):
            raise ValueError(f"bad database name {name!r} or template {template!r}")
        self.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"bad database name {name!r}")
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def close(self) -> None:
        if self.proc is not None:
            self.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def migrated_postgres_template(server: PostgresServer) -> str:
    """Create a database migrated to head, to be copied (`CREATE DATABASE ... TEMPLATE`) for each test."""
    name = unique_name("adclick_template")
    upgrade(server.create_database(name))
    return name


def migrated_sqlite_template(directory: Path) -> Path:
    """A SQLite file migrated to head, to be copied for each test."""
    path = directory / "template.db"
    upgrade(f"sqlite+aiosqlite:///{path}")
    # Closing the last connection checkpointed the WAL into the main file, so that file is the whole database.
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size:
        raise RuntimeError(f"{wal} was not checkpointed")
    return path
