"""SubmissionService: a local ESMTP listener that queues what applications hand it.

Built on twisted.mail.smtp's ESMTP server, which gives one IMessage per recipient and a
generic reply. Ours collects one message per transaction, answers ``250 2.0.0 queued as ID``
only after the commit, maps refusals to the right codes (452 full, 552 too big, 553 bad
address, 452 too many recipients), checks SIZE up front, holds pipelined commands back while
a commit runs, and offers AUTH (bcrypt or argon2 hashes, checked off the reactor) only after
STARTTLS when TLS is configured.
"""

from __future__ import annotations

import json
import re
import socket
from collections import Counter
from typing import Any

from twisted.cred import credentials
from twisted.cred import error as cred_error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import protocol
from twisted.internet.defer import Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.mail import smtp
from twisted.mail._cred import LOGINCredentials, PLAINCredentials
from twisted.python.failure import Failure
from zope.interface import implementer

from smtpmailer.config import Config
from smtpmailer.dsn_options import BadOption, DSNOptions, mail_options, rcpt_options
from smtpmailer.intake.refusals import (
    MessageTooBig,
    Refusal,
    TooManyRecipients,
    answer_for,
    kind_of,
)
from smtpmailer.intake.smtp.queued_line import log_queued
from smtpmailer.intake.smtp.worker_pool import WorkerPool
from smtpmailer.listening import Listen, ListeningService
from smtpmailer.logs import log
from smtpmailer.message import Envelope, normalize_address, to_crlf
from smtpmailer.units import format_size

_SIZE = re.compile(rb"(?:^|\s)SIZE=(\d+)", re.IGNORECASE)
# Twisted's own grammar refuses UTF-8 addresses, which SMTPUTF8 (RFC 6531) allows.
_PATH = re.compile(rb"^\s*(FROM|TO):\s*<([^<>]*)>\s*(.*)$", re.IGNORECASE)


