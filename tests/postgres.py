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
import socket
import subprocess
import tempfile
from typing import Any

_server: str | None = None


def _answers(dsn: str) -> bool:
    import psycopg

    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def _throwaway_cluster() -> str:
    """initdb and pg_ctl from /usr/lib/postgresql/*/bin, run as the postgres account when
    the tests run as root (PostgreSQL refuses to run as root)."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries:
        raise AssertionError(
            "no PostgreSQL answers on 127.0.0.1:5432 and Debian's postgresql is not "
            "installed (make test installs it)"
        )
    bin_dir = os.path.dirname(binaries[-1])
    folder = tempfile.mkdtemp(prefix="smtpm-pg-")
    data = os.path.join(folder, "data")
    as_user: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run(
        [*as_user, f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_user,
            f"{bin_dir}/pg_ctl",
            "-D",
            data,
            "-w",
            "-l",
            os.path.join(folder, "log"),
            "-o",
            f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )

    def stop() -> None:
        subprocess.run(
            [*as_user, f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(folder, True)

    atexit.register(stop)
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres"


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
