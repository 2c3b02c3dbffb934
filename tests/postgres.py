"""A real PostgreSQL for tests: the machine's on 127.0.0.1:5432 when it answers, else a
throwaway cluster from Debian's postgresql package (initdb into a temporary folder, an
ephemeral port, stopped when the tests end). Each test gets a database of its own."""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from typing import Any

from tools.ports import fixed_port

_server: str | None = None


def _answers(dsn: str) -> bool:
    import psycopg

    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


class Cluster:
    """A PostgreSQL of the test's own: initdb and pg_ctl from /usr/lib/postgresql/*/bin, run
    as the postgres account when the tests run as root (PostgreSQL refuses root). Tests
    that stop and start the server (a database restart mid-run) use one of these."""

    def __init__(self) -> None:
        binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not binaries:
            raise AssertionError(
                "Debian's postgresql is not installed (make test installs it when no "
                "server answers on 127.0.0.1:5432)"
            )
        self.bin = os.path.dirname(binaries[-1])
        self.folder = tempfile.mkdtemp(prefix="smtpm-pg-")
        self.data = os.path.join(self.folder, "data")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.port = fixed_port()
        self._run("initdb", "-D", self.data, "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self.start()
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, f"{self.bin}/{tool}", *args], check=True, capture_output=True
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = os.path.join(self.folder, "log")
        self._run("pg_ctl", "-D", self.data, "-w", "-l", log, "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", self.data, "-w", "-m", mode, "stop")

    def remove(self) -> None:
        subprocess.run(
            [*self.as_user, f"{self.bin}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(self.folder, True)


def _throwaway_cluster() -> str:
    cluster = Cluster()
    atexit.register(cluster.remove)
    return cluster.dsn


def server() -> str:
    """The DSN of the maintenance database of the server the tests use."""
    global _server
    if _server is None:
        machine = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        _server = machine if _answers(machine) else _throwaway_cluster()
    return _server


def fresh_database(test: Any) -> str:
    """A new database for one test, dropped after it; returns its DSN."""
    import psycopg

    admin = server()
    name = "smtpm_test_" + secrets.token_hex(6)
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    test.addCleanup(drop)
    return admin.replace("dbname=postgres", f"dbname={name}")
