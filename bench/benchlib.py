"""What the bench scripts share: ports, waiting, Postfix's smtp-sink, filling a queue."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
if REPO not in sys.path:
    sys.path.insert(0, REPO)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def find_smtp_sink() -> str:
    for candidate in (shutil.which("smtp-sink"), "/usr/sbin/smtp-sink"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    print("smtp-sink not found: installing Debian's postfix package", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*prefix, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*prefix, "apt-get", "install", "-y", "-qq", "postfix"], check=True, env=env)
    return "/usr/sbin/smtp-sink"


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    """Postfix's smtp-sink on an ephemeral loopback port: it accepts and discards."""
    sink = find_smtp_sink()
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [sink, *user, f"127.0.0.1:{port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return process.poll() is not None

    wait_for(listening, 10, "smtp-sink to listen")
    if process.poll() is not None:
        raise SystemExit("smtp-sink did not start")
    return process, port


def message(number: int, size: int) -> bytes:
    head = (
        f"From: bench@example.com\r\nTo: sink@example.org\r\nSubject: bench {number}\r\n"
        f"Message-ID: <{number}@bench.example>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def fill_queue(path: str, count: int, size: int) -> float:
    """Queue ``count`` messages through the store, one durable commit each; seconds taken."""
    from smtpmailer.queue.sqlite import SQLiteQueue

    store = SQLiteQueue(path)
    data = [message(i, size) for i in range(count)]
    started = time.perf_counter()
    for body in data:
        store.enqueue("bench@example.com", ["sink@example.org"], body, 5, time.time(), 10**9)
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed
