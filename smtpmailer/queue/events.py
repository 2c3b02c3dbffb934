"""Events for webhooks: what happened to each recipient (sent, deferred, failed) and to
each message (bounced, delayed), written by the store in the transaction that records the
outcome, so an event is never lost and never told before it happened. A webhook sends
them in the order they were written (``seq``), from where its cursor stands."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from smtpmailer.queue import Outcome, summary

KINDS = ("sent", "deferred", "failed", "bounced", "delayed")


def outcome_events(
    outcome: Outcome, attempt: int, now: float, expired: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, str, str]]:
    """(kind, queue id, JSON body) for each recipient of one recorded attempt; a deferral
    that used up the retries is the recipient's failure."""
    lease = outcome.lease
    gave_up = dict(expired)
    _, header_id = summary(lease.data)
    rows = []
    for result in outcome.results:
        kind, reply = result.status, result.reply
        if result.address in gave_up:
            kind, reply = "failed", f"{reply}; {gave_up[result.address]}"
        body = {
            "event": kind,
            "id": lease.id,
            "message_id": header_id,
            "recipient": result.address,
            "sender": lease.sender,
            "relay": outcome.via or outcome.relay or None,
            "reply": reply,
            "attempt": attempt,
            "time": now,
            "queued_at": lease.created,
        }
        if result.remote_id:
            body["remote_id"] = result.remote_id
        rows.append((kind, lease.id, json.dumps(body)))
    return rows


def events_of(
    outcomes: Sequence[Outcome], attempt_of: Callable[[Outcome], int], now: float
) -> list[tuple[str, str, str]]:
    """The events of many recorded attempts (a batch of all-sent messages)."""
    return [
        row for outcome in outcomes for row in outcome_events(outcome, attempt_of(outcome), now)
    ]


def message_event(kind: str, message_id: str, now: float, **fields: object) -> str:
    """The body of a message's own event (bounced: a DSN went to the sender; delayed)."""
    return json.dumps({"event": kind, "id": message_id, "time": now, **fields})
