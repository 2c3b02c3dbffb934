"""Committing a turn: what arrives together goes into one transaction.

New messages from every way in and delivery outcomes that arrive while the queue thread
writes share its next commit (one fsync), and each caller's Deferred fires only after the
commit that holds its item. With idle connections and nothing older queued, new messages
are leased in that same commit and go straight to delivery, without a poll.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from smtpmailer.config import Config
from smtpmailer.intake.checks import check_envelope
from smtpmailer.intake.refusals import Refusal
from smtpmailer.logs import log
from smtpmailer.message import Envelope
from smtpmailer.queue import (
    PRIORITY_NAMES,
    Lease,
    NewMessage,
    Outcome,
    QueueError,
    Recorded,
)
from smtpmailer.queue.ids import new_lease_token
from smtpmailer.queue.retry import RetryPolicy
from smtpmailer.queue.runner import AsyncQueue

Item = TypeVar("Item")
Result = TypeVar("Result")


class GroupCommit(Generic[Item, Result]):
    """Everything submitted while a commit runs goes together into the next one.

    One fsync then covers many items, and each caller's Deferred still fires only after the
    commit that holds its item. ``commit`` takes a list of items and returns a Deferred list
    of results in the same order; a result that is an Exception fails only its own caller.
    """

    def __init__(self, commit: Callable[[list[Item]], Deferred[list[Any]]]) -> None:
        self._commit = commit
        self._batch: list[tuple[Item, Deferred[Result]]] = []
        self._writing: Deferred[Any] | None = None
        self._idle_waiters: list[Deferred[None]] = []

    def submit(self, item: Item) -> Deferred[Result]:
        (waiter,) = self.submit_many([item])
        return waiter

    def submit_many(self, items: Sequence[Item]) -> list[Deferred[Result]]:
        """All of ``items`` in the same commit."""
        waiters: list[Deferred[Result]] = []
        for item in items:
            waiter: Deferred[Result] = Deferred()
            self._batch.append((item, waiter))
            waiters.append(waiter)
        if self._writing is None:
            self._write_next()
        return waiters

    def _write_next(self) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            self._writing = None
            waiters, self._idle_waiters = self._idle_waiters, []
            for idle in waiters:
                idle.callback(None)
            return
        writing = self._commit([item for item, _ in batch])
        self._writing = writing

        def written(results: list[Any]) -> None:
            for (_, waiter), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    waiter.errback(Failure(result))
                else:
                    waiter.callback(result)

        def failed(failure: Failure) -> None:
            for _, waiter in batch:
                waiter.errback(failure)

        writing.addCallbacks(written, failed)
        writing.addBoth(lambda _: self._write_next())

    def flush(self) -> Deferred[None]:
        """Fires once everything submitted so far is committed."""
        if self._writing is None and not self._batch:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        return waiter


@attrs.frozen
class LeaseRequest:
    """The poller's lease, made in the next turn's commit: up to ``limit`` due messages."""

    limit: int
    lease_seconds: float


class QueueWriter:
    """Submissions, delivery outcomes and the poller's leases, group-committed together.

    Whatever arrives while the queue thread writes goes into its next transaction, new
    messages, outcomes and a lease alike: one fsync a turn (none without new messages,
    queue/sqlite.py says why), and a submission never waits behind a separate outcome
    commit. ``commit`` takes the outcomes, the new messages and the lease asked for
    (None: none) and returns a Deferred of (one result per outcome, one result per
    message, the leases made for the request).
    """

    def __init__(
        self,
        commit: Callable[
            [list[Outcome], list[NewMessage], LeaseRequest | None],
            Deferred[tuple[list[Recorded], list[str | QueueError], list[Lease]]],
        ],
    ) -> None:
        self._commit = commit
        self._group: GroupCommit[
            Outcome | NewMessage | LeaseRequest, Recorded | str | list[Lease]
        ] = GroupCommit(self._commit_mixed)

    def submit(self, message: NewMessage) -> Deferred[str]:
        """Fires with the new message's id once it is committed."""
        return self._group.submit(message)  # type: ignore[return-value]

    def submit_batch(self, messages: Sequence[NewMessage]) -> list[Deferred[str]]:
        """Messages that go into the same commit (a batch: taken whole or refused whole)."""
        return self._group.submit_many(messages)  # type: ignore[return-value]

    def record(self, outcome: Outcome) -> Deferred[Recorded]:
        """Fires with what the store made of the outcome once it is committed."""
        return self._group.submit(outcome)  # type: ignore[return-value]

    def lease(self, request: LeaseRequest) -> Deferred[list[Lease]]:
        """Fires with the leases the next turn made (one lease request a turn: the poller
        never overlaps itself)."""
        return self._group.submit(request)  # type: ignore[return-value]

    def flush(self) -> Deferred[None]:
        return self._group.flush()

    def _commit_mixed(
        self, items: list[Outcome | NewMessage | LeaseRequest]
    ) -> Deferred[list[Any]]:
        outcomes = [item for item in items if isinstance(item, Outcome)]
        messages = [item for item in items if isinstance(item, NewMessage)]
        requests = [item for item in items if isinstance(item, LeaseRequest)]
        request = (
            LeaseRequest(sum(r.limit for r in requests), requests[0].lease_seconds)
            if requests
            else None
        )

        def in_order(
            written: tuple[list[Recorded], list[str | QueueError], list[Lease]],
        ) -> list[Recorded | str | QueueError | list[Lease]]:
            recorded, results, leases = iter(written[0]), iter(written[1]), written[2]
            answers: list[Recorded | str | QueueError | list[Lease]] = []
            for item in items:
                if isinstance(item, Outcome):
                    answers.append(next(recorded))
                elif isinstance(item, NewMessage):
                    answers.append(next(results))
                else:  # each request its share, in order
                    answers.append(leases[: item.limit])
                    leases = leases[item.limit :]
            return answers

        return self._commit(outcomes, messages, request).addCallback(in_order)


