"""Running the blocking QueueStore off the reactor, and group-committing delivery outcomes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from smtpmailer.queue import (
    Lease,
    MessageInfo,
    NewMessage,
    Outcome,
    QueueError,
    QueueStore,
    Recorded,
)
from smtpmailer.queue.retry import RetryPolicy

T = TypeVar("T")
Item = TypeVar("Item")
Result = TypeVar("Result")
Runner = Callable[..., "Deferred[Any]"]


def synchronous_runner(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run in the calling thread: for tests, where the store is in memory and fast."""
    return maybeDeferred(function, *args)


class QueueThread:
    """One thread owns the store: SQLite wants one writer, and the reactor must not block."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="smtpmailer-queue")

    def start(self) -> None:
        self._pool.start()

    def stop(self) -> None:
        self._pool.stop()

    def __call__(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        from twisted.internet.threads import deferToThreadPool

        return deferToThreadPool(self._reactor, self._pool, function, *args)


class AsyncQueue:
    """The store as the daemon's services see it: every call runs through ``run``.

    The store itself is attached at service start, after twistd has forked: an SQLite
    connection must not cross a fork.
    """

    def __init__(self, run: Runner, store: QueueStore | None = None) -> None:
        self._run = run
        self.store = store

    def attach(self, store: QueueStore) -> None:
        self.store = store

    def _call(self, name: str, *args: Any) -> Deferred[Any]:
        if self.store is None:
            raise RuntimeError("queue store is not open")
        return self._run(getattr(self.store, name), *args)

    def record_and_enqueue(
        self,
        outcomes: list[Outcome],
        policy: RetryPolicy,
        items: list[NewMessage],
        max_queue_size: int,
        lease_limit: int,
        lease_seconds: float,
        now: float,
    ) -> Deferred[tuple[list[Recorded], list[str | QueueError], list[Lease]]]:
        return self._call(
            "record_and_enqueue",
            outcomes,
            policy,
            items,
            max_queue_size,
            lease_limit,
            lease_seconds,
            now,
        )

    def lease(self, now: float, limit: int, lease_seconds: float) -> Deferred[list[Lease]]:
        return self._call("lease", now, limit, lease_seconds)

    def release_leases(self, leases: list[Lease]) -> Deferred[int]:
        return self._call("release_leases", leases)

    def purge_sent(self, before: float, limit: int) -> Deferred[int]:
        return self._call("purge_sent", before, limit)

    def counts(self) -> Deferred[dict[str, int]]:
        return self._call("counts")

    def oldest_pending(self) -> Deferred[float | None]:
        return self._call("oldest_pending")

    def page(
        self, state: str | None, limit: int, after: tuple[float, str] | None
    ) -> Deferred[list[MessageInfo]]:
        return self._call("page", state, limit, after)

    def show(self, message_id: str) -> Deferred[MessageInfo]:
        return self._call("show", message_id)

    def recent_problems(self, limit: int) -> Deferred[list[MessageInfo]]:
        return self._call("recent_problems", limit)


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
        waiter: Deferred[Result] = Deferred()
        self._batch.append((item, waiter))
        if self._writing is None:
            self._write_next()
        return waiter

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


class QueueWriter:
    """Submissions and delivery outcomes, group-committed together.

    Whatever arrives while the queue thread writes goes into its next transaction, new
    messages and outcomes alike: one fsync a turn, and a submission never waits behind a
    separate outcome commit. ``commit`` takes the outcomes and the new messages and
    returns a Deferred of (one result per outcome, one result per message).
    """

    def __init__(
        self,
        commit: Callable[
            [list[Outcome], list[NewMessage]],
            Deferred[tuple[list[Recorded], list[str | QueueError]]],
        ],
    ) -> None:
        self._commit = commit
        self._group: GroupCommit[Outcome | NewMessage, Recorded | str] = GroupCommit(
            self._commit_mixed
        )

    def submit(self, message: NewMessage) -> Deferred[str]:
        """Fires with the new message's id once it is committed."""
        return self._group.submit(message)  # type: ignore[return-value]

    def record(self, outcome: Outcome) -> Deferred[Recorded]:
        """Fires with what the store made of the outcome once it is committed."""
        return self._group.submit(outcome)  # type: ignore[return-value]

    def flush(self) -> Deferred[None]:
        return self._group.flush()

    def _commit_mixed(self, items: list[Outcome | NewMessage]) -> Deferred[list[Any]]:
        outcomes = [item for item in items if isinstance(item, Outcome)]
        messages = [item for item in items if isinstance(item, NewMessage)]

        def in_order(
            written: tuple[list[Recorded], list[str | QueueError]],
        ) -> list[Recorded | str | QueueError]:
            recorded, results = iter(written[0]), iter(written[1])
            return [
                next(recorded) if isinstance(item, Outcome) else next(results) for item in items
            ]

        return self._commit(outcomes, messages).addCallback(in_order)
