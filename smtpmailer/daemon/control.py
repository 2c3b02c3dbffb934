"""Managing the background daemon: start, stop, status, reload.

A daemon is found through its pidfile, or, when it runs without one (``make run``,
``twistd -n --pidfile=``, systemd), through the lock it holds in state_dir.
``status`` exits as LSB init scripts do: 0 running, 3 not running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import attrs

from smtpmailer.config import DaemonConfig, load_config
from smtpmailer.config.declare import declared
from smtpmailer.daemon import lock as daemon_lock
from smtpmailer.ini import ConfigError, read_leniently
from smtpmailer.paths import config_folder, default_config_path, resolve_path

EXIT_NOT_RUNNING = 3
# How long `stop` waits beyond shutdown_timeout for the process to be gone.
STOP_MARGIN = 10.0
RELOAD_WAIT = 30.0
START_WAIT = 120.0


@attrs.frozen
class Result:
    code: int
    message: str


@attrs.frozen
class Target:
    """What managing a daemon needs: its config file and its [Daemon] settings."""

    config_path: str
    daemon: DaemonConfig
    problem: str | None = None


def find_daemon(path: str | None) -> Target:
    """The daemon's settings, even from a config file that has since been broken: stop,
    status and reload must still reach a daemon that runs on the previous, valid file."""
    path = path or default_config_path()
    try:
        config = load_config(path)
        return Target(config.path, config.daemon)
    except ConfigError as error:
        problem = str(error)
    try:
        with open(path, encoding="utf-8") as handle:
            written = read_leniently(handle.read(), "Daemon")
    except (OSError, UnicodeDecodeError):
        written = {}
    base = config_folder(path)
    values: dict[str, object] = {}
    for field, spec in declared(DaemonConfig):
        default = spec.value.parse(spec.default or "")
        try:  # whatever is wrong elsewhere, a readable [Daemon] value is the daemon's
            value = spec.value.parse(written.get(field) or spec.default or "")
        except ValueError:
            value = default
        values[field] = resolve_path(base, value) if isinstance(value, str) else value
    daemon = DaemonConfig(**values)  # type: ignore[arg-type]
    return Target(path, daemon, problem)


def read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def is_running(pid: int) -> bool:
    """The process exists, and (where /proc tells) it is a twistd/smtpmailer process, not
    an unrelated one that inherited the number of a crashed daemon."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read()
    except OSError:
        return True
    return b"twistd" in command or b"smtpmailer" in command


def running_pid(pidfile: str) -> int | None:
    pid = read_pid(pidfile)
    return pid if pid is not None and is_running(pid) else None


def daemon_pid(target: Target, pidfile: str) -> int | None:
    """The running daemon's PID: from the pidfile, else from the state_dir lock (0 when
    the lock is held but the PID is not written yet), else None."""
    pid = running_pid(pidfile)
    if pid is not None:
        return pid
    return daemon_lock.holder(target.daemon.state_dir)


def _wait(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


def status(target: Target, pidfile: str) -> Result:
    pid = daemon_pid(target, pidfile)
    if pid is None:
        return Result(EXIT_NOT_RUNNING, "Daemon is not running")
    return Result(0, f"Daemon is running (PID: {pid or 'starting'})")


def start(target: Target, pidfile: str) -> Result:
    """Run twistd in the background; it returns once our services started or failed."""
    if target.problem:
        return Result(1, target.problem)
    pid = daemon_pid(target, pidfile)
    if pid is not None:
        return Result(1, f"Daemon is already running (PID: {pid or 'starting'})")
    log_file = target.daemon.log_file
    for path in (pidfile, log_file):
        try:
            os.makedirs(os.path.dirname(path), mode=0o750, exist_ok=True)
        except OSError as error:
            return Result(1, f"cannot create {os.path.dirname(path)}: {error.strerror}")
    command = [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        f"--pidfile={pidfile}",
        f"--logfile={log_file}",
        "smtpmailer",
        "--config",
        os.path.abspath(target.config_path),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_WAIT)
    except subprocess.TimeoutExpired:
        return Result(
            1, f"the daemon did not report ready within {START_WAIT:.0f}s; see {log_file}"
        )
    if done.returncode != 0:
        return Result(1, f"Daemon failed to start: {_start_failure(done, log_file)}")
    pid = read_pid(pidfile)
    return Result(0, f"Daemon started (PID: {pid}), logging to {log_file}")


def _start_failure(done: subprocess.CompletedProcess[str], log_file: str) -> str:
    """The reason twistd gave. In background mode its child reports the error through a
    pipe, cut at 100 characters ("An error has occurred: b'...'"); the whole line is then
    taken from the log file when it is there already."""
    import ast

    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("An error has occurred: "):
            try:
                reason = ast.literal_eval(line.split(": ", 1)[1]).decode("utf-8", "replace")
            except (ValueError, SyntaxError, AttributeError):
                reason = line.split(": ", 1)[1]
            try:
                with open(log_file, encoding="utf-8", errors="replace") as handle:
                    whole = [entry for entry in handle if reason in entry]
            except OSError:
                whole = []
            return whole[-1].split("] ", 1)[-1].strip() if whole else reason
    return lines[-1] if lines else f"twistd exited with status {done.returncode}"


def stop(target: Target, pidfile: str) -> Result:
    """SIGTERM, then wait: in-flight deliveries get shutdown_timeout to finish."""
    pid = daemon_pid(target, pidfile)
    if pid is None:
        return Result(0, "Daemon is not running")
    if pid == 0:
        return Result(1, "Daemon is starting; try again in a moment")
    os.kill(pid, signal.SIGTERM)
    limit = target.daemon.shutdown_timeout + STOP_MARGIN
    if _wait(lambda: not is_running(pid) and daemon_pid(target, pidfile) is None, limit):
        return Result(0, f"Daemon stopped (PID: {pid})")
    return Result(1, f"Daemon (PID: {pid}) did not stop within {limit:.0f}s")


def _reload_status(target: Target) -> dict[str, object]:
    try:
        with open(os.path.join(target.daemon.state_dir, "reload.json")) as handle:
            return dict(json.load(handle))
    except (OSError, ValueError):
        return {}


def reload(target: Target, pidfile: str) -> Result:
    """SIGHUP, then read the outcome the daemon writes back to state_dir/reload.json."""
    pid = daemon_pid(target, pidfile)
    if pid is None:
        return Result(EXIT_NOT_RUNNING, "Daemon is not running")
    if pid == 0:
        return Result(1, "Daemon is starting; try again in a moment")
    before = _reload_status(target).get("generation", 0)
    os.kill(pid, signal.SIGHUP)
    reported: dict[str, object] = {}

    def answered() -> bool:
        reported.update(_reload_status(target))
        return reported.get("generation", 0) != before and reported.get("pid") == pid

    if not _wait(answered, RELOAD_WAIT):
        return Result(
            1,
            f"sent SIGHUP to {pid}, but it did not report back within "
            f"{RELOAD_WAIT:.0f}s; see {target.daemon.log_file}",
        )
    return Result(0 if reported.get("ok") else 1, str(reported.get("message")))
