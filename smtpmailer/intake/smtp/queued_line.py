"""The submission listener's line for a message it queued, said by the process that
committed the message: the listener itself when it commits in the daemon, and the daemon
for a submission worker's message, as soon as the commit answers. Said by the worker, the
line came back through the channel after the daemon had already begun the delivery, and
its delivery line could come first in the log."""

from __future__ import annotations

from smtpmailer.logs import log


def log_queued(message_id: str, sender: str, recipients: int, peer: str) -> None:
    """Made into its text here, so the log observer writes it without parsing a format
    (15.7 against 6.0 us a line); its fields stay in the event for the JSON log."""
    log.info(
        "{line}",
        line=f"submission: queued {message_id} from <{sender}> for {recipients} recipient(s)"
        f" ({peer})",
        id=message_id,
        sender=sender,
        n=recipients,
        peer=peer,
    )
