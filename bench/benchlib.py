"""What the bench scripts share: ports, waiting, Postfix's smtp-sink, filling a queue."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO, Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
BIN = os.path.dirname(sys.executable)
# Held while a bench has the machine's one Postfix configured for itself.
POSTFIX_LOCK = os.path.join(tempfile.gettempdir(), "smtpmailer-bench-postfix.lock")
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tools.ports import fixed_port  # noqa: E402


def free_port() -> int:
    """A port for a server told it before it binds it (tools/ports.py says why it is not
    one that bind(0) gives)."""
    return fixed_port()


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)


def find_or_install(command: str, package: str) -> str:
    """The path of a system tool the benches drive; Debian's package is installed (without
    recommends) when it is missing."""
    for candidate in (shutil.which(command), f"/usr/sbin/{command}"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    print(f"{command} not found: installing Debian's {package} package", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*prefix, "apt-get", "update", "-qq"], check=True, env=env)
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    subprocess.run([*prefix, *install], check=True, env=env)
    return f"/usr/sbin/{command}"


def start_sink() -> tuple[subprocess.Popen[bytes], int]:
    """Postfix's smtp-sink on an ephemeral loopback port: it accepts and discards."""
    sink = find_or_install("smtp-sink", "postfix")
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [sink, *user, f"127.0.0.1:{port}", "256"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    if not _started(process, port, "smtp-sink"):
        raise SystemExit("smtp-sink did not start")
    return process, port


def _started(process: subprocess.Popen[bytes], port: int, what: str) -> bool:
    """Wait until ``process`` listens on ``port`` (True) or exits (False)."""

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return process.poll() is not None

    wait_for(listening, 10, f"{what} to listen")
    return process.poll() is None


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as handle:
        return handle.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system time of a process so far (its children included once they ended)."""
    fields = _stat_fields(pid)
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(name))[1]), []).append(int(name))
            except (OSError, IndexError):
                continue  # it ended while we looked
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """User + system time of ``root`` and every live descendant, each with its reaped
    children: a process that ended has been added to its parent's cutime/cstime, so the
    difference of two readings is the tree's CPU between them, however its processes came
    and went (Postfix's smtpd and smtp processes, our workers)."""
    total = 0.0
    for pid in process_tree(root):
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue  # it ended while we looked: its parent's cutime has it
    return total


def status_kib(pid: int, field: str) -> int:
    """A memory figure of /proc/PID/status (``VmHWM``, ``VmRSS``), in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def tree_rss_kib(root: int) -> int:
    """Resident memory of ``root`` and its descendants (our submission workers)."""
    return sum(status_kib(pid, "VmRSS") for pid in process_tree(root))


def peak_rss_kib(pid: int) -> int:
    return status_kib(pid, "VmHWM")


def start_http_sink(home: str) -> tuple[subprocess.Popen[bytes], int]:
    """The HTTP counterpart of smtp-sink: nginx on an ephemeral loopback port answering
    SendGrid's ``POST /v3/mail/send`` with 202 and an ``X-Message-Id``, and discarding the
    body. One worker process, keep-alive without limit, no logs."""
    nginx = find_or_install("nginx", "nginx-light")
    port = free_port()
    config = os.path.join(home, "nginx.conf")
    user = "user root;\n" if os.geteuid() == 0 else ""
    with open(config, "w") as handle:
        handle.write(
            f"{user}daemon off;\nworker_processes 1;\npid {home}/nginx.pid;\n"
            f"error_log {home}/nginx-error.log warn;\n"
            "events { worker_connections 1024; }\n"
            "http {\n"
            f"  access_log off;\n  client_body_temp_path {home}/body;\n"
            f"  proxy_temp_path {home}/proxy;\n  fastcgi_temp_path {home}/fastcgi;\n"
            f"  uwsgi_temp_path {home}/uwsgi;\n  scgi_temp_path {home}/scgi;\n"
            "  keepalive_requests 1000000;\n  keepalive_timeout 120s;\n"
            "  client_max_body_size 30m;\n"
            f"  server {{\n    listen 127.0.0.1:{port};\n"
            "    location = /v3/mail/send {\n"
            "      add_header X-Message-Id $request_id always;\n"
            "      return 202;\n    }\n"
            '    location / { return 404 \'{"errors":[{"message":"Not found"}]}\'; }\n'
            "  }\n}\n"
        )
    process = subprocess.Popen(
        [nginx, "-c", config, "-p", home], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    if not _started(process, port, "nginx"):
        with open(os.path.join(home, "nginx-error.log")) as log:
            raise SystemExit(f"nginx did not start: {log.read()[-500:]}")
    return process, port


def message(number: int, size: int) -> bytes:
    head = (
        f"From: bench@example.com\r\nTo: sink@example.org\r\nSubject: bench {number}\r\n"
        f"Message-ID: <{number}@bench.example>\r\n\r\n"
    ).encode()
    line = b"x" * 76 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def store_at(path: str) -> Any:
    """The SQLite queue file at ``path``, opened as the daemon opens it (open_store)."""
    from smtpmailer.config import parse_config
    from smtpmailer.queue.backends import open_store

    config = parse_config(f"[Queue]\npath = {path}\n[Relay]\nhost = unused\n", path + ".conf")
    return open_store(config)


def fill_queue(path: str, count: int, size: int) -> float:
    """Queue ``count`` messages through the store, one durable commit each; seconds taken."""
    store = store_at(path)
    data = [message(i, size) for i in range(count)]
    started = time.perf_counter()
    for body in data:
        store.enqueue("bench@example.com", ["sink@example.org"], body, 5, time.time(), 10**9)
    elapsed = time.perf_counter() - started
    store.close()
    return elapsed


POSTFIX_QUEUES = ("incoming", "active", "deferred", "maildrop", "hold")
SOURCE = "/usr/sbin/smtp-source"


def postfix_queue_size() -> int:
    """Files in Postfix's queue folders: one a message."""
    return sum(
        len(files)
        for queue in POSTFIX_QUEUES
        for _, _, files in os.walk(f"/var/spool/postfix/{queue}")
    )


def run(*command: str, check: bool = True) -> str:
    return subprocess.run(command, check=check, capture_output=True, text=True).stdout


class Postfix:
    """Debian's Postfix, pointed at the sink for the duration of the bench."""

    def __init__(self, sink_port: int, reuse: bool = True) -> None:
        """``reuse``: end to end, clients send several messages a connection (else one)."""
        self.sink_port = sink_port
        self.reuse = reuse
        self.cpu_seconds = 0.0  # all of Postfix's processes, during the last measure
        self.client_cpu_seconds = 0.0  # smtp-source's, end to end
        self.port = free_port()
        self.backup = ""
        self._lock: IO[str] | None = None

    def __enter__(self) -> Postfix:
        # There is one Postfix: a second bench (tests run in parallel) waits for the first
        # to put its configuration back, rather than back up the first's changes.
        self._lock = open(POSTFIX_LOCK, "w")  # noqa: SIM115 (held until __exit__)
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.backup = tempfile.mkdtemp(prefix="smtpm-postfix-")
        for name in ("main.cf", "master.cf"):
            shutil.copy2(f"/etc/postfix/{name}", os.path.join(self.backup, name))
        run("postfix", "stop", check=False)
        settings = {
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "mydestination": "",
            "smtputf8_enable": "no",
            "defer_transports": "",  # a drain that was cut short may have left it set
        }
        try:
            run("postconf", "-e", *(f"{k}={v}" for k, v in settings.items()))
            run("postconf", "-MX", "smtp/inet", check=False)
            run("postconf", "-Me", f"{self.port}/inet={self.port} inet n - y - - smtpd")
            run("postsuper", "-d", "ALL", check=False)
            run("postfix", "start")
            wait_for(lambda: listening(self.port), 30, "Postfix to listen")
        except BaseException:
            self.__exit__()  # put the configuration back before giving up
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            run("postfix", "stop", check=False)
            for name in ("main.cf", "master.cf"):
                shutil.copy2(os.path.join(self.backup, name), f"/etc/postfix/{name}")
            run("postsuper", "-d", "ALL", check=False)
            shutil.rmtree(self.backup, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.close()  # releases the flock
                self._lock = None

    def defer(self, on: bool) -> None:
        run("postconf", "-e", f"defer_transports={'smtp' if on else ''}")
        run("postfix", "reload")

    def master_pid(self) -> int:
        with open("/var/spool/postfix/pid/master.pid") as handle:
            return int(handle.read().split()[0])

    def drain(self, messages: int, size: int) -> float:
        self.defer(True)
        inject(self.port, messages, size)
        wait_for(lambda: postfix_queue_size() >= messages, 300, "Postfix to hold the queue")
        self.defer(False)
        self.client_cpu_seconds = 0.0  # filled before "go"
        master = self.master_pid()
        started = time.perf_counter()
        cpu = tree_cpu_seconds(master)
        run("postqueue", "-f")
        wait_for(lambda: postfix_queue_size() == 0, 600, "Postfix to drain")
        elapsed = time.perf_counter() - started
        self.cpu_seconds = tree_cpu_seconds(master) - cpu
        return messages / elapsed

    def end_to_end(self, messages: int, size: int) -> float:
        master = self.master_pid()
        started = time.perf_counter()
        cpu = tree_cpu_seconds(master)
        self.client_cpu_seconds = inject(self.port, messages, size, self.reuse)
        wait_for(lambda: postfix_queue_size() == 0, 600, "Postfix to relay everything")
        elapsed = time.perf_counter() - started
        self.cpu_seconds = tree_cpu_seconds(master) - cpu
        return messages / elapsed


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def inject(port: int, messages: int, size: int, reuse: bool = True) -> float:
    """smtp-source: 16 sessions, pipelined; several messages per connection with ``reuse``,
    else one connection a message (as most applications send). Returns smtp-source's CPU
    seconds (user + system, from wait4): the client's share of the machine."""
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [
                SOURCE,
                "-s",
                "16",
                *(["-d"] if reuse else []),
                "-m",
                str(messages),
                "-l",
                str(size),
                "-f",
                "bench@example.com",
                "-t",
                "sink@example.org",
                f"127.0.0.1:{port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
        overdue = threading.Timer(600, process.kill)
        overdue.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            overdue.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode == -signal.SIGKILL:
            raise SystemExit("smtp-source did not finish within 600 s")
        if process.returncode != 0:
            output.seek(0)
            raise SystemExit(f"smtp-source failed: {output.read().strip()}")
    return usage.ru_utime + usage.ru_stime


class Smtpmailer:
    """Our daemon relaying to the sink, timed as bench/relay times Postfix. ``attach`` is
    called with the daemon's pid once it runs, and what it returns is called before the
    daemon stops (bench/profile starts and stops py-spy there)."""

    def __init__(
        self,
        sink_port: int,
        attach: Callable[[int], Callable[[], None]] | None = None,
        connections: int = 4,
        relay: str | None = None,
        tuned: bool = True,
        reuse: bool = True,
        instant: bool = False,
    ) -> None:
        """``relay`` replaces the SMTP relay to the sink (an ``[API:NAME]`` section).
        ``tuned``: warn logging, no statistics line, larger batches, ``connections`` to the
        sink; else the configuration a user runs (the defaults, the status service on).
        ``reuse``: end to end, clients send several messages a connection (else one).
        ``instant``: the SMTP relay answers 250 at once, in the daemon (instant_delivery.py)."""
        self.instant = instant
        self.sink_port = sink_port
        self.connections = connections
        self.attach = attach
        self.tuned = tuned
        self.reuse = reuse
        self.relay = relay or (
            f"[Relay]\nhost = 127.0.0.1\nport = {sink_port}\nsecurity = none\n"
            + (
                f"max_connections = {connections}\nmax_messages_per_connection = 1000\n"
                if tuned
                else ""
            )
        )
        self._detach: Callable[[], None] | None = None
        # The daemon's CPU seconds from "go" to the last message, and its peak RSS.
        self._cpu_at_go = 0.0
        self.cpu_seconds = 0.0
        self.client_cpu_seconds = 0.0  # smtp-source's, end to end
        self.peak_rss_kib = 0

    def start(self, home: str, submission: int | None) -> tuple[subprocess.Popen[bytes], str]:
        config = os.path.join(home, "smtpmailer.conf")
        listen = f"tcp:{submission}:interface=127.0.0.1" if submission else ""
        with open(config, "w") as handle:
            if self.tuned:
                handle.write(
                    "[Daemon]\nstate_dir = state\n"
                    "[Queue]\nbatch_size = 200\nmax_queue_size = 1000000\n"
                    f"{self.relay}"
                    f"[Submission]\nlisten = {listen}\n[Status]\nlisten =\n"
                    "[Logging]\nlevel = warn\nstats_interval = 0\n"
                )
            else:  # only what must be said: where, the relay, the ports
                handle.write(
                    f"[Daemon]\nstate_dir = state\n{self.relay}[Submission]\nlisten = {listen}\n"
                    f"[Status]\nlisten = tcp:{free_port()}:interface=127.0.0.1\n"
                    "[Manhole]\nlisten =\n"
                )
        os.makedirs(os.path.join(home, "state"), exist_ok=True)
        # twistd itself, or after instant_delivery.py replaced the SMTP transport.
        twistd = (
            [sys.executable, "-m", "instant_delivery"]
            if self.instant
            else [os.path.join(BIN, "twistd")]
        )
        process = subprocess.Popen(
            [
                *twistd,
                "-n",
                "--pidfile=",
                f"--logfile={home}/twistd.log",
                "smtpmailer",
                "--config",
                config,
            ],
            cwd=home,
            env=dict(
                os.environ, PYTHONPATH=os.pathsep.join((REPO, HERE) if self.instant else (REPO,))
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if self.attach is not None:
            self._detach = self.attach(process.pid)
        return process, os.path.join(home, "state", "queue.sqlite3")

    def stop(self, daemon: subprocess.Popen[bytes]) -> None:
        if self._detach is not None:
            self._detach()
            self._detach = None
        daemon.terminate()
        daemon.wait(60)

    def _rate(
        self, daemon: subprocess.Popen[bytes], reader: Any, messages: int, started: float
    ) -> float:
        """Wait until all are sent; messages per second since ``started``."""
        wait_for(lambda: reader.counts()["sent"] >= messages, 600, "smtpmailer to relay all")
        elapsed = time.perf_counter() - started
        self.cpu_seconds = tree_cpu_seconds(daemon.pid) - self._cpu_at_go
        self.peak_rss_kib = peak_rss_kib(daemon.pid)
        reader.close()
        self.stop(daemon)
        return messages / elapsed

    def drain(self, messages: int, size: int) -> float:
        home = tempfile.mkdtemp(prefix="smtpm-relay-")
        try:
            os.makedirs(os.path.join(home, "state"))
            path = os.path.join(home, "state", "queue.sqlite3")
            fill_queue(path, messages, size)
            reader = store_at(path)
            reader.hold_all()  # as Postfix's deferred queue: full, and the daemon running
            daemon, _ = self.start(home, None)
            wakeup = os.path.join(home, "state", "wakeup.sock")
            wait_for(lambda: os.path.exists(wakeup), 60, "smtpmailer to start")
            started = time.perf_counter()
            self._cpu_at_go = tree_cpu_seconds(daemon.pid)
            self.client_cpu_seconds = 0.0  # filled before "go"
            reader.release_all(time.time())  # "go", like postqueue -f
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as poke:
                poke.sendto(b"wake", wakeup)
            return self._rate(daemon, reader, messages, started)
        finally:
            shutil.rmtree(home, ignore_errors=True)

    def end_to_end(self, messages: int, size: int) -> float:
        home = tempfile.mkdtemp(prefix="smtpm-relay-")
        port = free_port()
        try:
            daemon, path = self.start(home, port)
            wait_for(lambda: listening(port), 60, "the submission listener")
            reader = store_at(path)
            started = time.perf_counter()
            self._cpu_at_go = tree_cpu_seconds(daemon.pid)
            self.client_cpu_seconds = inject(port, messages, size, self.reuse)
            return self._rate(daemon, reader, messages, started)
        finally:
            shutil.rmtree(home, ignore_errors=True)
