"""Real processes for end-to-end tests: ``twistd -n smtpmailer`` and the ``smtpmailer`` CLI.

Waiting is always for a condition, with a deadline; the short pause inside the loop is the
only sleeping the tests do.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("SMTPMAILER_CONFIG", None)
    return env


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.02)  # ok-sleep: polling a real process inside a deadline loop


def temporary_home(test: Any) -> str:
    """A fresh folder for one test, removed after it."""
    home = tempfile.mkdtemp(prefix="smtpm-")
    test.addCleanup(shutil.rmtree, home, True)
    return home


def started_peer(test: Any) -> Any:
    """A real SMTP server (aiosmtpd) on 127.0.0.1, an ephemeral port, for one test."""
    from tests.smtp_peer import SMTPPeer

    peer = SMTPPeer()
    peer.start()
    test.addCleanup(peer.stop)
    return peer


class Daemon:
    """One smtpmailer installation in a temporary folder: config, state_dir, log, process."""

    def __init__(
        self, directory: str, relay: str, queue: str = "", extra: str = "", status: str = ""
    ) -> None:
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.state_dir = os.path.join(self.directory, "state")
        self.config_path = os.path.join(self.directory, "smtpmailer.conf")
        self.log_path = os.path.join(self.directory, "twistd.log")
        self.write_config(relay, queue, extra, status)
        self.process: subprocess.Popen[bytes] | None = None

    def write_config(self, relay: str, queue: str = "", extra: str = "", status: str = "") -> None:
        text = (
            "[Daemon]\nstate_dir = state\nshutdown_timeout = 5s\n\n"
            "[Queue]\npoll_interval = 1s\nretry_delay = 1s\nmax_retry_delay = 2s\n"
            f"{queue}\n\n{relay}\n\n[Logging]\nstats_interval = 0\n{extra}\n"
            f"[Status]\nlisten = tcp:0:interface=127.0.0.1\n{status}\n"
        )
        with open(self.config_path, "w") as handle:
            handle.write(text)

    # --- the daemon ---

    def start(self, wait: bool = True) -> Daemon:
        self.log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
        self.process = subprocess.Popen(
            [
                os.path.join(BIN, "twistd"),
                "-n",
                "--pidfile=",
                f"--logfile={self.log_path}",
                "smtpmailer",
                "--config",
                self.config_path,
            ],
            cwd=self.directory,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if wait:
            wait_until(
                lambda: "ready:" in self.new_log() or self.process.poll() is not None,  # type: ignore[union-attr]
                what="the daemon to be ready",
            )
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited: {self.output()}\n{self.log()}")
        return self

    def output(self) -> str:
        """Whatever twistd printed on stdout/stderr (after it exited)."""
        assert self.process is not None
        out, _ = self.process.communicate(timeout=30)
        return out.decode("utf-8", "replace")

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def new_log(self) -> str:
        """What this run of the daemon logged (the file may hold earlier runs)."""
        return self.log()[getattr(self, "log_offset", 0) :]

    def kill(self, sig: int = signal.SIGKILL) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        if self.process.stdout:
            self.process.stdout.close()
        return code

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill(signal.SIGTERM)

    # --- the CLI ---

    def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "smtpmailer.cli", "--config", self.config_path, *args],
            input=stdin.decode("utf-8") if stdin is not None else None,
            capture_output=True,
            text=True,
            env=environment(),
            timeout=60,
            cwd=self.directory,
        )

    def send(self, *args: str) -> str:
        result = self.cli("send", *args)
        if result.returncode != 0:
            raise AssertionError(f"send failed ({result.returncode}): {result.stderr}")
        return result.stdout.strip()

    # --- looking into the queue file directly ---

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(os.path.join(self.state_dir, "queue.sqlite3"), timeout=30)

    def states(self) -> dict[str, int]:
        with self.db() as db:
            return dict(db.execute("SELECT state, count(*) FROM messages GROUP BY state"))

    def message(self, message_id: str) -> dict[str, Any]:
        result = self.cli("queue", "show", message_id, "--json")
        assert result.returncode == 0, result.stderr
        import json

        return dict(json.loads(result.stdout))


def fill_queue(daemon: Daemon, count: int) -> None:
    """Queue ``count`` 1 KB messages numbered by an X-Seq header, straight into the store."""
    from smtpmailer.queue.sqlite import SQLiteQueue

    os.makedirs(daemon.state_dir, exist_ok=True)
    store = SQLiteQueue(os.path.join(daemon.state_dir, "queue.sqlite3"))
    for number in range(count):
        body = (
            f"From: app@example.com\r\nTo: a@example.org\r\nX-Seq: {number}\r\n"
            f"Subject: bulk {number}\r\n\r\n" + "x" * 900 + "\r\n"
        ).encode()
        store.enqueue("app@example.com", ["a@example.org"], body, 5, float(number), 10**6)
    store.close()


def ssh_keypair(home: str, name: str) -> str:
    """An ed25519 key without a passphrase in ``home``; returns the private key's path."""
    path = os.path.join(home, name)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True, timeout=60
    )
    return path


def manhole_ssh(
    port: int, key: str, commands: str, *options: str
) -> subprocess.CompletedProcess[str]:
    """The OpenSSH client into a daemon's manhole, typing ``commands``."""
    return subprocess.run(
        [
            "ssh",
            "-tt",
            "-p",
            str(port),
            "-i",
            key,
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            *options,
            "admin@127.0.0.1",
        ],
        input=commands,
        capture_output=True,
        text=True,
        timeout=60,
    )
