"""The SMTP transport: connect (TCP, or TLS at once), then EHLO, STARTTLS and AUTH.

Errors become one line an operator understands; a failure to connect or to get through
TLS and AUTH is an OpenError, which sends the message on to the next relay.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.defer import Deferred

from smtpmailer.config import SMTPRelayConfig
from smtpmailer.delivery.smtp import auth
from smtpmailer.delivery.smtp.protocol import SMTPClientProtocol, SMTPProtocolError, SMTPTimeout
from smtpmailer.delivery.smtp.session import (
    AuthFailed,
    Busy,
    SessionError,
    SMTPSession,
    TokenRefused,
)
from smtpmailer.delivery.transport import Follow, OpenError, Session, TransportContext
from smtpmailer.oauth2.source import TokenError
from smtpmailer.queue import Lease, RecipientResult

Connector = Callable[[SMTPRelayConfig, SMTPClientProtocol], "Deferred[Any]"]


def describe_error(error: BaseException) -> str:
    """One line an operator understands, for the queue's last_error and the log."""
    from smtpmailer.delivery.smtp.socks import SocksFailed

    if isinstance(error, SessionError | SMTPTimeout | SMTPProtocolError | TokenError | SocksFailed):
        return str(error)
    if isinstance(error, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, net_error.TimeoutError):
        return "connection timed out"
    if isinstance(error, net_error.DNSLookupError):
        return "host name lookup failed"
    if isinstance(error, net_error.ConnectBindError):
        reason = str(error).removeprefix("Couldn't bind: ").rstrip(".")
        return f"cannot connect from source_address ({reason})"
    name = type(error).__name__
    if name == "VerificationError":
        return f"TLS: certificate does not match the relay's host name ({error})"
    if name == "Error" and type(error).__module__.startswith("OpenSSL"):
        details = [part[-1] for part in (error.args[0] if error.args else []) if part]
        text = ", ".join(str(d) for d in details if d) or "handshake failed"
        return f"TLS: {text}"
    if isinstance(error, net_error.ConnectionDone | net_error.ConnectionLost):
        return "connection closed by the relay"
    return f"{name}: {error}" if str(error) else name


def tcp_connector(reactor: Any) -> Connector:
    """Connect for real: TCP (and implicit TLS for ``security = tls``), with a timeout;
    through the relay's SOCKS5 proxy when it names one."""
    from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS

    from smtpmailer.delivery.smtp.socks import SocksEndpoint
    from smtpmailer.delivery.smtp.tls import client_tls_options
    from smtpmailer.proxy import parse_socks_proxy

    def connect(relay: SMTPRelayConfig, protocol: SMTPClientProtocol) -> Deferred[Any]:
        source = (relay.source_address, 0) if relay.source_address else None
        endpoint: Any
        if relay.proxy:
            proxy = parse_socks_proxy(relay.proxy)  # checked when the config was read
            endpoint = SocksEndpoint(
                reactor, proxy, relay.host, relay.port, relay.timeout, bindAddress=source
            )
        else:
            endpoint = HostnameEndpoint(
                reactor, relay.host, relay.port, timeout=relay.timeout, bindAddress=source
            )
        if relay.security == "tls":
            endpoint = wrapClientTLS(client_tls_options(relay), endpoint)
        return connectProtocol(endpoint, protocol)

    return connect


def start_tls(relay: SMTPRelayConfig) -> Callable[[SMTPClientProtocol], None]:
    def switch(protocol: SMTPClientProtocol) -> None:
        from smtpmailer.delivery.smtp.tls import client_tls_options

        transport: Any = protocol.transport
        transport.startTLS(client_tls_options(relay))

    return switch


def peer_label(relay: SMTPRelayConfig, protocol: SMTPClientProtocol) -> str:
    """``host[address]:port`` of a connection that was made, as Postfix logs it."""
    peer = protocol.transport.getPeer() if protocol.transport is not None else None
    return f"{relay.host}[{getattr(peer, 'host', '?')}]:{relay.port}"


class SMTPConnection:
    """An open, authenticated SMTP session, as delivery sees it."""

    def __init__(self, session: SMTPSession, label: str) -> None:
        self.session = session
        self.label = label

    @property
    def delivered(self) -> int:
        return self.session.delivered

    def deliver(
        self, lease: Lease, follow: Follow | None = None
    ) -> Coroutine[Any, Any, tuple[RecipientResult, ...]]:
        """The session's coroutine itself, which the pool's own awaits: wrapping it in a
        Deferred cost a layer of Twisted's coroutine driving for every message."""
        return self.session.deliver(lease, follow)

    def quit(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.session.quit())

    def abort(self) -> None:
        self.session.protocol.abort()


class SMTPTransport:
    def __init__(self, relay: SMTPRelayConfig, context: TransportContext) -> None:
        assert context.connector is not None, "the SMTP transport needs a connector"
        self.relay = relay
        self._clock = context.clock
        self._connect: Connector = context.connector
        self._helo = relay.helo or context.helo_name
        self._tokens = context.tokens

    def open(self) -> Deferred[Session]:
        return Deferred.fromCoroutine(self._open())

    def credentials(self) -> auth.Credentials | None:
        """A token source's for ``oauth2 = NAME``, else None (the relay's password)."""
        relay = self.relay
        if not relay.oauth2:
            return None
        assert self._tokens is not None and relay.username, "oauth2 without tokens or user"
        source = self._tokens(relay.oauth2)
        return auth.Credentials(relay.username, source.token, source.rejected)

    async def _open(self) -> Session:
        relay = self.relay
        # A refused token was dropped by its source: one more connection, with a fresh one.
        for last in (False, True):
            protocol = SMTPClientProtocol(self._clock, relay.timeout)
            label = f"{relay.host}[none]"  # until a TCP connection is made
            try:
                credentials = self.credentials()
                if credentials is not None:
                    # The token first: no connection waits idle on a token endpoint, and
                    # none is made at all when there is no token to send.
                    await credentials.secret()
                await self._connect(relay, protocol)
                label = peer_label(relay, protocol)
                session = SMTPSession(
                    protocol, relay, self._helo, start_tls(relay), credentials, label
                )
                await session.open()
            except TokenRefused as error:
                protocol.abort()
                if not last:
                    continue
                raise OpenError(str(error), f"{relay.host}:{relay.port}", label, True) from None
            except Exception as error:
                protocol.abort()
                problem = describe_error(error)
                refused = isinstance(error, AuthFailed | TokenError)
                busy = isinstance(error, Busy)
                raise OpenError(
                    problem, f"{relay.host}:{relay.port}", label, refused, busy
                ) from None
            return SMTPConnection(session, label)
        raise AssertionError("unreachable")

    def describe(self, error: BaseException) -> str:
        return describe_error(error)

    def retire(self) -> None:
        """Nothing to release: each session's connection closes with it."""


def make_transport(relay: Any, context: TransportContext) -> SMTPTransport:
    return SMTPTransport(relay, context)