class Outlet(Protocol):
    """Where leased messages go (delivery), and how many more it welcomes now."""

    running: int  # a twisted Service's flag
    lease_seconds: float

    def capacity(self) -> int: ...

    def submit(self, leases: list[Lease]) -> None: ...


class Feeder(Protocol):
    """Who otherwise finds due mail (the poller): whether it is paused, and a nudge."""

    @property
    def paused(self) -> bool: ...

    def wake(self) -> None: ...

    def wake_if_more(self) -> None: ...


class Dispatcher:
    """The daemon's one writer of new mail and outcomes: intake submits through it,
    delivery records through it. ``serve`` tells it, once both exist, where leases go
    (delivery) and who to nudge when not all new mail could be leased (the poller)."""

    def __init__(self, config: Config, queue: AsyncQueue, clock: IReactorTime) -> None:
        self.config = config
        self._queue = queue
        self._clock = clock
        self._policy = RetryPolicy.from_config(config.queue)
        self._outlet: Outlet | None = None
        self._feeder: Feeder | None = None
        self.writer = QueueWriter(self._commit_turn)

    def serve(self, outlet: Outlet, feeder: Feeder) -> None:
        self._outlet, self._feeder = outlet, feeder

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._policy = RetryPolicy.from_config(config.queue)

    # --- what intake and delivery call ---

    def submit(self, envelope: Envelope, priority: int = PRIORITY_NAMES["normal"]) -> Deferred[str]:
        """The daemon's way into the queue (SMTP submission, HTTP, sendmail's socket): the
        same checks as ``smtpmailer send``, then the group commit."""
        try:
            checked = check_envelope(self.config, envelope)
        except Refusal:
            return fail()
        return self.commit_checked(checked, priority)

    def commit_checked(
        self, envelope: Envelope, priority: int = PRIORITY_NAMES["normal"]
    ) -> Deferred[str]:
        """A message already through check_envelope (here, or in a submission worker's
        process with the same code): only the group commit is left."""
        return self.writer.submit(
            NewMessage(
                envelope.sender, envelope.recipients, envelope.data, priority, meta=envelope.meta
            )
        )

    def submit_batch(
        self, envelopes: Sequence[Envelope], priority: int = PRIORITY_NAMES["normal"]
    ) -> Deferred[list[str]]:
        """Many messages checked as ``submit`` checks one, committed in one transaction and
        taken whole (their ids) or refused whole (the first refusal)."""
        try:
            checked = [check_envelope(self.config, envelope) for envelope in envelopes]
        except Refusal:
            return fail()
        batch = new_lease_token()
        waiters = self.writer.submit_batch(
            [NewMessage(e.sender, e.recipients, e.data, priority, batch, e.meta) for e in checked]
        )
        done = DeferredList(waiters, consumeErrors=True)

        def ids(results: list[tuple[bool, Any]]) -> list[str]:
            for ok, value in results:
                if not ok:
                    value.raiseException()
            return [value for _, value in results]

        return done.addCallback(ids)

    def record(self, outcome: Outcome) -> Deferred[Recorded]:
        """Fires with what the store made of a delivery outcome once it is committed."""
        return self.writer.record(outcome)

    def flush(self) -> Deferred[None]:
        """Fires once everything submitted so far is committed."""
        return self.writer.flush()

    def room_freed(self) -> None:
        """Delivery has room again: the poller looks for more if its last batch was full."""
        if self._feeder is not None:
            self._feeder.wake_if_more()

    # --- what the poller calls ---

    def lease(self, now: float, limit: int, lease_seconds: float) -> Deferred[list[Lease]]:
        """The poller's lease, made in the next turn: with delivery busy, that turn also
        records the outcomes that freed the room, so the lease costs no transaction of
        its own. ``now`` is the turn's own clock when it runs, as for everything in it."""
        return self.writer.lease(LeaseRequest(limit, lease_seconds))

    # --- one turn ---

    def _commit_turn(
        self, outcomes: list[Outcome], items: list[NewMessage], request: LeaseRequest | None
    ) -> Deferred[tuple[list[Recorded], list[str | QueueError], list[Lease]]]:
        """One commit for what arrived together. New messages are leased here when
        nothing older waits; with the poller's request, the lease takes due mail in the
        poller's order (the new messages among it) and its leases are the poller's."""
        outlet, feeder = self._outlet, self._feeder
        if request is not None:
            limit, lease_seconds = request.limit, request.lease_seconds
        else:
            serving = outlet is not None and feeder is not None and not feeder.paused
            limit = outlet.capacity() if serving and outlet is not None and outlet.running else 0
            lease_seconds = outlet.lease_seconds if outlet is not None else 0.0
        committed = self._queue.record_and_enqueue(
            outcomes,
            self._policy,
            items,
            self.config.queue.max_queue_size,
            limit,
            lease_seconds,
            self._clock.seconds(),
            request is not None,
        )

        def hand_over(
            result: tuple[list[Recorded], list[str | QueueError], list[Lease]],
        ) -> Deferred[tuple[list[Recorded], list[str | QueueError], list[Lease]]]:
            recorded, results, leases = result
            if request is not None:  # the poller's: it hands them to delivery
                return succeed((recorded, results, leases))
            given_back: Deferred[Any] = succeed(None)
            if leases:
                if outlet is not None and outlet.running:
                    outlet.submit(leases)
                else:  # stopped meanwhile: back to the queue, unattempted, before it closes
                    given_back = self._queue.release_leases(leases).addErrback(
                        lambda failure: log.failure("could not give back leases", failure=failure)
                    )
            if feeder is not None and len(leases) < sum(isinstance(r, str) for r in results):
                feeder.wake()
            return given_back.addCallback(lambda _: (recorded, results, []))

        return committed.addCallback(hand_over)
