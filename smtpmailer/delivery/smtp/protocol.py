"""The wire half of our ESMTP client: send command lines, match replies, time out, pipeline.

Twisted's SMTPClient waits for every reply, leaves Nagle on and cannot report recipients one
by one; this protocol only moves lines, and ``session.py`` holds the dialogue.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure


@attrs.frozen
class Reply:
    """One (possibly multi-line) SMTP reply."""

    code: int
    lines: tuple[str, ...]

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        return f"{self.code} {' '.join(line for line in self.lines if line)}".strip()


class SMTPTimeout(Exception):
    """The relay did not answer within ``timeout``."""


class SMTPProtocolError(Exception):
    """The relay sent something that is not an SMTP reply."""


def encode_body(data: bytes) -> bytes:
    """CRLF line endings, dot-stuffing, and the final ``.`` line (RFC 5321 4.5.2).

    Queued messages are CRLF already; byte replaces (C speed) do the rest, not a regex
    pass over every body.
    """
    from smtpmailer.message import to_crlf

    data = to_crlf(data)
    if not data.endswith(b"\r\n"):
        data += b"\r\n"
    if b"\r\n." in data:  # a scan, where the replace copies every body
        data = data.replace(b"\r\n.", b"\r\n..")
    if data.startswith(b"."):
        data = b"." + data
    return data + b".\r\n"


class _Due:
    """The replies due to commands written together, and the one Deferred told of them
    all: a list, or the reply itself for a single command. A Deferred a reply gathered by
    a DeferredList, and a new timer a reply (see _arm), took 13% of the daemon's CPU in a
    run of 10,000 messages (bench/relay, 5.2 -> 4.5 s)."""

    __slots__ = ("count", "deferred", "replies", "single")

    def __init__(self, count: int, single: bool) -> None:
        self.count = count
        self.single = single
        self.replies: list[Reply] = []
        self.deferred: Deferred[Any] = Deferred()


class SMTPClientProtocol(LineOnlyReceiver):
    """Writes commands and hands each reply to the Deferred waiting for it, in order.

    Several commands may be written at once (PIPELINING); their replies come back in the
    same order. A silence of ``timeout`` seconds while a reply is due aborts the connection.
    """

    delimiter = b"\r\n"
    MAX_LENGTH = 16384

    def __init__(self, clock: IReactorTime, timeout: float) -> None:
        self._clock = clock
        self.timeout = timeout
        self._waiting: deque[_Due] = deque()
        self._partial: list[str] = []
        self._timer: IDelayedCall | None = None
        self._lost: Failure | None = None
        self.connected_at_all = False
        # The greeting is the first reply: wait for it from the start.
        self.greeting: Deferred[Reply] = self._expect(1, single=True)

    # --- connection ---

    def connectionMade(self) -> None:
        self.connected_at_all = True
        try:
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        except (AttributeError, NotImplementedError, OSError):
            pass  # not TCP (tests, UNIX sockets): nothing to tune
        self._arm()

    def connectionLost(self, reason: Failure = Failure(ConnectionLost())) -> None:  # noqa: B008
        self._disarm()
        self._lost = reason
        self._fail_all(reason)

    # --- commands ---

    def send_commands(self, *lines: str) -> Deferred[list[Reply]]:
        """Write the command lines in one segment (PIPELINING); the replies, in order,
        once the last has come. A connection lost or garbled on the way fails it."""
        return self._write(lines, single=False)

    def command(self, line: str) -> Deferred[Reply]:
        return self._write((line,), single=True)

    def _write(self, lines: tuple[str, ...], single: bool) -> Deferred[Any]:
        if self._lost is not None:
            return fail(self._lost)
        for line in lines:
            if "\r" in line or "\n" in line:
                raise ValueError(f"command contains a line break: {line!r}")
        self.transport.write(  # type: ignore[union-attr]
            b"".join(line.encode("utf-8") + b"\r\n" for line in lines)
        )
        return self._expect(len(lines), single)

    def send_body(self, data: bytes) -> Deferred[Reply]:
        """After a 354: the message, dot-stuffed and terminated; returns the final reply."""
        if self._lost is not None:
            return fail(self._lost)
        self.transport.write(encode_body(data))  # type: ignore[union-attr]
        return self._expect(1, single=True)

    def abort(self) -> None:
        if self.transport is not None and self._lost is None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.transport is not None and self._lost is None:
            self.transport.loseConnection()

    # --- replies ---

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if len(text) < 3 or not text[:3].isdigit() or text[3:4] not in ("", " ", "-"):
            self._protocol_error(f"not an SMTP reply: {text[:80]!r}")
            return
        self._partial.append(text[4:])
        if text[3:4] == "-":
            return
        reply = Reply(int(text[:3]), tuple(self._partial))
        self._partial = []
        if not self._waiting:
            self._protocol_error(f"unexpected reply {reply}")
            return
        due = self._waiting[0]
        due.replies.append(reply)
        if len(due.replies) == due.count:
            self._waiting.popleft()
        if self._waiting:
            self._arm()  # the next reply is due within the timeout from now
        if len(due.replies) == due.count:
            due.deferred.callback(due.replies[0] if due.single else due.replies)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._protocol_error("reply line too long")

    def _protocol_error(self, message: str) -> None:
        self._fail_all(Failure(SMTPProtocolError(message)))
        self.abort()

    # --- waiting and timing out ---

    def _expect(self, count: int, single: bool) -> Deferred[Any]:
        due = _Due(count, single)
        if not self._waiting and self.connected_at_all:
            self._arm()  # nothing was due: the time runs from now
        self._waiting.append(due)
        return due.deferred

    def _arm(self) -> None:
        """A reply is due within the timeout from now. The one timer is moved rather than
        replaced (a new one and a cancel for every reply, see _Due); left running while
        no reply is due, it then just lapses."""
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.timeout)
        else:
            self._timer = self._clock.callLater(self.timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if not self._waiting:
            return  # it ran on while no reply was due
        self._fail_all(Failure(SMTPTimeout(f"no reply from the relay within {self.timeout:g}s")))
        self.abort()

    def _fail_all(self, reason: Failure) -> None:
        waiting, self._waiting = self._waiting, deque()
        for due in waiting:
            due.deferred.errback(reason)
