"""Local capture: deliver each message into a Maildir instead of a relay.

For developers testing their applications' mail and for ``make run``: every message lands as
one file in ``PATH/new`` that any mail reader opens (``mutt -f PATH``).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed

from smtpmailer.config import MaildirRelayConfig
from smtpmailer.delivery.transport import Follow, Session, TransportContext
from smtpmailer.queue import RCPT_SENT, Lease, RecipientResult

_counter = 0


def ensure_maildir(path: str) -> None:
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)


def deliver_to_maildir(path: str, lease: Lease) -> tuple[RecipientResult, ...]:
    """Write, fsync, rename into ``new/`` (the Maildir protocol); blocking, run off-reactor."""
    global _counter
    _counter += 1
    ensure_maildir(path)
    now = time.time()
    name = f"{int(now)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{_counter}.{lease.id}." + (
        socket.gethostname().replace("/", "_").replace(":", "_")
    )
    envelope = (
        f"Return-Path: <{lease.sender}>\n"
        f"X-Envelope-To: {', '.join(f'<{r}>' for r in lease.recipients)}\n"
        f"X-Queue-Id: {lease.id}\n"
    ).encode()
    temporary = os.path.join(path, "tmp", name)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # mail: 0600
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(envelope + lease.data.replace(b"\r\n", b"\n"))
        handle.flush()
        os.fsync(handle.fileno())
    os.rename(temporary, os.path.join(path, "new", name))
    directory = os.open(os.path.join(path, "new"), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    reply = f"250 delivered to {os.path.join(path, 'new', name)}"
    return tuple(RecipientResult(r, RCPT_SENT, reply) for r in lease.recipients)


class MaildirSession:
    """The Maildir 'connection': each delivery is a file written on a worker thread."""

    def __init__(self, path: str, blocking: Callable[..., Deferred[Any]]) -> None:
        self.path = path
        self.label = f"maildir:{path}"
        self.delivered = 0
        self._blocking = blocking

    def deliver(
        self, lease: Lease, follow: Follow | None = None
    ) -> Deferred[tuple[RecipientResult, ...]]:
        """``follow`` is never called: there is no connection to pipeline on."""
        self.delivered += 1
        return self._blocking(deliver_to_maildir, self.path, lease)

    def quit(self) -> Deferred[None]:
        return succeed(None)

    def abort(self) -> None:
        pass


class MaildirTransport:
    def __init__(self, relay: MaildirRelayConfig, context: TransportContext) -> None:
        assert context.blocking is not None, "the Maildir transport writes off the reactor"
        self.relay = relay
        self._blocking = context.blocking
        ensure_maildir(relay.path)

    def open(self) -> Deferred[Session]:
        return succeed(MaildirSession(self.relay.path, self._blocking))

    def describe(self, error: BaseException) -> str:
        if isinstance(error, OSError):
            return f"maildir {self.relay.path}: {error.strerror or error}"
        return f"{type(error).__name__}: {error}"

    def retire(self) -> None:
        """Nothing to release: a capture holds no connection."""


def make_transport(relay: Any, context: TransportContext) -> MaildirTransport:
    return MaildirTransport(relay, context)
