"""The queue's rules, the same for every backend: what a delivery outcome does to a message
and each recipient, and which operator actions apply to a message in which state.

A backend stores, leases and counts; it asks these functions what to write.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import attrs

from smtpmailer.queue import (
    ACTIVE,
    DEFERRED,
    FAILED,
    HELD,
    QUEUED,
    RCPT_FAILED,
    RCPT_PENDING,
    RCPT_SENT,
    SENT,
    NewMessage,
    Outcome,
    RecipientResult,
    WrongState,
    encode_replies,
)
from smtpmailer.queue.retry import RetryPolicy


def recipient_update(result: RecipientResult) -> tuple[str, str | None]:
    """A recipient's new state and last error after the relay's word on it: 2xx sent,
    5xx failed for good, anything else still pending (deferred with the reply)."""
    if result.status == RCPT_SENT:
        return RCPT_SENT, None
    if result.status == RCPT_FAILED:
        return RCPT_FAILED, result.reply
    return RCPT_PENDING, result.reply


def first_error(results: Sequence[RecipientResult]) -> str | None:
    """The message's last_error: the first reply that was not a success."""
    for result in results:
        error = recipient_update(result)[1]
        if error:
            return error
    return None


@attrs.frozen
class Verdict:
    """What an attempt made of a message: its new state and what goes with it."""

    state: str
    attempts: int
    next_attempt: float
    last_error: str | None
    # Recipients that were still pending and now fail (retries or age exhausted), with why.
    expired: tuple[tuple[str, str], ...] = ()


def judge(
    *,
    attempts_before: int,
    age_from: float,
    results: Sequence[RecipientResult],
    pending: Sequence[str],
    any_failed: bool,
    policy: RetryPolicy,
    now: float,
) -> Verdict:
    """The message's fate after one attempt. ``pending`` are its recipients still owed a
    delivery once this attempt's results are applied; ``any_failed`` whether any of its
    recipients has failed for good (in this attempt or an earlier one).

    Every recipient done: sent, or failed when any recipient failed. Some still pending:
    deferred with the retry schedule, unless retries or max_age are exhausted, in which
    case they fail too, with the reason added to their error.
    """
    attempts = attempts_before + 1
    error = first_error(results)
    if not pending:
        return Verdict(FAILED if any_failed else SENT, attempts, now, error)
    reason = policy.give_up_reason(attempts, age_from, now)
    if reason:
        expired = tuple((address, reason) for address in pending)
        return Verdict(FAILED, attempts, now, f"{error}; {reason}" if error else reason, expired)
    return Verdict(DEFERRED, attempts, policy.next_attempt(attempts, age_from, now), error)


def all_sent_state(any_failed_before: bool) -> str:
    """An attempt that sent to every recipient it carried: the message is sent, or failed
    when a recipient had failed in an earlier attempt."""
    return FAILED if any_failed_before else SENT


# --- operator actions ---


def check_hold(message_id: str, state: str) -> None:
    if state not in (QUEUED, DEFERRED):
        raise WrongState(
            f"message {message_id} is {state}; only queued or deferred messages can be held"
        )


def check_release(message_id: str, state: str) -> None:
    if state != HELD:
        raise WrongState(f"message {message_id} is {state}, not held")


def check_delete(message_id: str, state: str) -> None:
    if state == ACTIVE:
        raise WrongState(f"message {message_id} is being delivered; try again shortly")


def retry_restores_failed(message_id: str, state: str) -> bool:
    """Whether ``queue retry`` must give a message its failed recipients back (a failed
    message: its sent recipients stay sent), or only make it due now (queued, deferred)."""
    if state in (DEFERRED, QUEUED):
        return False
    if state == FAILED:
        return True
    raise WrongState(
        f"message {message_id} is {state}; only deferred or failed messages can be retried"
    )


# States a message can be held from, and the states `hold --all` takes.
HOLDABLE = (QUEUED, DEFERRED)


def admit(items: Sequence[NewMessage], pending: int, max_queue_size: int) -> list[str | None]:
    """For each new message, in order: None to take it, or why it is refused (no
    recipient; the queue full). A batch is taken whole or refused whole."""
    sizes = Counter(item.batch for item in items if item.batch)
    decided: dict[str, str | None] = {}
    verdicts: list[str | None] = []
    for item in items:
        if not item.recipients:
            verdicts.append("a message needs at least one recipient")
            continue
        if item.batch and item.batch in decided:
            verdicts.append(decided[item.batch])
            continue
        wanted = sizes[item.batch] if item.batch else 1
        if pending + wanted > max_queue_size:
            refusal = f"queue is full ({pending} messages, max_queue_size = {max_queue_size})" + (
                f": a batch of {wanted} does not fit" if wanted > 1 else ""
            )
        else:
            refusal = None
            pending += wanted
        if item.batch:
            decided[item.batch] = refusal
        verdicts.append(refusal)
    return verdicts


# Attempts kept with a message: the first, and the last ones up to this many in all (a
# message retried for days keeps how it began and how it is going).
KEPT_ATTEMPTS = 20


def number_attempts(
    outcomes: Sequence[Outcome], last: dict[str, int], now: float
) -> tuple[list[tuple[object, ...]], list[tuple[str, int, int]]]:
    """The attempts rows to keep for ``outcomes`` (message_id, number, at, seconds, relay,
    relay_address, replies), numbered on from ``last`` (each message's highest kept), and
    the (message_id, first, last) ranges of older attempts to forget."""
    rows: list[tuple[object, ...]] = []
    forget: list[tuple[str, int, int]] = []
    last = dict(last)
    for outcome in outcomes:
        number = last.get(outcome.lease.id, 0) + 1
        last[outcome.lease.id] = number
        rows.append(
            (
                outcome.lease.id,
                number,
                now,
                outcome.seconds,
                outcome.via or None,
                outcome.relay or None,
                encode_replies(outcome.results),
            )
        )
        gone = attempts_to_forget(number)
        if gone is not None:
            forget.append((outcome.lease.id, *gone))
    return rows, forget


def attempts_to_forget(number: int) -> tuple[int, int] | None:
    """After attempt ``number`` is kept: the range of older attempts (first, last) to drop,
    or None."""
    last = number - (KEPT_ATTEMPTS - 1)
    return (2, last) if last >= 2 else None
