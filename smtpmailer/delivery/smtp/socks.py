"""A SOCKS5 client (RFC 1928, with RFC 1929's user name and password) for SMTP relays
behind ``[Relay] proxy``: the connection to the proxy asks it to CONNECT to the relay by
name, and once it has, every byte is the wrapped protocol's (SMTP's, or TLS's first).
Twisted has a SOCKS4 server only; this is the small part of the protocol a client needs.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from twisted.internet.defer import Deferred

from smtpmailer.proxy import SocksProxy
from smtpmailer.tunnels import TunnelHandshake, connect_through

VERSION = 5
NO_AUTH, USER_PASSWORD, NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CONNECT = 0x01
IPV4, DOMAIN, IPV6 = 0x01, 0x03, 0x04
# RFC 1928 section 6, the REP field.
REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class SocksFailed(Exception):
    """No connection through the proxy: what it answered, or why it could not be reached."""


def connect_request(host: str, port: int) -> bytes:
    """CONNECT to an address as itself, to a name as a name (the proxy resolves it)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.rstrip(".").encode("idna")
        if not 0 < len(name) <= 255:
            raise ValueError(f"host name {host!r} cannot go in a SOCKS5 request") from None
        target = bytes((DOMAIN, len(name))) + name
    else:
        target = bytes((IPV4 if address.version == 4 else IPV6,)) + address.packed
    return bytes((VERSION, CONNECT, 0)) + target + struct.pack("!H", port)


class SocksHandshake(TunnelHandshake):
    """Greeting, the password when the proxy asks for it, CONNECT; then the wrapped
    protocol's connection. ``ready`` fails with SocksFailed."""

    def __init__(self, proxy: SocksProxy, host: str, port: int, factory: Any) -> None:
        super().__init__(f"the SOCKS proxy {proxy.address}", SocksFailed, factory)
        self._proxy = proxy
        self._request = connect_request(host, port)
        self._buffer = b""
        self._step = self._method

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's)
        methods = (NO_AUTH, USER_PASSWORD) if self._proxy.username is not None else (NO_AUTH,)
        self.transport.write(bytes((VERSION, len(methods), *methods)))

    def handshake(self, data: bytes) -> None:
        """Each step takes its answer once all of it is here, and says whether it did."""
        self._buffer += data
        while not self.ready.called and self._step():
            pass

    def _take(self, n: int) -> bytes | None:
        if len(self._buffer) < n:
            return None
        taken, self._buffer = self._buffer[:n], self._buffer[n:]
        return taken

    def _method(self) -> bool:
        answer = self._take(2)
        if answer is None:
            return False
        if answer[0] != VERSION:
            self.refuse("did not answer as a SOCKS5 proxy")
        elif answer[1] == USER_PASSWORD and self._proxy.username is not None:
            user = self._proxy.username.encode("utf-8")
            password = (self._proxy.password or "").encode("utf-8")
            self.transport.write(bytes((1, len(user))) + user + bytes((len(password),)) + password)
            self._step = self._password
        elif answer[1] == NO_AUTH:
            self._send_connect()
        elif answer[1] == NO_ACCEPTABLE and self._proxy.username is None:
            self.refuse("asks for a user name and password (give them in proxy)")
        else:
            self.refuse("accepts none of our ways to sign in")
        return True

    def _password(self) -> bool:
        answer = self._take(2)
        if answer is None:
            return False
        if answer[1] != 0:
            self.refuse("refused the user name or password")
        else:
            self._send_connect()
        return True

    def _send_connect(self) -> None:
        self.transport.write(self._request)
        self._step = self._connected

    def _connected(self) -> bool:
        if len(self._buffer) < 5:
            return False
        version, reply, _, kind, first = self._buffer[:5]
        sizes = {IPV4: 4, IPV6: 16, DOMAIN: 1 + first}
        if version != VERSION:
            self.refuse("did not answer as a SOCKS5 proxy")
        elif reply != 0:
            self.refuse(f"answered: {REPLIES.get(reply, f'error {reply}')}")
        elif kind not in sizes:
            self.refuse("answered with an unknown address type")
        elif self._take(4 + sizes[kind] + 2) is None:
            return False
        else:
            rest, self._buffer = self._buffer, b""
            self.hand_over(rest)
        return True


def _stop(result: Any, timer: Any) -> Any:
    if timer.active():
        timer.cancel()
    return result


class SocksEndpoint:
    """An endpoint to host:port through a SOCKS5 proxy (IStreamClientEndpoint).
    ``timeout`` and ``bindAddress`` are the connection to the proxy's."""

    def __init__(
        self,
        reactor: Any,
        proxy: SocksProxy,
        host: str,
        port: int,
        timeout: float = 30,
        bindAddress: Any = None,  # noqa: N803 (as HostnameEndpoint names it)
    ) -> None:
        from twisted.internet.endpoints import HostnameEndpoint

        self._reactor = reactor
        self._timeout = timeout
        self._to_proxy = HostnameEndpoint(
            reactor, proxy.host, proxy.port, timeout=timeout, bindAddress=bindAddress
        )
        self._proxy = proxy
        self._host, self._port = host, port

    def connect(self, factory: Any) -> Deferred[Any]:
        from smtpmailer.delivery.smtp.transport import describe_error

        handshake = SocksHandshake(self._proxy, self._host, self._port, factory)
        address = self._proxy.address

        def tunnelled() -> Deferred[Any]:
            # A proxy that takes the connection and never answers: SMTP's own timeout
            # starts only once the relay is reached.
            timer = self._reactor.callLater(
                self._timeout, handshake.refuse, f"did not answer within {self._timeout:g}s"
            )
            return handshake.ready.addBoth(_stop, timer)

        return connect_through(
            self._to_proxy,
            handshake,
            SocksFailed,
            lambda error: SocksFailed(f"the SOCKS proxy {address}: {describe_error(error)}"),
            tunnelled,
        )
