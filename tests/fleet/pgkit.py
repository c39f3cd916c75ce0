"""A real PostgreSQL 15 for tests and benchmarks: initdb + pg_ctl in a temporary directory.

Debian's server binaries (/usr/lib/postgresql/15/bin, from scripts/setup.sh) run as an
unprivileged user when the tests run as root (PostgreSQL refuses root), listen on a free
loopback port only, and are stopped at the end. One server per test session; each test
gets its own database (`fresh_database`).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("WARDTAP_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> tuple[int, int] | None:
    """PostgreSQL will not run as root: use the `postgres` (or `nobody`) account."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
    raise RuntimeError("running as root and no postgres/nobody account to run PostgreSQL as")


class Postgres:
    """One PostgreSQL cluster in `directory`, on 127.0.0.1:port, trust authentication."""

    def __init__(self, directory: Path, extra_conf: str = "") -> None:
        self.dir = directory
        self.data = directory / "data"
        self.port = _free_port()
        self.user = "wardtap"
        self.extra_conf = extra_conf
        self.ids = _as_user()

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict = {}
        if self.ids is not None:
            uid, gid = self.ids
            kwargs = {"user": uid, "group": gid, "extra_groups": []}
        return subprocess.run(list(args), capture_output=True, text=True, check=check,
                              timeout=120, cwd="/", **kwargs)

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.ids is not None:
            os.chown(self.dir, *self.ids)
        if not self.data.exists():
            r = self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", self.user,
                          "-A", "trust", "-E", "UTF8", "--no-sync", check=False)
            assert r.returncode == 0, r.stdout + r.stderr
            with open(self.data / "postgresql.conf", "a", encoding="utf-8") as fh:
                fh.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                         f"unix_socket_directories = '{self.data}'\nfsync = off\n"
                         "synchronous_commit = off\nfull_page_writes = off\n"
                         f"max_connections = 100\n{self.extra_conf}\n")
        r = self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l",
                      str(self.data / "server.log"), "-w", "-t", "60", "start", check=False)
        assert r.returncode == 0, r.stdout + r.stderr + self.log()

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop",
                  check=False)

    def log(self) -> str:
        path = self.data / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


def available() -> bool:
    return (PG_BIN / "initdb").exists() and shutil.which("true") is not None


@contextlib.contextmanager
def running_postgres(directory: Path, extra_conf: str = "") -> Iterator[Postgres]:
    pg = Postgres(directory, extra_conf)
    pg.start()
    try:
        yield pg
    finally:
        pg.stop("immediate")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One real PostgreSQL 15 for the whole test session (scripts/setup.sh installs it).

    Its directory is under /tmp, not pytest's (root-only) tmp dir, so the unprivileged
    server can reach it; removed afterwards.
    """
    assert available(), f"PostgreSQL server binaries missing in {PG_BIN}: run scripts/setup.sh"
    directory = Path(tempfile.mkdtemp(prefix="wardtap-pg-"))
    os.chmod(directory, 0o755)
    try:
        with running_postgres(directory / "cluster") as pg:
            yield pg
    finally:
        shutil.rmtree(directory, ignore_errors=True)
