"""The ESMTP dialogue with one relay: EHLO, STARTTLS, AUTH, then one transaction per message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail

from smtpmailer.config import SMTPRelayConfig
from smtpmailer.delivery.smtp import auth
from smtpmailer.delivery.smtp.protocol import Reply, SMTPClientProtocol
from smtpmailer.delivery.transport import Follow, OpenError
from smtpmailer.dsn_options import from_meta, mail_params, rcpt_params
from smtpmailer.message import provider_template_of
from smtpmailer.queue import RCPT_FAILED, RCPT_SENT, Lease, RecipientResult


class SessionError(Exception):
    """The session cannot go on; ``permanent`` says whether retrying could ever help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Busy(SessionError):
    """The relay greeted us with a 4xx: it takes no more sessions now (Postfix's and
    Exim's answer to a client over their connection limit is a 421 greeting)."""


class AuthFailed(SessionError):
    """The relay refused our credentials: the operator's to fix (metrics count these)."""


class TokenRefused(AuthFailed):
    """The relay refused the access token: a new connection with a fresh token may pass."""


def limits_sessions(reply: Reply) -> bool:
    """A 4xx with the enhanced status 4.3.2 inside a transaction says this connection may
    not send now, not that the message is at fault: Exchange Online answers a mailbox's
    fourth connection at once with ``432 4.3.2 Concurrent connections limit exceeded``,
    after its content; Postfix says ``421 4.3.2 Service shutting down``."""
    return reply.temporary and bool(reply.lines) and reply.lines[0].split()[:1] == ["4.3.2"]


def _status_for(reply: Reply, defer_on: tuple[str, ...] = ()) -> str:
    """2xx sent, 4xx deferred, 5xx failed, except a 5xx whose enhanced status code says
    a quota that resets (``defer_on``, e.g. Gmail's daily limit 5.4.5): deferred."""
    if reply.positive:
        return RCPT_SENT
    if reply.temporary:
        return "deferred"
    first = (reply.lines[0].split() or [""])[0] if reply.lines else ""
    return "deferred" if first in defer_on else RCPT_FAILED


def smtputf8(lease: Lease) -> tuple[bool, bool]:
    """(required, wanted): UTF-8 in an envelope address cannot go without SMTPUTF8; UTF-8
    only in the header section asks for it when offered and is sent as it is otherwise
    (as Postfix does: relays take such mail every day)."""
    required = not (lease.sender + "".join(lease.recipients)).isascii()
    head = lease.data.split(b"\r\n\r\n", 1)[0]
    return required, required or not head.isascii()


