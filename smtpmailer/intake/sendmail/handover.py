"""The daemon's end of ``sendmail``: a Unix socket in state_dir that takes one message per
connection and answers after the commit.

Why: a ``sendmail`` call that writes SQLite itself pays for sqlite3, attrs and the email
package in every process (~90 ms); handing the bytes to the daemon, which has all of that
loaded and group-commits concurrent submissions, costs the caller little more than the
interpreter. The request format and the checks are the command's
(intake/sendmail/command.py), so both paths agree.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from smtpmailer.config import Config
from smtpmailer.intake.refusals import (
    ANSWERS,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    MessageTooBig,
    answer_for,
    kind_of,
)
from smtpmailer.intake.sendmail.command import (
    REQUEST_MAGIC,
    decode_header,
    prepare_envelope,
    refusal_text,
)
from smtpmailer.listening import ListeningService
from smtpmailer.logs import log
from smtpmailer.message import Envelope
from smtpmailer.queue.runner import Runner
from smtpmailer.units import format_size

Submit = Callable[[Envelope], "Deferred[str]"]
MAX_HEADER = 1 << 20  # arguments: a million bytes of recipients is not a real call
IDLE_TIMEOUT = 60.0
# Requests being read or committed at once; each may hold up to twice max_message_size.
# Past this, a connection is closed unanswered and the command writes the queue itself.
MAX_CONCURRENT = 32
# Messages up to this size are prepared on the reactor: about 0.1 ms for a cron mail, where
# the hop to a thread and back added a few tenths of a millisecond to every sendmail call.
PREPARED_ON_REACTOR = 64 * 1024


def peer_uid(transport: Any) -> int | None:
    """The calling process's user id (Linux SO_PEERCRED), for the log line."""
    option = getattr(socket, "SO_PEERCRED", None)
    handle = getattr(transport, "socket", None)
    if option is None or handle is None:
        return None
    try:
        _, uid, _ = struct.unpack("3i", handle.getsockopt(socket.SOL_SOCKET, option, 12))
    except OSError:
        return None
    return int(uid)


