"""The queue's value types and the QueueStore interface that every backend implements."""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterator, Sequence
from typing import Protocol

import attrs

QUEUED = "queued"
DEFERRED = "deferred"
ACTIVE = "active"
HELD = "held"
FAILED = "failed"
SENT = "sent"
STATES = (QUEUED, DEFERRED, ACTIVE, HELD, FAILED, SENT)
# States that still count against max_queue_size: mail we owe someone.
PENDING_STATES = (QUEUED, DEFERRED, ACTIVE, HELD)

# Per-recipient states.
RCPT_PENDING = "pending"
RCPT_SENT = "sent"
RCPT_FAILED = "failed"

PRIORITY_NAMES = {"low": 1, "normal": 5, "high": 9}


def parse_priority(text: str) -> int:
    """``high``/``normal``/``low`` or a digit 0-9 (9 is the most urgent)."""
    value = text.strip().lower()
    if value in PRIORITY_NAMES:
        return PRIORITY_NAMES[value]
    if value.isdigit() and 0 <= int(value) <= 9:
        return int(value)
    raise ValueError(f"priority {text!r} is not high, normal, low or 0-9")


def priority_name(value: int) -> str:
    for name, number in PRIORITY_NAMES.items():
        if number == value:
            return name
    return str(value)


class QueueError(Exception):
    """The queue cannot do what was asked; the message says why in one line.

    ``kind`` is how the ways in tell refusals apart (intake/refusals.py)."""

    kind = "storage"


class QueueFull(QueueError):
    """max_queue_size is reached: nothing was written."""

    kind = "full"


class StoreBusy(QueueError):
    """Another process held the store's write lock for longer than we wait."""

    kind = "busy"


class NoSpace(QueueError):
    """The store's disk (or quota) is full: nothing was written. Answered like a full
    queue: try again later."""

    kind = "full"


class QueueCorrupt(QueueError):
    """The store's file is damaged; the message names it and what to do."""


class NoSuchMessage(QueueError):
    pass


class WrongState(QueueError):
    """The operation does not apply to the message in its current state."""


@attrs.frozen
class Recipient:
    address: str
    state: str
    last_error: str | None = None


