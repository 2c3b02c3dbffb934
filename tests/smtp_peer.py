"""A real SMTP server for end-to-end tests: aiosmtpd on 127.0.0.1, an ephemeral port, its own
thread. It records what it receives and can be told to misbehave the way relays do."""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from email import message_from_bytes
from typing import Any

import attrs
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from tests.fake_relay import EXCHANGE_CONCURRENT_LIMIT

# aiosmtpd logs every TLS handshake a test makes fail on purpose; keep test output readable.
logging.getLogger("mail.log").setLevel(logging.CRITICAL)


@attrs.define
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    authenticated_as: str | None
    tls: bool
    client_certificate: str | None = None  # its subject's common name, when one was shown
    client_address: str | None = None  # where the connection came from
    at: float = attrs.Factory(time.monotonic)  # when the relay took it

    def header(self, name: str) -> str | None:
        return message_from_bytes(self.data).get(name)


def _client_name(session: Session) -> str | None:
    """The common name of the certificate the client showed in TLS, if it showed one."""
    extra = session.ssl or {}
    certificate = extra.get("peercert") if isinstance(extra, dict) else None
    for rdn in (certificate or {}).get("subject", ()):
        for name, value in rdn:
            if name == "commonName":
                return str(value)
    return None


class Behaviour:
    """What the relay does. Tests flip these between phases; all access is under a lock."""

    def __init__(self) -> None:
        self.reject_rcpt: dict[str, str] = {}  # address -> reply, e.g. "550 5.1.1 no such user"
        self.tempfail_data = 0  # answer the next N DATA with 451
        self.drop_in_data = 0  # close the next N connections after the body, before replying
        self.stall_data = False  # never answer after the body


class _Handler:
    def __init__(self, peer: SMTPPeer) -> None:
        self.peer = peer

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        with self.peer.lock:
            reply = self.peer.behaviour.reject_rcpt.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.peer.lock:
            behaviour = self.peer.behaviour
            if behaviour.stall_data:
                stall = True
            else:
                stall = False
            if behaviour.drop_in_data > 0:
                behaviour.drop_in_data -= 1
                assert server.transport is not None
                server.transport.abort()
                self.peer.dropped += 1
                return "421 dropped"
            if getattr(server, "over_sending_limit", False):
                self.peer.over_sending_limit += 1
                return EXCHANGE_CONCURRENT_LIMIT
            if behaviour.tempfail_data > 0:
                behaviour.tempfail_data -= 1
                self.peer.tempfailed += 1
                return "451 4.3.0 try again later"
        if stall:
            await self.peer.unstall.wait()
            return "451 4.4.2 stalled"
        content = envelope.original_content or envelope.content or b""
        assert isinstance(content, bytes)
        received = Received(
            sender=envelope.mail_from or "",
            recipients=list(envelope.rcpt_tos),
            data=content,
            authenticated_as=(
                session.auth_data.login.decode() if session.auth_data is not None else None
            ),
            tls=session.ssl is not None,
            client_certificate=_client_name(session),
            client_address=session.peer[0] if session.peer else None,
        )
        with self.peer.lock:
            self.peer.received.append(received)
        return "250 2.0.0 OK queued"


@attrs.frozen
class _Bearer:
    login: bytes
    password: bytes = b""