class SendmailRequest(Protocol):
    """Reads ``SENDMAIL/1 H D\\n``, H header bytes and D message bytes; answers
    ``STATUS TEXT\\n`` (sendmail's exit status; the queue id on success) and closes."""

    def __init__(self, factory: SendmailFactory) -> None:
        self.factory = factory
        self._buffer = bytearray()
        self._lengths: tuple[int, int] | None = None
        self._done = False
        self._counted = False
        self._timeout: Any = None
        self._far_too_big: str | None = None  # refused on its announced size

    def connectionMade(self) -> None:
        if self.factory.active >= MAX_CONCURRENT:
            self._done = True
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.factory.active += 1
        self._counted = True
        self._timeout = self.factory.clock.callLater(IDLE_TIMEOUT, self._idle)

    def _idle(self) -> None:
        self._timeout = None
        self._answer(EX_TEMPFAIL, f"no complete request within {IDLE_TIMEOUT:.0f} s")

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self._buffer += data
        if self._lengths is None:
            end = self._buffer.find(b"\n", 0, 64)
            if end < 0:
                if len(self._buffer) >= 64:
                    self._answer(EX_USAGE, "malformed request")
                return
            try:
                self._lengths = self._parse_first_line(bytes(self._buffer[:end]))
            except ValueError as error:
                self._answer(EX_USAGE, f"malformed request: {error}")
                return
            del self._buffer[: end + 1]
        header_length, data_length = self._lengths
        if self._far_too_big is not None:
            # Only the header is read, for how the caller wants its answer; not the body.
            if len(self._buffer) >= header_length:
                self._refuse_far_too_big(bytes(self._buffer[:header_length]))
            return
        if len(self._buffer) < header_length + data_length:
            return
        if len(self._buffer) > header_length + data_length:
            self._answer(EX_USAGE, "malformed request: more bytes than announced")
            return
        self._done = True
        header = bytes(self._buffer[:header_length])
        message = bytes(self._buffer[header_length:])
        self._buffer = bytearray()
        self._handle(header, message)

    def _parse_first_line(self, line: bytes) -> tuple[int, int]:
        magic, header_length, data_length = line.split(b" ")
        if magic != REQUEST_MAGIC:
            raise ValueError("unknown version")
        lengths = int(header_length), int(data_length)
        if not 0 < lengths[0] <= MAX_HEADER or lengths[1] < 0:
            raise ValueError("bad lengths")
        # CRLF conversion can at most double the bytes; past that, no need to read them.
        limit = self.factory.config.queue.max_message_size
        if lengths[1] > 2 * limit:
            self._far_too_big = (
                f"message is {lengths[1]} bytes, over max_message_size ({format_size(limit)})"
            )
        return lengths

    def _refuse_far_too_big(self, header: bytes) -> None:
        assert self._far_too_big is not None
        try:
            smtp = decode_header(header)[0].mode == "smtp"
        except ValueError:
            smtp = False
        error = MessageTooBig(self._far_too_big)
        self._answer(ANSWERS[error.kind].sendmail, refusal_text(error, smtp))

    def _handle(self, header: bytes, message: bytes) -> None:
        try:
            args, user = decode_header(header)
        except ValueError as error:
            self._answer(EX_USAGE, f"malformed request: {error}")
            return
        uid = peer_uid(self.transport)
        now = self.factory.clock.seconds()
        if len(message) > PREPARED_ON_REACTOR:
            # Off the reactor thread: line endings and headers of a message of up to
            # max_message_size are rewritten here.
            prepared = self.factory.blocking(prepare_envelope, args, user, message, now)
        else:
            prepared = maybeDeferred(prepare_envelope, args, user, message, now)

        def commit(envelope: Envelope) -> Deferred[tuple[Envelope, str]]:
            return self.factory.submit(envelope).addCallback(lambda queue_id: (envelope, queue_id))

        def queued(result: tuple[Envelope, str]) -> None:
            envelope, message_id = result
            shown_uid = "?" if uid is None else uid
            log.info(  # its text made here: the log observer writes it without parsing a format
                "{line}",
                line=f"sendmail: queued {message_id} from <{envelope.sender}> for"
                f" {len(envelope.recipients)} recipient(s) (uid {shown_uid})",
                id=message_id,
                sender=envelope.sender,
                n=len(envelope.recipients),
                uid=shown_uid,
            )
            self._answer(EX_OK, message_id)

        def refused(failure: Failure) -> None:
            error = failure.value
            smtp = args.mode == "smtp"  # -bs: the text is the SMTP reply
            if kind_of(error) == "internal":
                log.failure("sendmail: could not queue a message", failure=failure)
                text = refusal_text(error, smtp, "could not queue the message, try again later")
            else:
                text = refusal_text(error, smtp)
            self._answer(answer_for(error).sendmail, text)

        prepared.addCallback(commit).addCallbacks(queued, refused)

    def _answer(self, status: int, text: str) -> None:
        self._done = True
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        if self.transport is not None and self.connected:
            line = text.replace("\n", " ")
            self.transport.write(f"{status} {line}\n".encode("utf-8", "replace"))
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self._done = True
        if self._counted:
            self._counted = False
            self.factory.active -= 1
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None


class SendmailFactory(Factory):
    noisy = False

    def __init__(self, config: Config, submit: Submit, clock: Any, blocking: Runner) -> None:
        self.config = config
        self.submit = submit
        self.clock = clock
        self.blocking = blocking
        self.active = 0

    def buildProtocol(self, addr: Any) -> SendmailRequest:
        return SendmailRequest(self)


class SendmailSocketService(ListeningService):
    """Listens on ``state_dir/sendmail.sock`` (mode 0660: whoever may write the queue may
    hand mail over). Without it sendmail still works, writing the queue itself, so a
    socket that cannot be bound is logged, not fatal."""

    name = "sendmail-socket"
    what = "sendmail socket"
    required = False

    def __init__(
        self, config: Config, submit: Submit, clock: Any, blocking: Runner, listen: Any = None
    ) -> None:
        super().__init__(config, listen)
        self.factory = SendmailFactory(config, submit, clock, blocking)
        self.path = config.sendmail_socket

    def address(self, config: Config) -> str | None:
        return self.path  # in state_dir, which only a restart can move

    def make_factory(self, config: Config) -> Any:
        return self.factory

    def open_port(self, config: Config) -> Any:
        if os.path.exists(self.path):  # a dead daemon's (we hold state_dir's lock)
            try:
                os.unlink(self.path)
            except OSError:
                pass  # the bind below says what is wrong
        return super().open_port(config)

    def bound(self, port: Any, config: Config) -> None:
        pass  # a fixed place in state_dir: nothing worth a log line

    def closed(self) -> None:
        """Stop taking new requests; those in flight still get their answer after commit."""
        if os.path.exists(self.path):
            os.unlink(self.path)

    async def reconfigure(self, config: Config) -> None:
        """New limits apply to the next request; the socket's place (state_dir) needs a
        restart, as reload says."""
        self.config = config
        self.factory.config = config