class _Path:
    """An envelope address as Twisted's server code expects one (str() gives it)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.dest = self

    def __str__(self) -> str:
        return self.address

    def __bytes__(self) -> bytes:
        return self.address.encode("utf-8")


def verify_password(password: str, stored: str) -> bool:
    """bcrypt ($2a$/$2b$/$2y$) or argon2 ($argon2id$...) hashes; never plain text."""
    if stored.startswith("$2"):
        import bcrypt

        return bool(bcrypt.checkpw(password.encode(), stored.encode()))
    if stored.startswith("$argon2"):
        from argon2 import PasswordHasher
        from argon2.exceptions import VerificationError

        try:
            return bool(PasswordHasher().verify(stored, password))
        except (VerificationError, ValueError):
            return False
    return False


def read_users(path: str) -> dict[str, str]:
    users = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, stored = line.partition(":")
                users[name.strip()] = stored.strip()
    return users


@implementer(ICredentialsChecker)
class UsersFileChecker:
    """Checks a login against ``[Submission] users_file``; hashing runs in a thread."""

    credentialInterfaces = (credentials.IUsernamePassword,)

    def __init__(self, path: str, blocking: Any) -> None:
        self.path = path
        self._blocking = blocking

    def requestAvatarId(self, creds: Any) -> Any:
        try:
            stored = read_users(self.path).get(creds.username.decode("utf-8", "replace"))
        except OSError as error:
            log.warn("submission: cannot read {path}: {error}", path=self.path, error=error)
            return fail(cred_error.UnauthorizedLogin())
        if stored is None:
            return fail(cred_error.UnauthorizedLogin())
        password = creds.password.decode("utf-8", "replace")

        def checked(ok: bool) -> bytes:
            if not ok:
                raise cred_error.UnauthorizedLogin()
            return bytes(creds.username)

        return self._blocking(verify_password, password, stored).addCallback(checked)


@implementer(IRealm)
class _Realm:
    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        return smtp.IMessageDelivery, avatar_id, lambda: None


class _Collector:
    """The one message of a transaction: lines in, durable enqueue at the end."""

    def __init__(
        self,
        server: SubmissionProtocol,
        sender: str,
        recipients: list[str],
        dsn: DSNOptions | None = None,
    ) -> None:
        self.server = server
        self.sender = sender
        self.recipients = recipients
        self.dsn = dsn or DSNOptions()
        self.lines: list[bytes] = []
        self.body = b""  # the DATA content, when read in bulk
        self.size = 0

    def lineReceived(self, line: bytes) -> None:
        self.size += len(line) + 2
        limit = self.server.config.queue.max_message_size
        if self.size > limit:
            # Twisted writes this reply as given at the final dot: bytes, not str.
            raise smtp.SMTPServerError(*refusal_reply(too_big(limit), encode=True))
        self.lines.append(line)

    def eomReceived(self) -> Deferred[str]:
        data = to_crlf(b"".join(line + b"\r\n" for line in self.lines) + self.body)
        meta = json.dumps(self.dsn.as_meta()) if self.dsn else ""
        envelope = Envelope(self.sender, tuple(self.recipients), data, meta)
        return self.server.factory.enqueue(envelope, self.server._peer)

    def connectionLost(self) -> None:
        self.lines = []


class _Silent:
    """Stands for the other recipients: Twisted wants one IMessage per recipient."""

    def __init__(self, collector: _Collector) -> None:
        self.collector = collector

    def lineReceived(self, line: bytes) -> None:
        pass

    def eomReceived(self) -> Deferred[None]:
        return succeed(None)

    def connectionLost(self) -> None:
        pass


class SubmissionProtocol(smtp.ESMTP):
    noisy = False  # Twisted logs every message otherwise
    factory: SubmissionFactory

    def __init__(self, factory: SubmissionFactory) -> None:
        challengers = {b"PLAIN": PLAINCredentials, b"LOGIN": LOGINCredentials}
        super().__init__(
            chal=challengers if factory.portal is not None else {},
            contextFactory=factory.tls,
        )
        self.factory = factory
        self.config = factory.config
        self.portal = factory.portal  # type: ignore[assignment]
        self.host = factory.hostname.encode()
        self.timeout = 300
        self.callLater = factory.clock.callLater  # type: ignore[method-assign]
        self._collector: _Collector | None = None
        self._held: list[bytes] | None = None
        self._smtputf8 = False
        # RFC 3461 options: as MAIL FROM and the last RCPT TO gave them, and the
        # transaction's (built up by validateFrom and validateTo).
        self._raw_params: list[bytes] = []
        self._dsn_given: tuple[str | None, str | None] = (None, None)
        self._rcpt_given: tuple[str | None, str | None] = (None, None)
        self._dsn = DSNOptions()

    # --- connections ---

    def connectionMade(self) -> None:
        if hasattr(self.transport, "setTcpNoDelay"):
            # Replies are small and each waits for the client's next command: Nagle's
            # algorithm would hold them for the client's delayed ACK.
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]
        peer = getattr(self.transport.getPeer(), "host", "?")  # type: ignore[union-attr]
        self._peer = peer
        count = self.factory.open_connections[peer]
        if count >= self.factory.per_client:
            self.transport.write(b"421 4.7.0 Too many connections from your address\r\n")  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]
            self._counted = False
            return
        self._counted = True
        self.factory.open_connections[peer] += 1
        super().connectionMade()
        self.factory.opened(self)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        if getattr(self, "_counted", False):
            self.factory.open_connections[self._peer] -= 1
            self._counted = False
            self.factory.closed(self)
        refusal = getattr(self, "_auth_refusal", None)
        if refusal is not None and refusal.active():
            refusal.cancel()
        super().connectionLost(reason)

    # --- draining: a worker that is replaced finishes what it has begun ---

    @property
    def busy(self) -> bool:
        """In a transaction: an envelope begun, DATA under way, or a commit awaited."""
        return (
            self._from is not None
            or self.mode == smtp.DATA
            or self._held is not None
            or self._collector is not None
        )

    def close_if_idle(self) -> None:
        """While draining: close now if no transaction is under way (after its answer
        otherwise), with a 421 the client takes as "try again" (RFC 5321 3.8)."""
        if self.busy or self.transport is None or getattr(self.transport, "disconnecting", False):
            return
        self.sendCode(421, b"4.3.2 Service restarting, please try again")
        self.transport.loseConnection()  # what was written (the last 250) goes out first

    # --- AUTH that fails: RFC 4954's code, a log line for fail2ban, a growing delay ---

    def _cbAuthenticated(self, login_info: Any) -> Any:
        self.factory.auth_failures.succeeded(self._peer)
        return super()._cbAuthenticated(login_info)

    def _ebAuthenticated(self, reason: Failure) -> None:
        if not reason.check(cred_error.UnauthorizedLogin):
            super()._ebAuthenticated(reason)
            return
        self.challenge = None
        user = getattr(self.challenger, "username", b"") or b""
        failures, delay = self.factory.auth_failures.failed(self._peer)
        log.warn(
            "{line}",
            line=auth_failure_line(self._peer, user.decode("utf-8", "replace"), failures),
        )
        refuse = self.sendCode
        self._auth_refusal = self.factory.clock.callLater(
            delay, refuse, 535, b"5.7.8 Authentication credentials invalid"
        )

    # --- EHLO ---

    def extensions(self) -> dict[bytes, Any]:
        extensions = super().extensions()
        if self.canStartTLS and not self.startedTLS and self.factory.tls_required_for_auth:
            extensions.pop(b"AUTH", None)  # no passwords in the clear
        if not self.challengers:
            extensions.pop(b"AUTH", None)
        extensions[b"PIPELINING"] = None
        extensions[b"8BITMIME"] = None
        extensions[b"SMTPUTF8"] = None
        extensions[b"ENHANCEDSTATUSCODES"] = None
        extensions[b"SIZE"] = [str(self.config.queue.max_message_size).encode()]
        extensions[b"DSN"] = None
        return extensions

    def do_EHLO(self, rest: bytes) -> None:
        if not hasattr(self.transport.getPeer(), "host"):  # type: ignore[union-attr]
            # listen = unix:PATH: Twisted's EHLO wants an IP address here (its HELO copes).
            self._helo = (rest, b"localhost")
            self._from = None
            self._to = []
            self.sendCode(
                250, self.host + b" Hello localhost, nice to meet you\n" + self.listExtensions()
            )
            return
        super().do_EHLO(rest)

    def ext_AUTH(self, rest: bytes) -> None:
        if self.canStartTLS and not self.startedTLS and self.factory.tls_required_for_auth:
            self.sendCode(538, b"5.7.11 Encryption required: STARTTLS first")
            return
        if not rest.split():  # Twisted's own would raise IndexError (found by fuzzing)
            self.sendCode(501, b"5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        super().ext_AUTH(rest)

    # --- envelope ---

    def _path(self, rest: bytes, kind: bytes) -> tuple[str, list[bytes]] | None:
        """Parse ``FROM:<address> PARAMS``; None after answering the client."""
        match = _PATH.match(rest)
        if not match or match.group(1).upper() != kind:
            self.sendCode(
                501,
                f"5.5.4 Syntax: {'MAIL FROM' if kind == b'FROM' else 'RCPT TO'}:<address>".encode(),
            )
            return None
        params = match.group(3).upper().split()
        self._raw_params = match.group(3).split()  # ENVID, ORCPT keep their case
        try:
            address = match.group(2).decode("utf-8")
        except UnicodeDecodeError:
            self.sendCode(553, b"5.6.7 The address is not UTF-8")
            return None
        if (
            not address.isascii()
            and not (kind == b"TO" and self._smtputf8)
            and not (kind == b"FROM" and b"SMTPUTF8" in params)
        ):
            self.sendCode(553, b"5.6.7 A non-ASCII address needs SMTPUTF8")
            return None
        return address, params

    def do_MAIL(self, rest: bytes) -> None:
        if self._from:
            self.sendCode(503, b"5.5.1 Only one sender per message, please")
            return
        parsed = self._path(rest, b"FROM")
        if parsed is None:
            return
        address, params = parsed
        size = _SIZE.search(b" " + b" ".join(params))
        if size and int(size.group(1)) > self.config.queue.max_message_size:
            self.sendCode(*refusal_reply(too_big(self.config.queue.max_message_size), True))
            return
        try:
            self._dsn_given = mail_options(self._raw_params)
        except BadOption as error:
            self.sendCode(501, f"5.5.4 {error}".encode())
            return
        self._to = []
        self._smtputf8 = b"SMTPUTF8" in params
        validated = maybeDeferred(self.validateFrom, self._helo, _Path(address))
        validated.addCallbacks(self._cbFromValidate, self._ebFromValidate)

    def do_RCPT(self, rest: bytes) -> None:
        if not self._from:
            self.sendCode(503, b"5.5.1 Must have sender before recipient")
            return
        parsed = self._path(rest, b"TO")
        if parsed is None:
            return
        try:
            self._rcpt_given = rcpt_options(self._raw_params)
        except BadOption as error:
            self.sendCode(501, f"5.5.4 {error}".encode())
            return
        user = _Path(parsed[0])
        validated = maybeDeferred(self.validateTo, user)
        validated.addCallbacks(self._cbToValidate, self._ebToValidate, callbackArgs=(user,))

    def validateFrom(self, helo: Any, origin: Any) -> Any:
        # SMTPServerError, not SMTPBadSender: Twisted formats the latter with quoteaddr.
        if self.factory.auth_required and not self.authenticated:
            raise smtp.SMTPServerError(530, "5.7.0 Authentication required")
        text = str(origin)
        if text:
            try:
                normalize_address(text, "sender", allow_utf8=True)
            except Refusal as error:
                raise smtp.SMTPServerError(*refusal_reply(error)) from None
        self._collector = None
        self._recipients: list[str] = []
        ret, envid = self._dsn_given
        self._dsn = DSNOptions(ret, envid, {}, {})
        return origin

    def validateTo(self, user: Any) -> Any:
        if len(self._to) >= self.factory.max_recipients:
            refusal = TooManyRecipients("Too many recipients")
            raise smtp.SMTPServerError(*refusal_reply(refusal))
        try:
            address = normalize_address(str(user.dest), "recipient", allow_utf8=True)
        except Refusal as error:
            raise smtp.SMTPServerError(*refusal_reply(error)) from None
        sender = str(self._from) if self._from else ""
        notify, orcpt = self._rcpt_given
        if notify:
            self._dsn.notify[address] = notify
        if orcpt:
            self._dsn.orcpt[address] = orcpt
        self._recipients.append(address)
        recipients = self._recipients  # Twisted empties self._to before DATA builds messages

        def message() -> Any:
            if self._collector is None:
                self._collector = _Collector(self, sender, list(recipients), self._dsn)
                return self._collector
            return _Silent(self._collector)

        return message

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes | None:
        if self._collector is None or self._collector.lines:
            return None  # once, into the collector, right after it was made
        client = helo[0].decode("ascii", "replace") if helo and helo[0] else "unknown"
        ip = helo[1] if helo and len(helo) > 1 else self._peer
        ip = ip.decode("ascii", "replace") if isinstance(ip, bytes) else ip
        # RFC 3848: S for TLS, A for authenticated.
        with_ = "ESMTP" + ("S" if self.startedTLS else "") + ("A" if self.authenticated else "")
        stamp = smtp.rfc822date().decode()
        return (
            f"Received: from {client} ({ip}) by {self.factory.hostname} (smtpmailer) "
            f"with {with_}; {stamp}"
        ).encode()

    # --- commands that are not ASCII ---

    def state_COMMAND(self, line: bytes) -> None:
        """Bytes that are not ASCII where Twisted expects a command or an ASCII argument
        raised UnicodeError inside Twisted: an "Unhandled Error" traceback in the log and
        a dropped connection. Now they get 500 5.5.2, and the session goes on."""
        try:
            super().state_COMMAND(line)
        except UnicodeError:
            self.sendCode(500, b"5.5.2 Syntax error: the command is not ASCII")

    # --- the end of DATA: reply only after the commit ---

    def lineReceived(self, line: bytes) -> Any:
        if getattr(self, "_bulk", None) is not None:  # DATA that came with the command
            self._bulk_feed(line + b"\r\n")
            return None
        if self._held is not None:  # a commit is running: pipelined commands wait
            self._held.append(line)
            return None
        return super().lineReceived(line)

    def dataLineReceived(self, line: bytes) -> None:
        if line == b"." and not self.datafailed:
            self._held = []  # until _messageHandled answers; a failed DATA answers at once
        super().dataLineReceived(line)

    # --- DATA in bulk: scan for CRLF.CRLF instead of handling every line (profiled: most of
    # the listener's CPU went to per-line calls) ---

    def do_DATA(self, rest: bytes) -> None:
        super().do_DATA(rest)
        if self.mode == smtp.DATA:
            self._bulk: bytearray | None = bytearray()
            self._bulk_dropped = 0

    def dataReceived(self, data: bytes) -> None:
        if getattr(self, "_bulk", None) is not None:
            self.resetTimeout()  # data flowing counts as activity (Twisted resets per line)
            pending, self._buffer = self._buffer, b""
            self._bulk_feed(pending + data)
        else:
            super().dataReceived(data)

    def _bulk_feed(self, chunk: bytes) -> None:
        bulk = self._bulk
        assert bulk is not None
        start = max(0, len(bulk) - 4)
        bulk += chunk
        if bulk.startswith(b".\r\n") and not self._bulk_dropped:
            body, rest = b"", bytes(bulk[3:])  # an empty message
        else:
            end = bulk.find(b"\r\n.\r\n", start)
            if end < 0:
                limit = self.config.queue.max_message_size
                if len(bulk) + self._bulk_dropped > limit + 4:
                    # Too big: keep only what can still hold the end marker.
                    self._bulk_dropped += len(bulk) - 4
                    del bulk[:-4]
                return
            body, rest = bytes(bulk[: end + 2]), bytes(bulk[end + 5 :])
        self._bulk = None
        self._end_bulk(body, rest)

    def _end_bulk(self, body: bytes, rest: bytes) -> None:
        messages = self._SMTP__messages  # type: ignore[attr-defined]
        del self._SMTP__messages  # type: ignore[attr-defined]
        self.mode = smtp.COMMAND
        collector = self._collector
        limit = self.config.queue.max_message_size
        size = len(body) + self._bulk_dropped + (collector.size if collector else 0)
        if size > limit or collector is None:
            for message in messages:
                message.connectionLost()
            self._collector = None
            self.sendCode(*refusal_reply(too_big(limit), encode=True))
        else:
            # Undo dot-stuffing: a line's leading dot goes (RFC 5321 4.5.2).
            body = body.replace(b"\r\n.", b"\r\n")
            collector.body = body[1:] if body.startswith(b".") else body
            self._held = []
            DeferredList(
                [message.eomReceived() for message in messages], consumeErrors=True
            ).addCallback(self._messageHandled)
        if rest:
            super().dataReceived(rest)

    def do_NOOP(self, rest: bytes) -> None:
        self.sendCode(250, b"2.0.0 OK")

    state_DATA = dataLineReceived

    def _messageHandled(self, results: list[tuple[bool, Any]]) -> None:
        collector, self._collector = self._collector, None
        failures = [value for ok, value in results if not ok]
        if failures:
            failure = failures[0]
            kind = kind_of(failure.value)
            if kind in ("storage", "internal"):
                log.failure("submission: could not queue a message", failure=failure)
            text = QUEUE_TROUBLE.get(kind, failure.getErrorMessage())
            self.sendCode(*refusal_reply(failure.value, True, text))
        else:
            message_id = next(value for ok, value in results if ok and value)
            self.sendCode(250, f"2.0.0 Ok: queued as {message_id}".encode())
            if self.factory.logs_queued and collector is not None:
                log_queued(message_id, collector.sender, len(collector.recipients), self._peer)
        self._release_held()
        if self.factory.draining:
            self.close_if_idle()

    def _release_held(self) -> None:
        held, self._held = self._held or [], None
        for line in held:
            if self._held is not None:  # another DATA ended inside the held lines
                self._held.append(line)
            else:
                self.lineReceived(line)


def auth_failure_line(peer: str, user: str, failures: int) -> str:
    """One stable line per failed AUTH, for fail2ban (packaging/fail2ban): the client
    address and the user name as given, never the password."""
    shown = "".join(c if c.isprintable() and not c.isspace() else "?" for c in user)[:64]
    return f"submission: authentication failed for user={shown or '-'} from={peer} " + (
        f"({failures} in a row)"
    )


class AuthFailures:
    """Failed AUTH by client address: each failure in a row makes the next refusal wait
    longer (1, 2, 4 ... up to MAX_DELAY s); a success, or QUIET s without one, forgets."""

    MAX_DELAY = 30.0
    QUIET = 900.0

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._by_peer: dict[str, tuple[int, float]] = {}

    def failed(self, peer: str) -> tuple[int, float]:
        """(failures in a row, seconds to wait before answering this one)."""
        now = self._clock.seconds()
        count, last = self._by_peer.get(peer, (0, now))
        if now - last > self.QUIET:
            count = 0
        count += 1
        self._by_peer[peer] = (count, now)
        if len(self._by_peer) > 10000:  # a flood of addresses: forget the oldest
            oldest = min(self._by_peer, key=lambda key: self._by_peer[key][1])
            del self._by_peer[oldest]
        return count, min(self.MAX_DELAY, 2.0 ** (count - 2)) if count > 1 else 0.0

    def succeeded(self, peer: str) -> None:
        self._by_peer.pop(peer, None)


def _ascii(text: str) -> str:
    """Replies go out as ASCII (Twisted encodes them so): escape what is not."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