class _BearerHandler(_Handler):
    """XOAUTH2 (Google's format) and OAUTHBEARER (RFC 7628), each token checked by the
    peer's ``bearer(user, token)``; a refused token gets the JSON challenge, then 535."""

    async def _check(self, server: SMTP, args: list[str], mechanism: str) -> AuthResult:
        import base64
        import json

        if len(args) < 2:
            await server.push("501 5.5.2 an initial response is required")
            return AuthResult(success=False, handled=True)
        text = base64.b64decode(args[1]).decode()
        fields = dict(part.split("=", 1) for part in text.split("\x01") if "=" in part)
        if mechanism == "XOAUTH2":
            user = fields.get("user", "")
        else:
            user = text.split(",")[1][2:] if text.startswith("n,a=") else ""
        token = fields.get("auth", "").removeprefix("Bearer ")
        assert self.peer.bearer is not None
        accepted = bool(self.peer.bearer(user, token))
        with self.peer.lock:
            self.peer.auth_attempts.append((mechanism, user, accepted))
        if accepted:
            return AuthResult(success=True, auth_data=_Bearer(user.encode()))
        challenge = {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
        await server.challenge_auth(json.dumps(challenge))
        return AuthResult(
            success=False,
            handled=False,
            message="535 5.7.8 Username and Password not accepted.",
        )

    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._check(server, args, "XOAUTH2")

    async def auth_OAUTHBEARER(self, server: SMTP, args: list[str]) -> AuthResult:
        return await self._check(server, args, "OAUTHBEARER")


class _PeerSMTP(SMTP):
    """aiosmtpd's server, counting the connections it holds open. When the peer's
    ``connection_limit`` is reached, one more is greeted with the 421 that Postfix's anvil
    gives at its smtpd_client_connection_count_limit, then closed."""

    peer: SMTPPeer
    admitted = False
    over_sending_limit = False  # see SMTPPeer.sending_limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:  # a new connection (STARTTLS calls this a second time)
            with self.peer.lock:
                limit = self.peer.connection_limit
                if limit is not None and self.peer.open_connections >= limit:
                    self.peer.turned_away += 1
                    refuse = True
                else:
                    self.peer.open_connections += 1
                    self.peer.most_open = max(self.peer.most_open, self.peer.open_connections)
                    refuse = False
                    sending = self.peer.sending_limit
                    self.over_sending_limit = (
                        sending is not None and self.peer.open_connections > sending
                    )
            if refuse:
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(
                    b"421 4.7.0 relay.test Error: too many connections from 127.0.0.1\r\n"
                )
                transport.close()
                return
            self.admitted = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self.admitted:
            return
        self.admitted = False
        with self.peer.lock:
            self.peer.open_connections -= 1
        super().connection_lost(error)


class SMTPPeer:
    """``start()`` returns the port. ``users`` turns on AUTH (PLAIN, LOGIN) and requires it;
    ``bearer(user, token)`` turns on XOAUTH2 and OAUTHBEARER instead."""

    def __init__(
        self,
        tls_cert: tuple[str, str] | None = None,
        users: dict[str, str] | None = None,
        port: int = 0,
        implicit_tls: bool = False,
        smtputf8: bool = False,
        bearer: Any = None,
        client_ca: str | None = None,
    ) -> None:
        """``client_ca``: TLS asks for a client certificate from this CA, and refuses a
        client without one."""
        self.lock = threading.Lock()
        self.bearer = bearer
        self.auth_attempts: list[tuple[str, str, bool]] = []  # mechanism, user, accepted
        self.behaviour = Behaviour()
        self.received: list[Received] = []
        self.dropped = 0
        self.tempfailed = 0
        self.connections = 0
        self.connection_limit: int | None = None  # see _PeerSMTP
        self.open_connections = 0
        self.most_open = 0
        self.turned_away = 0
        # Connections that may send at once, as Exchange Online counts a mailbox's: each
        # message on one more is refused after its content with EXCHANGE_CONCURRENT_LIMIT.
        self.sending_limit: int | None = None
        self.over_sending_limit = 0
        self._users = users
        self._tls: ssl.SSLContext | None = None
        if tls_cert:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(*tls_cert)
            if client_ca:
                self._tls.verify_mode = ssl.CERT_REQUIRED
                self._tls.load_verify_locations(client_ca)
        self.loop = asyncio.new_event_loop()
        self.unstall = asyncio.Event()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = port
        self.implicit_tls = implicit_tls
        self.smtputf8 = smtputf8

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self._users is not None
        ok = self._users.get(data.login.decode()) == data.password.decode()
        return AuthResult(success=ok, handled=False, auth_data=data)

    def _protocol(self) -> SMTP:
        with self.lock:
            self.connections += 1
        server = self._server_for_one_connection()
        server.peer = self
        return server

    def _server_for_one_connection(self) -> _PeerSMTP:
        starttls = self._tls if not self.implicit_tls else None
        if self.bearer is not None:
            return _PeerSMTP(
                _BearerHandler(self),
                hostname="relay.test",
                tls_context=starttls,
                require_starttls=starttls is not None,
                auth_required=True,
                auth_require_tls=starttls is not None,
                auth_exclude_mechanism=["PLAIN", "LOGIN"],
                timeout=60,
            )
        return _PeerSMTP(
            _Handler(self),
            hostname="relay.test",
            enable_SMTPUTF8=self.smtputf8,
            tls_context=starttls,
            require_starttls=starttls is not None,
            authenticator=self._authenticate if self._users else None,
            auth_required=bool(self._users),
            auth_require_tls=starttls is not None,
            timeout=60,
        )

    async def _serve(self) -> int:
        self._server = await self.loop.create_server(
            self._protocol,
            "127.0.0.1",
            self.port,
            reuse_address=True,
            ssl=self._tls if self.implicit_tls else None,
        )
        return int(self._server.sockets[0].getsockname()[1])

    def start(self) -> int:
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._serve(), self.loop).result(10)
        return self.port

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def close() -> None:
            self.unstall.set()
            self._server.close()
            # Sessions still open (a stalled one, say) end here, not as "Task was destroyed".
            current = asyncio.current_task()
            sessions = [t for t in asyncio.all_tasks() if t is not current]
            for task in sessions:
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def messages(self) -> list[Received]:
        with self.lock:
            return list(self.received)

    def set(self, **changes: Any) -> None:
        with self.lock:
            for key, value in changes.items():
                setattr(self.behaviour, key, value)
