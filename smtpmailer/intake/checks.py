"""The one way into the queue: every input path checks and enqueues through here."""

from __future__ import annotations

from smtpmailer.config import Config
from smtpmailer.intake import rewrite
from smtpmailer.intake.refusals import MessageTooBig, TooManyRecipients
from smtpmailer.message import Envelope, normalize_address
from smtpmailer.queue import QueueStore
from smtpmailer.units import format_size


def check_envelope(config: Config, envelope: Envelope) -> Envelope:
    """Size, recipient count and addresses, before anything touches the queue; a
    Refusal (MessageTooBig, TooManyRecipients, BadAddress) if wrong. Then [Rewrite]'s
    rules, so every way in commits the same rewritten sender."""
    limit = config.queue.max_message_size
    if len(envelope.data) > limit:
        raise MessageTooBig(
            f"message is {len(envelope.data)} bytes, over max_message_size ({format_size(limit)})"
        )
    most = config.submission.max_recipients
    if len(envelope.recipients) > most:
        raise TooManyRecipients(
            f"{len(envelope.recipients)} recipients, over max_recipients ({most})"
        )
    checked = Envelope(
        # An empty sender is SMTP's null reverse-path (<>), as bounces use.
        # UTF-8 local parts are taken here; delivering them needs a relay with SMTPUTF8.
        normalize_address(envelope.sender, "sender", allow_utf8=True) if envelope.sender else "",
        tuple(normalize_address(r, "recipient", allow_utf8=True) for r in envelope.recipients),
        envelope.data,
        envelope.meta,
    )
    return rewrite.apply(config.rewrite, checked)


def enqueue_envelope(
    store: QueueStore, config: Config, envelope: Envelope, priority: int, now: float
) -> str:
    """Check, commit durably, and return the queue id.

    Raises a Refusal for bad input and QueueFull/QueueError when the queue cannot take
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
        meta=checked.meta,
    )


def wake_daemon(config: Config) -> bool:
    """Tell a running daemon that new mail is due, so it need not wait for its next poll.

    Best effort: a daemon that is not running, or a socket we may not write, changes
    nothing (the poller finds the mail anyway).
    """
    from smtpmailer.queue.backends import wakeups_for

    return wakeups_for(config).notify()
