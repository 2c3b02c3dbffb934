"""The one way into the queue: every input path checks and enqueues through here."""

from __future__ import annotations

import os
import socket

from smtpmailer.config import Config
from smtpmailer.message import Envelope, MessageError, normalize_address
from smtpmailer.queue import QueueStore
from smtpmailer.units import format_size


def check_envelope(config: Config, envelope: Envelope) -> Envelope:
    """Size and addresses, before anything touches the queue; MessageError if wrong."""
    limit = config.queue.max_message_size
    if len(envelope.data) > limit:
        raise MessageError(
            f"message is {len(envelope.data)} bytes, over max_message_size ({format_size(limit)})"
        )
    return Envelope(
        # An empty sender is SMTP's null reverse-path (<>), as bounces use.
        # UTF-8 local parts are taken here; delivering them needs a relay with SMTPUTF8.
        normalize_address(envelope.sender, "sender", allow_utf8=True) if envelope.sender else "",
        tuple(normalize_address(r, "recipient", allow_utf8=True) for r in envelope.recipients),
        envelope.data,
    )


def enqueue_envelope(
    store: QueueStore, config: Config, envelope: Envelope, priority: int, now: float
) -> str:
    """Check, commit durably, and return the queue id.

    Raises MessageError for bad input and QueueFull/QueueError when the queue cannot take
    it; in every such case nothing was written.
    """
    checked = check_envelope(config, envelope)
    return store.enqueue(
        checked.sender,
        list(checked.recipients),
        checked.data,
        priority,
        now,
        config.queue.max_queue_size,
    )


def wake_daemon(config: Config) -> bool:
    """Tell a running daemon that new mail is due, so it need not wait for its next poll.

    Best effort: a daemon that is not running, or a socket we may not write, changes
    nothing (the poller finds the mail anyway).
    """
    path = config.wakeup_socket
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        try:
            sock.sendto(b"wake", path)
        except OSError:
            return False
    return True
