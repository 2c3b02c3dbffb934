"""What every command shares: where it reads and writes, its error, the queue it opens."""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import IO, TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from smtpmailer.config import Config
    from smtpmailer.queue import QueueStore

T = TypeVar("T")


class CommandError(Exception):
    """A failure the user must fix: printed as one line on stderr, exit status 1."""


class Console:
    """Standard output, error and input of one run, given to every command, so tests call
    ``main`` with their own streams instead of swapping ``sys``'s."""

    def __init__(
        self,
        out: IO[str] | None = None,
        err: IO[str] | None = None,
        stdin: IO[str] | None = None,
    ) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.stdin = stdin or sys.stdin

    @property
    def stdin_bytes(self) -> IO[bytes]:
        """The binary side of stdin (a raw message); a text stream without one is encoded."""
        raw = getattr(self.stdin, "buffer", None)
        if raw is not None:
            return raw
        import io

        return io.BytesIO(self.stdin.read().encode("utf-8", "surrogateescape"))

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def warn(self, text: str) -> None:
        print(text, file=self.err, flush=True)


def open_queue(config: Config, read_only: bool = False) -> QueueStore:
    """The configured queue; ``read_only`` for commands that only look at it."""
    from smtpmailer.queue.backends import open_store

    return open_store(config, read_only=read_only)


def run_with_reactor(work: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
    """Run ``work(reactor)`` to its end in a reactor of its own (the commands that talk to
    relays and token endpoints); its exception, if any, is raised here."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def begin() -> None:
        running = Deferred.fromCoroutine(work(reactor))
        running.addBoth(outcome.append)
        running.addBoth(lambda _: reactor.callLater(0, reactor.stop))

    reactor.callWhenRunning(begin)
    reactor.run()
    (result,) = outcome
    if isinstance(result, Failure):
        result.raiseException()
    return result