# What a client is told when the queue, not its message, is the trouble.
QUEUE_TROUBLE = {
    "full": "Queue full, try again later",
    "busy": "Queue busy, try again later",
    "storage": "Could not queue the message, try again later",
    "internal": "Could not queue the message, try again later",
}


def too_big(limit: int) -> MessageTooBig:
    return MessageTooBig(f"Message too big for this system (max {format_size(limit)})")


def refusal_reply(error: BaseException, encode: bool = False, text: str | None = None) -> Any:
    """The refusals table's SMTP reply for ``error``: (code, text), the text as bytes with
    ``encode`` (Twisted writes replies given at the final dot as they are)."""
    code, line = answer_for(error).smtp(_ascii(str(error) if text is None else text))
    return code, line.encode("ascii") if encode else line


class SubmissionFactory(protocol.ServerFactory):
    """``enqueue(envelope, peer)`` commits a transaction's message (or hands it to the
    daemon, in a worker) and fires with its queue id. ``logs_queued``: this process commits,
    so the listener says the queued line; a worker leaves it to the daemon
    (intake/smtp/queued_line.py says why)."""

    noisy = False

    def __init__(
        self, config: Config, enqueue: Any, clock: Any, blocking: Any, logs_queued: bool = True
    ) -> None:
        self.config = config
        self.enqueue = enqueue
        self.logs_queued = logs_queued
        self.clock = clock
        self.hostname = socket.gethostname()
        self.open_connections: Counter[str] = Counter()
        settings = config.submission
        self.per_client = settings.max_connections_per_client
        self.max_recipients = settings.max_recipients
        self.portal = (
            Portal(_Realm(), [UsersFileChecker(settings.users_file, blocking)])
            if settings.users_file
            else None
        )
        self.auth_required = settings.users_file is not None
        self.auth_failures = AuthFailures(clock)
        self.protocols: set[SubmissionProtocol] = set()
        self.draining = False
        self._drained: list[Deferred[None]] = []
        self.tls = _server_tls(settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        self.tls_required_for_auth = self.tls is not None

    def buildProtocol(self, addr: Any) -> Any:
        return SubmissionProtocol(self)

    def opened(self, protocol: SubmissionProtocol) -> None:
        self.protocols.add(protocol)
        if self.draining:
            protocol.close_if_idle()

    def closed(self, protocol: SubmissionProtocol) -> None:
        self.protocols.discard(protocol)
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.draining and not self.protocols:
            waiters, self._drained = self._drained, []
            for waiter in waiters:
                waiter.callback(None)

    def drain(self) -> Deferred[None]:
        """Begin no new transaction: every connection is closed once the one it is in
        has its answer. Fires when the last connection is closed."""
        self.draining = True
        waiter: Deferred[None] = Deferred()
        self._drained.append(waiter)
        for connection in list(self.protocols):
            connection.close_if_idle()
        self._maybe_drained()
        return waiter


def _server_tls(cert: str, key: str | None) -> Any:
    from twisted.internet import ssl

    with open(cert, "rb") as handle:
        pem = handle.read()
    if key:
        with open(key, "rb") as handle:
            pem += b"\n" + handle.read()
    return ssl.PrivateCertificate.loadPEM(pem).options()


class SubmissionService(ListeningService):
    """The SMTP listener: served by worker processes where there are CPUs for them, else
    by this process (tests, Windows, and while a new worker starts)."""

    name = "submission"
    what = "submission"

    def __init__(
        self,
        config: Config,
        queue_enqueue: Any,
        clock: Any,
        blocking: Any,
        listen: Listen | None = None,
        workers: WorkerPool | None = None,
    ) -> None:
        super().__init__(config, listen)
        self._enqueue = queue_enqueue
        self._clock = clock
        self._blocking = blocking
        self.workers = workers  # None: everything in this process (tests, Windows)
        self.factory: SubmissionFactory | None = None

    def address(self, config: Config) -> str | None:
        return config.submission.listen

    def make_factory(self, config: Config) -> SubmissionFactory:
        self.factory = SubmissionFactory(
            config, lambda envelope, peer: self._enqueue(envelope), self._clock, self._blocking
        )
        return self.factory

    def startService(self) -> None:
        super().startService()
        self._start_workers()

    def _start_workers(self) -> None:
        count = self.config.submission.workers
        if self.workers is not None and self.port is not None and count:
            self.workers.start(self.config, self.port, count)

    def stopService(self) -> Any:
        stopping = [super().stopService()]
        if self.workers is not None:
            stopping.append(self.workers.stop())
        waits = [d for d in stopping if d is not None]
        return DeferredList(waits) if waits else None

    async def reconfigure(self, config: Config) -> None:
        changed = config.submission != self.config.submission
        moved = self.needs_rebind(self.config, config)
        # Workers hold their own copy of the config: a new one means new workers.
        renew_workers = changed or (
            config.queue.max_message_size,
            config.logging.level,
        ) != (self.config.queue.max_message_size, self.config.logging.level)
        self.config = config
        if self.factory is not None:
            self.factory.config = config
        if not self.running or self._listen is None:
            return
        if renew_workers and self.workers is not None:
            # Until the new ones are ready, this process serves the port itself.
            await self.workers.stop(keep_port=not moved)
        if moved:
            await self.rebind(config)
        elif changed and self.port is not None:
            # Same address: the port stays open (a second bind of it would fail) and new
            # connections get the new settings (TLS, users, limits).
            self.port.factory = self.make_factory(config)
        if renew_workers:
            self._start_workers()