@attrs.frozen
class Attempt:
    """One delivery attempt as kept with its message: when it ended, how long it took,
    the relay (its name and where it was reached) and each recipient's reply."""

    number: int
    at: float
    seconds: float | None
    relay: str | None
    relay_address: str | None
    replies: tuple[RecipientResult, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "number": self.number,
            "time": self.at,
            "at": datetime.datetime.fromtimestamp(self.at, datetime.UTC).isoformat(),
            "duration": None if self.seconds is None else round(self.seconds, 3),
            "relay": self.relay,
            "relay_address": self.relay_address,
            "replies": [
                {
                    "recipient": r.address,
                    "status": r.status,
                    "code": reply_code(r.reply),
                    "text": r.reply,
                    **({"remote_id": r.remote_id} if r.remote_id else {}),
                }
                for r in self.replies
            ],
        }

    def as_text(self) -> list[str]:
        """Lines for ``queue show`` and the console: the attempt, then each reply."""
        when = datetime.datetime.fromtimestamp(self.at, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
        took = "" if self.seconds is None else f" in {self.seconds:.2f}s"
        where = self.relay or "no relay reached"
        if self.relay_address and self.relay_address != self.relay:
            where += f" ({self.relay_address})"
        lines = [f"#{self.number} {when} UTC {where}{took}"]
        for reply in self.replies:
            lines.append(f"    <{reply.address}> {reply.status}: {reply.reply}")
        return lines


def reply_code(reply: str) -> int | None:
    """The reply's code: an SMTP reply's three digits, an HTTP answer's status; None for a
    failure that got no answer (refused connection, timeout)."""
    words = reply.split(" ", 2)
    if words[0] == "HTTP" and len(words) > 1:
        digits = words[1].rstrip(":")
    else:
        digits = words[0][:3]
    return int(digits) if len(digits) == 3 and digits.isdigit() else None


ORIGIN_KINDS = ("template", "provider_template")


def parse_origin(meta: str | None) -> dict[str, object] | None:
    """What built a message, from what the store keeps with it (its other notes, such as
    when a delay warning went out, are not part of it)."""
    if not meta:
        return None
    try:
        found = json.loads(meta)
    except ValueError:
        return None
    if not isinstance(found, dict) or not any(kind in found for kind in ORIGIN_KINDS):
        return None
    return {k: v for k, v in found.items() if k in (*ORIGIN_KINDS, "vars")}


_SUMMARY_LINE = re.compile(rb"(?im)^(subject|message-id):[ \t]*(.*(?:\r?\n[ \t].*)*)")


def summary(data: bytes) -> tuple[str | None, str | None]:
    """(Subject, Message-ID) of a stored message, for search: the subject decoded (RFC
    2047), the id without its angle brackets; None where the message has none."""
    head = data.split(b"\r\n\r\n", 1)[0][:65536]
    found: dict[str, str] = {}
    for name, value in _SUMMARY_LINE.findall(head):
        key = name.decode().lower()
        if key not in found:
            found[key] = " ".join(value.decode("utf-8", "replace").split())
    subject = found.get("subject")
    if subject and "=?" in subject:
        from email.header import decode_header, make_header

        try:
            subject = str(make_header(decode_header(subject)))
        except (ValueError, LookupError, UnicodeError):
            pass
    header_id = found.get("message-id")
    if header_id is not None:
        header_id = header_id.strip().strip("<>").strip() or None
    return (subject[:998] if subject is not None else None), header_id


def encode_replies(results: Sequence[RecipientResult]) -> str:
    """An attempt's replies as a backend stores them (one JSON text)."""
    return json.dumps([[r.address, r.status, r.reply, r.remote_id] for r in results])


def decode_replies(text: str) -> tuple[RecipientResult, ...]:
    return tuple(RecipientResult(*row) for row in json.loads(text))


@attrs.frozen
class MessageInfo:
    """What ``queue list`` and ``queue show`` report about one message."""

    id: str
    state: str
    priority: int
    sender: str
    recipients: tuple[Recipient, ...]
    created: float
    next_attempt: float
    attempts: int
    size: int
    last_error: str | None
    # The relay its last attempt went to: its name, and where it was reached.
    relay: str | None = None
    relay_address: str | None = None
    # Every attempt kept (the first and the last ones), for ``queue show``; empty in lists.
    history: tuple[Attempt, ...] = ()
    # What built it: {"template": NAME} or {"provider_template": ID}, with "vars".
    origin: dict[str, object] | None = None
    # Its Subject: and Message-ID: (kept from schema 7 on, for search and the dashboard).
    subject: str | None = None
    header_id: str | None = None

    def origin_text(self) -> str | None:
        """``template receipt; vars: name=Ann, token=<redacted>``, or None."""
        if not self.origin:
            return None
        kind, name = next((k, v) for k, v in self.origin.items() if k in ORIGIN_KINDS)
        found = self.origin.get("vars")
        shown = (
            ", ".join(f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
                      for k, v in found.items())
            if isinstance(found, dict)
            else str(found)
        )  # fmt: skip
        return f"{kind.replace('_', ' ')} {name}; vars: {shown or 'none'}"

    def as_json(self, now: float, with_history: bool = False) -> dict[str, object]:
        """With the history (``queue show``), ``attempts`` is the list of attempts; in a
        list it is their count. ``attempt_count`` is the count in both."""
        attempts: object = [a.as_json() for a in self.history] if with_history else self.attempts
        return {
            "id": self.id,
            "state": self.state,
            "priority": priority_name(self.priority),
            "sender": self.sender,
            "recipients": [attrs.asdict(r) for r in self.recipients],
            "created": self.created,
            "age": round(max(0.0, now - self.created), 3),
            "next_attempt": self.next_attempt if self.state == DEFERRED else None,
            "attempts": attempts,
            "attempt_count": self.attempts,
            "size": self.size,
            "last_error": self.last_error,
            "relay": self.relay,
            "relay_address": self.relay_address,
            **({"origin": self.origin} if self.origin else {}),
            **({"subject": self.subject} if self.subject is not None else {}),
            **({"message_id": self.header_id} if self.header_id is not None else {}),
        }


@attrs.frozen
class NewMessage:
    """One message to enqueue: its envelope, content and priority. Messages that share a
    ``batch`` are taken all together or not at all (a batch submission)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    priority: int
    batch: str = ""
    meta: str = ""  # what built it (JSON), for queue show


@attrs.frozen
class Lease:
    """A message handed to one delivery attempt; ``token`` proves the lease is still ours."""

    id: str
    token: str
    sender: str
    recipients: tuple[str, ...]
    data: bytes
    priority: int
    attempts: int
    created: float
    # When the message became due: the poller's lag is how long it then waited.
    due: float = 0.0
    # What the queue keeps with it (JSON): its RFC 3461 DSN options, for the relay.
    meta: str = ""


@attrs.frozen
class RecipientResult:
    """The relay's word on one recipient: ``sent``, ``deferred`` (4xx) or ``failed`` (5xx).
    ``remote_id`` is the relay's own id for the message where it gave one (an HTTP API's
    message id), for finding it in the provider's logs and events."""

    address: str
    status: str
    reply: str
    remote_id: str = ""


@attrs.frozen
class Outcome:
    """Everything one delivery attempt learnt about one leased message."""

    lease: Lease
    results: tuple[RecipientResult, ...]
    relay: str  # where it went, as log lines name it: host[address]:port
    via: str = ""  # the relay's name (its section), for queue show
    seconds: float | None = None  # how long the attempt took, when a relay answered


@attrs.frozen
class Recorded:
    """What the store made of an outcome: the message's new state and attempt count."""

    outcome: Outcome
    state: str
    attempts: int
    # Recipients whose deferral became a failure (retries or age exhausted), with the reason.
    expired: tuple[tuple[str, str], ...] = ()
    stale: bool = False


