"""The daemon lock in state_dir: one daemon per queue, and how commands find it.

The daemon holds an exclusive flock on ``state_dir/smtpmailer.lock`` for its whole life
(taken before twistd forks; the child inherits it) and writes its PID into the file once
it runs. ``status``, ``stop`` and ``reload`` then find a daemon that was started without a
pidfile (``make run``, ``twistd -n --pidfile=``, systemd) by asking whether the lock is
held, and read the PID from it.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import IO

LOCK_FILE = "smtpmailer.lock"


class LockError(Exception):
    """The lock could not be taken; the message says why in one line."""


class AlreadyLocked(LockError):
    pass


def lock_path(state_dir: str) -> str:
    return os.path.join(state_dir, LOCK_FILE)


def take(state_dir: str) -> IO[str]:
    """Take the exclusive lock, or raise AlreadyLocked / LockError."""
    path = lock_path(state_dir)
    try:
        lock = open(path, "a+")  # noqa: SIM115 (held for the daemon's life)
    except OSError as error:
        raise LockError(f"{path}: {error.strerror}") from None
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        lock.close()
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise AlreadyLocked(
                f"another smtpmailer daemon is already using state_dir {state_dir}"
            ) from None
        raise LockError(f"{path}: {error.strerror}") from None
    return lock


def write_pid(lock: IO[str], pid: int | None = None) -> None:
    """Record the PID of the process that runs the daemon (after twistd's fork)."""
    lock.seek(0)
    lock.truncate()
    lock.write(f"{pid or os.getpid()}\n")
    lock.flush()


def holder(state_dir: str) -> int | None:
    """The PID of the daemon holding the lock (0 if it has not written it yet), or None
    when no daemon holds it."""
    try:
        handle = open(lock_path(state_dir))  # noqa: SIM115 (closed below)
    except OSError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            text = handle.read().strip()
            return int(text) if text.isdigit() else 0
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return None
