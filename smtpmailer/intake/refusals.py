"""Refusals: one vocabulary for every way in, and the one table of what each way answers.

A refusal is a type that knows its ``kind``; ``ANSWERS`` maps each kind to the exit status
of ``sendmail`` (``send`` always exits 1), the SMTP reply and the HTTP status, as
DESIGN.md's "Refusals" table says. Every way in (send, sendmail through the daemon's
socket or writing the queue itself, the SMTP listener and its workers, HTTP) asks
``answer_for(error)``; none decides by an error's text. The queue's own errors carry a
``kind`` too (``full``, ``busy``, ``storage``), so the queue need not know this module.

Light on purpose: the sendmail command imports it on every call.
"""

from __future__ import annotations

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78


class Refusal(ValueError):
    """Input that cannot be queued; the text says what to fix, in one line."""

    kind = "message"


class MessageError(Refusal):
    """The input cannot become a message: malformed, or a header injection attempt."""


class BadAddress(MessageError):
    """An address that is not one; ``sender`` tells the envelope sender's from the rest."""

    kind = "address"

    def __init__(self, text: str, sender: bool = False) -> None:
        super().__init__(text)
        self.sender = sender


class MessageTooBig(MessageError):
    kind = "size"


class TooManyRecipients(MessageError):
    kind = "recipients"


class Answer:
    """What one kind of refusal is told on each way in."""

    __slots__ = ("http", "sendmail", "smtp_code", "smtp_status")

    def __init__(self, sendmail: int, smtp_code: int, smtp_status: str, http: int) -> None:
        self.sendmail = sendmail
        self.smtp_code = smtp_code
        self.smtp_status = smtp_status
        self.http = http

    def smtp(self, text: str) -> tuple[int, str]:
        """The SMTP reply (code, ``ENHANCED text``)."""
        return self.smtp_code, f"{self.smtp_status} {text}"


# kind -> answer. "full" and "busy" are the queue's (max_queue_size; the store's lock);
# "storage" is any other error of the queue, "internal" anything unforeseen.
ANSWERS: dict[str, Answer] = {
    "address": Answer(EX_DATAERR, 553, "5.1.3", 400),
    "message": Answer(EX_DATAERR, 554, "5.6.0", 400),
    "size": Answer(EX_DATAERR, 552, "5.3.4", 413),
    "recipients": Answer(EX_DATAERR, 452, "4.5.3", 400),
    "full": Answer(EX_TEMPFAIL, 452, "4.3.1", 507),
    "busy": Answer(EX_TEMPFAIL, 452, "4.3.1", 503),
    "storage": Answer(EX_CANTCREAT, 451, "4.3.0", 503),
    "internal": Answer(EX_TEMPFAIL, 451, "4.3.0", 500),
}
# The envelope sender's address gets its own enhanced code (RFC 3463: bad sender's syntax).
SENDER_ADDRESS = Answer(EX_DATAERR, 553, "5.1.7", 400)


def kind_of(error: object) -> str:
    kind = getattr(error, "kind", None)
    return kind if isinstance(kind, str) and kind in ANSWERS else "internal"


def answer_for(error: object) -> Answer:
    if isinstance(error, BadAddress) and error.sender:
        return SENDER_ADDRESS
    return ANSWERS[kind_of(error)]


def refusal_from(kind: str, text: str) -> Exception:
    """The error a refusal of ``kind`` was, rebuilt from its words (the submission
    worker's channel carries kind and text between processes)."""
    from smtpmailer.queue import QueueError, QueueFull, StoreBusy

    types: dict[str, type[Exception]] = {
        "message": MessageError,
        "address": BadAddress,
        "size": MessageTooBig,
        "recipients": TooManyRecipients,
        "full": QueueFull,
        "busy": StoreBusy,
        "storage": QueueError,
    }
    return types.get(kind, QueueError)(text)