class QueueStore(Protocol):
    """A durable queue. Every method is one transaction; all of them block (run off-reactor).

    A backend stores, leases and counts; what an outcome does to a message is decided by
    queue/rules.py. Its failures are QueueError and its subclasses, never a driver's own.
    """

    def enqueue(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        priority: int,
        now: float,
        max_queue_size: int,
        meta: str = "",
    ) -> str: ...

    def enqueue_many(
        self, items: Sequence[NewMessage], now: float, max_queue_size: int
    ) -> list[str | QueueError]: ...

    def enqueue_and_lease(
        self,
        items: Sequence[NewMessage],
        now: float,
        max_queue_size: int,
        lease_limit: int,
        lease_seconds: float,
    ) -> tuple[list[str | QueueError], list[Lease]]: ...

    def record_and_enqueue(
        self,
        outcomes: Sequence[Outcome],
        policy: RetryPolicy,
        items: Sequence[NewMessage],
        max_queue_size: int,
        lease_limit: int,
        lease_seconds: float,
        now: float,
        lease_due: bool = False,
    ) -> tuple[list[Recorded], list[str | QueueError], list[Lease]]: ...

    def lease(self, now: float, limit: int, lease_seconds: float) -> list[Lease]: ...

    def record(
        self, outcomes: Sequence[Outcome], now: float, policy: RetryPolicy
    ) -> list[Recorded]: ...

    def release_leases(self, leases: Sequence[Lease]) -> int: ...

    def recover_leases(self) -> int:
        """At start: give back the leases whose owner is gone (for SQLite, under the
        daemon's lock on state_dir, every lease); returns how many."""

    def counts(self) -> dict[str, int]: ...

    def oldest_pending(self) -> float | None: ...

    def recent_outcomes(self, since: float) -> dict[str, int]: ...

    def messages(
        self, state: str | None = None, limit: int | None = None
    ) -> Iterator[MessageInfo]: ...

    def show(self, message_id: str) -> MessageInfo:
        """One message with its history of attempts."""
        ...

    def search(
        self, text: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[MessageInfo]:
        """Messages whose queue id, Message-ID, sender or a recipient is ``text`` (any
        case), or whose subject holds it; newest first, older than ``before`` (created,
        id). The exact matches are looked up by index; the subject fragment is a scan."""
        ...

    def page(
        self, state: str | None, limit: int, after: tuple[float, str] | None
    ) -> list[MessageInfo]: ...

    def recent_problems(self, limit: int) -> list[MessageInfo]: ...

    def body(self, message_id: str) -> bytes: ...

    def keep_events(self, on: bool) -> None:
        """Whether recording outcomes also writes events (a webhook is configured)."""
        ...

    def add_event(self, kind: str, message_id: str, body: str, now: float) -> None: ...

    def events_after(self, seq: int, limit: int) -> list[tuple[int, str, str]]:
        """(seq, kind, JSON body) of the events after ``seq``, oldest first."""
        ...

    def webhook_cursor(self, name: str) -> int:
        """The last event a webhook was told; a new webhook starts at the newest."""
        ...

    def set_webhook_cursor(self, name: str, seq: int) -> None: ...

    def claim_webhook(self, name: str) -> bool:
        """Whether this daemon tells webhook ``name`` (on a shared queue, one node does)."""
        ...

    def prune_events(self, names: Sequence[str]) -> tuple[int, int]:
        """Forget events every webhook in ``names`` was told (and the cursors of webhooks
        no longer configured); (events forgotten, newest seq)."""
        ...

    def mark_delay_warned(self, message_id: str, now: float) -> bool:
        """Note that the sender was told the message is delayed; False if it was already
        (one warning per message, even across restarts and nodes)."""
        ...

    def retry(self, message_id: str, now: float) -> None: ...

    def retry_all(self, now: float) -> int: ...

    def hold(self, message_id: str) -> None: ...

    def hold_all(self) -> int: ...

    def release_all(self, now: float) -> int: ...

    def release(self, message_id: str, now: float) -> None: ...

    def delete(self, message_id: str) -> None: ...

    def purge_sent(self, before: float, limit: int) -> int: ...

    def close(self) -> None: ...


from smtpmailer.queue.retry import RetryPolicy  # noqa: E402  (the Protocol above names it)

__all__ = [
    "ACTIVE",
    "DEFERRED",
    "FAILED",
    "HELD",
    "PENDING_STATES",
    "QUEUED",
    "SENT",
    "STATES",
    "Lease",
    "MessageInfo",
    "NewMessage",
    "NoSpace",
    "NoSuchMessage",
    "Outcome",
    "QueueCorrupt",
    "QueueError",
    "QueueFull",
    "QueueStore",
    "Recipient",
    "RecipientResult",
    "Recorded",
    "RetryPolicy",
    "StoreBusy",
    "WrongState",
]
