"""Running the blocking QueueStore off the reactor: one queue thread, and the store as the
daemon's services see it (every call a Deferred)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.failure import Failure

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
Runner = Callable[..., "Deferred[Any]"]


def synchronous_runner(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    """Run in the calling thread: for tests, where the store is in memory and fast."""
    return maybeDeferred(function, *args)


class QueueThread:
    """One thread owns the store: SQLite wants one writer, and the reactor must not block.

    A thread of its own fed through a SimpleQueue (C) rather than Twisted's ThreadPool:
    the pool's hand-over (a pure-Python Condition, its team and worker) was 3% of the
    reactor thread's time in an end-to-end run, for a queue that is only ever one thread.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._calls: SimpleQueue[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self._calls = SimpleQueue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="smtpmailer-queue", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Runs what was asked before, then ends the thread."""
        if self._thread is not None:
            self._calls.put(None)
            self._thread.join()
            self._thread = None

    def __call__(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        result: Deferred[T] = Deferred()
        self._calls.put((result, function, args))
        return result

    def _work(self) -> None:
        while (call := self._calls.get()) is not None:
            result, function, args = call
            try:
                value = function(*args)
            except BaseException:
                self._reactor.callFromThread(result.errback, Failure())
            else:
                self._reactor.callFromThread(result.callback, value)


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
        lease_due: bool = False,
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
            lease_due,
        )

    def lease(self, now: float, limit: int, lease_seconds: float) -> Deferred[list[Lease]]:
        return self._call("lease", now, limit, lease_seconds)

    def heartbeat(self, now: float) -> Deferred[None]:
        """A shared store's node is alive (stores without nodes have no such call)."""
        return self._call("heartbeat", now)

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

    def body(self, message_id: str) -> Deferred[bytes]:
        return self._call("body", message_id)

    def search(
        self, text: str, limit: int, before: tuple[float, str] | None = None
    ) -> Deferred[list[MessageInfo]]:
        return self._call("search", text, limit, before)

    def act(self, action: str, message_id: str, now: float) -> Deferred[None]:
        """An operator's action on one message: retry, hold, release or delete."""
        arguments = (message_id, now) if action in ("retry", "release") else (message_id,)
        return self._call(action, *arguments)

    def keep_events(self, on: bool) -> Deferred[None]:
        return self._call("keep_events", on)

    def add_event(self, kind: str, message_id: str, body: str, now: float) -> Deferred[None]:
        return self._call("add_event", kind, message_id, body, now)

    def events_after(self, seq: int, limit: int) -> Deferred[list[tuple[int, str, str]]]:
        return self._call("events_after", seq, limit)

    def webhook_cursor(self, name: str) -> Deferred[int]:
        return self._call("webhook_cursor", name)

    def claim_webhook(self, name: str) -> Deferred[bool]:
        return self._call("claim_webhook", name)

    def set_webhook_cursor(self, name: str, seq: int) -> Deferred[None]:
        return self._call("set_webhook_cursor", name, seq)

    def prune_events(self, names: list[str]) -> Deferred[tuple[int, int]]:
        return self._call("prune_events", names)

    def mark_delay_warned(self, message_id: str, now: float) -> Deferred[bool]:
        return self._call("mark_delay_warned", message_id, now)

    def recent_problems(self, limit: int) -> Deferred[list[MessageInfo]]:
        return self._call("recent_problems", limit)