class SMTPSession:
    """Drives one connection. ``open()`` once, ``deliver()`` per message, ``quit()`` at the end.

    ``start_tls`` is called with the protocol when STARTTLS was accepted; it switches the
    transport to TLS with the relay's verified client options. ``credentials`` default
    to the relay's username and password.
    """

    def __init__(
        self,
        protocol: SMTPClientProtocol,
        relay: SMTPRelayConfig,
        helo_name: str,
        start_tls: Any = None,
        credentials: auth.Credentials | None = None,
        label: str = "",
    ) -> None:
        self.protocol = protocol
        self.relay = relay
        self.label = label  # host[address]:port, for the OpenError of a limited session
        self.helo_name = helo_name
        self._start_tls = start_tls
        self.credentials = credentials or auth.password_credentials(relay.username, relay.password)
        self.extensions: dict[str, str] = {}
        self.tls = relay.security == "tls"
        self.delivered = 0
        # A message whose envelope went right after the previous one's content (see
        # _follow), with its replies to come, or its results when the relay cannot carry it.
        self._next: tuple[Lease, Deferred[list[Reply]] | tuple[RecipientResult, ...]] | None = None

    async def open(self, report: Callable[[str], None] = lambda step: None) -> None:
        """Greeting, EHLO, STARTTLS, AUTH. ``report`` hears each step that succeeded
        (``smtpmailer test`` prints them)."""
        greeting = await self.protocol.greeting
        if greeting.temporary:
            raise Busy(f"relay refused the session: {greeting}")
        if greeting.code != 220:
            raise SessionError(f"relay refused the session: {greeting}", greeting.code >= 500)
        report(f"greeting: {greeting}")
        await self._ehlo()
        report(f"EHLO: {self.offered()}")
        if self.relay.security == "starttls":
            if "STARTTLS" not in self.extensions:
                raise SessionError("relay does not offer STARTTLS (security = starttls)")
            reply = await self.protocol.command("STARTTLS")
            if reply.code != 220:
                raise SessionError(f"STARTTLS refused: {reply}")
            self._start_tls(self.protocol)
            self.tls = True
            await self._ehlo()  # the handshake, and the certificate check, happen here
            verified = "certificate verified" if self.relay.verify else "NOT verified"
            report(f"STARTTLS: ok, {verified}; EHLO again: {self.offered()}")
        mechanism = self._mechanism()
        await self._authenticate()
        report(f"AUTH {mechanism}: ok" if mechanism else "AUTH: not used")

    def offered(self) -> str:
        """The EHLO extensions, sorted, with the AUTH mechanisms the relay offers (what
        ``smtpmailer test`` shows: "AUTH" alone would not say which)."""
        words = [
            f"AUTH({' '.join(self.extensions[name].upper().split())})"
            if name == "AUTH" and self.extensions[name]
            else name
            for name in sorted(self.extensions)
        ]
        return " ".join(words) or "(no extensions)"

    async def _ehlo(self) -> None:
        reply = await self.protocol.command(f"EHLO {self.helo_name}")
        if reply.code == 250:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.partition(" ")
                self.extensions[keyword.upper()] = params
            return
        if reply.code >= 500:
            fallback = await self.protocol.command(f"HELO {self.helo_name}")
            if fallback.code == 250:
                self.extensions = {}
                return
            reply = fallback
        raise SessionError(f"relay refused EHLO: {reply}", reply.code >= 500)

    # --- AUTH ---

    def _mechanism(self) -> str | None:
        if self.relay.auth == "none" or self.credentials is None:
            return None
        try:
            return auth.choose(
                self.relay.auth,
                self.extensions.get("AUTH", ""),
                self.tls,
                self.credentials.bearer,
            )
        except auth.AuthError as error:
            raise SessionError(str(error)) from None

    async def _authenticate(self) -> None:
        mechanism = self._mechanism()
        if mechanism is None:
            return
        assert self.credentials is not None
        server = (self.relay.host, self.relay.port)
        reply = await auth.MECHANISMS[mechanism](self.protocol, self.credentials, server)
        if reply.code != 235:
            # A wrong password is the operator's to fix: defer, never fail the mail for it.
            problem = f"authentication failed ({mechanism}): {reply}"
            if mechanism in auth.BEARER_MECHANISMS:
                raise TokenRefused(problem)
            raise AuthFailed(problem)

    # --- transactions ---

    def _status(self, reply: Reply) -> str:
        return _status_for(reply, self.relay.defer_on)

    def _mail_from(self, lease: Lease, utf8: bool) -> str:
        params = []
        if "SIZE" in self.extensions:
            params.append(f"SIZE={len(lease.data)}")
        if "8BITMIME" in self.extensions and not lease.data.isascii():
            params.append("BODY=8BITMIME")
        if utf8:
            params.append("SMTPUTF8")
        if "DSN" in self.extensions:  # RFC 3461: the sender's own wishes, passed on
            params += mail_params(from_meta(lease.meta))
        return " ".join([f"MAIL FROM:<{lease.sender}>", *params])

    def _rcpt_to(self, lease: Lease, recipient: str) -> str:
        if "DSN" in self.extensions and lease.meta:
            return " ".join(
                [f"RCPT TO:<{recipient}>", *rcpt_params(from_meta(lease.meta), recipient)]
            )
        return f"RCPT TO:<{recipient}>"

    def _refused(self, lease: Lease) -> tuple[tuple[RecipientResult, ...] | None, bool]:
        """(results, utf8): results when this relay cannot carry the message at all (it
        is never offered to it), and whether MAIL FROM asks for SMTPUTF8."""
        named = provider_template_of(lease.data)
        if named is not None:
            reason = (
                f"5.6.0 this message names provider template {named}: only an API relay with "
                "templates can send it"
            )
            return tuple(RecipientResult(r, RCPT_FAILED, reason) for r in lease.recipients), False
        required, wanted = smtputf8(lease)
        offered = "SMTPUTF8" in self.extensions
        if required and not offered:
            reason = "5.6.7 the relay does not offer SMTPUTF8, which this message's addresses need"
            return tuple(RecipientResult(r, RCPT_FAILED, reason) for r in lease.recipients), False
        return None, wanted and offered

    def _envelope(self, lease: Lease, utf8: bool) -> list[str]:
        return [self._mail_from(lease, utf8), *(self._rcpt_to(lease, r) for r in lease.recipients)]

    def _follow(self, follow: Follow | None) -> bool:
        """Right after a message's content, the next message's MAIL, RCPT and DATA go in
        the same segment (RFC 2920 3.1: content may open a pipelined group), so a
        connection carries a message a round trip instead of two. ``follow`` hands over
        the next lease, or None when none is waiting (or the pool wants no more here)."""
        if follow is None or "PIPELINING" not in self.extensions:
            return False
        lease = follow()
        if lease is None:
            return False
        refused, utf8 = self._refused(lease)
        if refused is not None:
            self._next = (lease, refused)
            return False
        try:
            begun = self.protocol.send_commands(*self._envelope(lease, utf8), "DATA")
        except ValueError as error:  # a line break in an address: nothing was written
            self._next = (lease, fail(error))
            return False
        self._next = (lease, begun)
        return True

    def _drop_next(self) -> None:
        """The connection failed under a followed message: its replies will never come,
        and nobody will wait for them (the pool gives the message another connection)."""
        begun = self._next[1] if self._next is not None else None
        self._next = None
        if isinstance(begun, Deferred):
            begun.addErrback(lambda _: None)

    async def deliver(
        self, lease: Lease, follow: Follow | None = None
    ) -> tuple[RecipientResult, ...]:
        """One transaction. Returns a result per recipient; raises only when the connection
        cannot be trusted any more (lost, timed out, garbled). ``follow``: see _follow; a
        lease it returned must be the next one delivered here."""
        begun: Deferred[list[Reply]] | None = None
        utf8 = False
        if self._next is not None:
            expected, started = self._next
            self._next = None
            if expected is not lease:
                raise AssertionError("a followed message must be delivered next")
            if not isinstance(started, Deferred):
                return started
            begun = started
        else:
            refused, utf8 = self._refused(lease)
            if refused is not None:
                return refused
            if "PIPELINING" in self.extensions:
                begun = self.protocol.send_commands(*self._envelope(lease, utf8), "DATA")
        if begun is not None:
            replies = await begun
            mail, rcpts, data = replies[0], replies[1:-1], replies[-1]
        else:
            commands = self._envelope(lease, utf8)
            mail = await self.protocol.command(commands[0])
            rcpts, data = [], None
            if mail.positive:
                for command in commands[1:]:
                    rcpts.append(await self.protocol.command(command))
                if any(r.positive for r in rcpts):
                    data = await self.protocol.command("DATA")
        self.delivered += 1
        self._check_limit("MAIL FROM", mail)
        if not mail.positive:
            await self._abandon(data)
            return tuple(
                RecipientResult(r, self._status(mail), f"MAIL FROM: {mail}")
                for r in lease.recipients
            )
        accepted = [r for r, reply in zip(lease.recipients, rcpts, strict=True) if reply.positive]
        results = {
            r: RecipientResult(r, self._status(reply), str(reply))
            for r, reply in zip(lease.recipients, rcpts, strict=True)
            if not reply.positive
        }
        if not accepted:
            await self._abandon(data)
        elif data is None or data.code != 354:
            assert data is not None
            self._check_limit("DATA", data)
            await self._abandon(data)
            for r in accepted:
                results[r] = RecipientResult(r, self._status(data), f"DATA: {data}")
        else:
            sending = self.protocol.send_body(lease.data)
            pipelined = self._follow(follow)
            try:
                final = await sending
            except BaseException:
                self._drop_next()
                raise
            if limits_sessions(final):
                self._drop_next()
                self._check_limit("after the content", final)
            for r in accepted:
                results[r] = RecipientResult(r, self._status(final), str(final))
            if not final.positive and not pipelined:
                # The transaction is over either way (RFC 5321 4.1.1.4); the RSET only
                # makes sure, and would cancel a followed message's envelope.
                await self._reset()
        return tuple(results[r] for r in lease.recipients)

    def _check_limit(self, stage: str, reply: Reply) -> None:
        """A reply that limits sessions ends this one as if it had not opened (OpenError,
        busy): the message is no attempt and goes on another connection, or with the
        others waiting here to the next relay when this was the only one."""
        if limits_sessions(reply):
            where = f"{self.relay.host}:{self.relay.port}"
            raise OpenError(f"{stage}: {reply}", where, self.label or where, busy=True)

    async def _abandon(self, data: Reply | None) -> None:
        """End a transaction that will carry no message; the connection stays usable."""
        if data is not None and data.code == 354:
            # The relay took DATA although nobody is to receive it: send an empty message
            # (the relay has no recipients, so it delivers nothing) to get back in step.
            await self.protocol.send_body(b"")
        await self._reset()

    async def _reset(self) -> None:
        reply = await self.protocol.command("RSET")
        if reply.code != 250:
            raise SessionError(f"RSET refused: {reply}")

    async def quit(self) -> None:
        try:
            await self.protocol.command("QUIT")
        except Exception:
            pass  # the relay closing first is as good as a 221
        self.protocol.close()
