"""The HTTP client: HTTP/1.1 over persistent connections (one pool per API relay, keeping
as many idle connections as its ``max_connections``; one for the OAuth2 token endpoints and
one for the webhooks), TLS verified by Twisted's default policy, one deadline for each whole
request, the body included. Failures on the way are HTTPFailure, in one line.

The answers are read by httptools (llhttp, the parser of Node.js, as uvicorn uses it).
Twisted's Agent cost 0.19 ms of CPU a request to a local nginx, over a third of what an API
relay spent on a 1 KB message; this client costs 0.03-0.04 ms for the same exchange
(measured in one run; bench/profile --api shows where a relay's time goes). Requests are
GET and POST: a HEAD's answer, which has a length and no body, is not read here."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.protocol import Protocol

from smtpmailer.proxy import Proxy, bypasses
from smtpmailer.tunnels import TunnelHandshake, connect_through


@attrs.frozen
class Request:
    method: str
    url: str
    headers: dict[str, str] = attrs.field(repr=False)  # the API key is in here
    body: bytes = attrs.field(repr=False)


@attrs.frozen
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class HTTPFailure(Exception):
    """No answer: ``timeout`` or ``unreachable``, and what happened."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


# (request, timeout) -> the response; tests hand in a fake provider's in-memory handler.
Client = Callable[[Request, float], "Deferred[Response]"]
MAX_ANSWER = 1 << 20
# A kept connection unused this long is closed by us: before the idle timeouts API fronts
# commonly run (60 s for an AWS load balancer, 75 s for nginx), so that a request never
# goes out on a connection the server is closing, and before NAT gateways forget it
# silently (a request into that would wait for its whole timeout).
IDLE_SECONDS = 50.0


def _reason(error: BaseException) -> str:
    """Why a connection could not be made, in a few words."""
    from twisted.internet import error as net_error

    if isinstance(error, ProxyFailed):  # already in words
        return str(error)
    if isinstance(error, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, net_error.TimeoutError):
        return "connecting timed out"
    if isinstance(error, net_error.DNSLookupError):
        return "host name lookup failed"
    name = type(error).__name__
    return f"{name}: {error}" if str(error) else name


def _lost(reason: Any) -> str:
    """Why a connection was lost under a request, in a few words."""
    error = getattr(reason, "value", reason)
    if type(error).__module__.startswith("OpenSSL"):
        return f"TLS: {error}"[:200]
    if type(error).__module__.startswith("service_identity"):
        return "TLS: the server's certificate is not for this host name"
    return "the connection closed before an answer"


@functools.lru_cache(maxsize=256)
def _target(url: str) -> tuple[tuple[str, str, int], str, str]:
    """(scheme, host, port), the request target and the Host header of an http(s) URL.
    Its errors do not repeat the URL: a webhook's may hold a secret in its path."""
    split = urlsplit(url)
    scheme, host = split.scheme, split.hostname
    if scheme not in ("http", "https") or not host:
        raise HTTPFailure("unreachable", "not an http or https URL")
    try:
        port = split.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise HTTPFailure("unreachable", "a bad port in the URL") from None
    target = (split.path or "/") + (f"?{split.query}" if split.query else "")
    if not target.isascii() or any(c <= " " or c == "\x7f" for c in target):
        raise HTTPFailure("unreachable", "a URL path that is not quoted")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise HTTPFailure("unreachable", "a host name that is not a name") from None
    named = f"[{host}]" if ":" in host else host
    default = port == (443 if scheme == "https" else 80)
    return (scheme, host, port), target, named if default else f"{named}:{port}"


def _header_text(text: str) -> str:
    """A header name or value with no line break in it (no header injection)."""
    if "\r" in text or "\n" in text:
        return " ".join(text.splitlines())
    return text


class _Connection(Protocol):
    """One persistent connection: one request at a time, its answer read by llhttp."""

    transport: Any  # TCP's, or TLS's over it: both can abort

    def __init__(self, pool: PooledClient, key: tuple[str, str, int]) -> None:
        import httptools

        self._pool = pool
        self.key = key
        self._parser = httptools.HttpResponseParser(self)
        # httptools is imported here, not at the top: the provider modules import this one
        # for Request and Response alone, and its import takes about 12 ms.
        self._malformed = (httptools.HttpParserError, httptools.HttpParserUpgrade)
        self._exchange: _Exchange | None = None
        self._headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._complete = False
        self._keep = False
        self.lost: Deferred[None] = Deferred()
        self.gone = False
        self.answered = 0  # answers read on it: a kept connection has one or more
        self.idle_timer: Any = None  # while it waits in the pool
        self._heard = False  # a byte of the answer to the request under way

    # What the exchange asks of it.

    def send(self, exchange: _Exchange, data: list[bytes]) -> None:
        self._exchange = exchange
        self._headers, self._chunks, self._size = {}, [], 0
        self._headers_done = self._complete = self._heard = False
        self.transport.writeSequence(data)

    def abort(self) -> None:
        self._exchange = None
        if not self.gone:
            self.transport.abortConnection()

    # Twisted's side.

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's)
        if self._exchange is None:  # nothing asked: a server closing an idle connection
            self.transport.loseConnection()
            return
        self._heard = True
        try:
            self._parser.feed_data(data)
        except self._malformed as error:
            self._fail(HTTPFailure("unreachable", f"a malformed HTTP answer: {error}"[:200]))
            self.transport.abortConnection()
            return
        if self._complete:
            self._answered()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.gone = True
        self._pool.forget(self)
        if self._exchange is not None:
            framed = "content-length" in self._headers or "transfer-encoding" in self._headers
            if self._headers_done and not framed:
                self._answered(keep=False)  # an answer that ends where the connection does
            else:
                # Closed before a word of the answer, on a kept connection: the server
                # may have closed it as the request went out, having never read it.
                unheard = self.answered > 0 and not self._heard
                self._fail(HTTPFailure("unreachable", _lost(reason)), unheard)
        self.lost.callback(None)

    # llhttp's callbacks (called by feed_data).

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        if self._size < MAX_ANSWER:
            self._chunks.append(body)
            self._size += len(body)

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:  # 100 Continue: the answer follows
            self._headers, self._headers_done = {}, False
            return
        self._complete = True
        # Asked now: llhttp forgets the answer's framing once this callback returns.
        self._keep = self._parser.should_keep_alive()

    # Ours.

    def _answered(self, keep: bool | None = None) -> None:
        exchange, self._exchange = self._exchange, None
        self.answered += 1
        if keep is None:
            keep = self._keep
        status = self._parser.get_status_code()
        response = Response(status, self._headers, b"".join(self._chunks))
        self._chunks = []
        if keep:
            self._pool.idle(self)
        elif not self.gone:
            self.transport.loseConnection()
        if exchange is not None:
            exchange.answered(response)

    def _fail(self, failure: HTTPFailure, unheard: bool = False) -> None:
        exchange, self._exchange = self._exchange, None
        if exchange is not None:
            if unheard:
                exchange.unheard(failure)
            else:
                exchange.failed(failure)


class _Exchange:
    """One request: on an idle connection or a new one, under one deadline."""

    def __init__(self, pool: PooledClient, request: Request, timeout: float) -> None:
        self.result: Deferred[Response] = Deferred(self._cancel)
        self._pool = pool
        self._timeout = timeout
        self._connection: _Connection | None = None
        self._connecting: Deferred[Any] | None = None
        self._stopped = False
        key, target, host = _target(request.url)
        self._key = key
        lines = [f"{request.method} {target} HTTP/1.1", f"Host: {host}"]
        for name, value in request.headers.items():
            lowered = name.lower()
            if lowered == "host":
                lines[1] = f"Host: {_header_text(value)}"
            elif lowered != "content-length":  # the body's own, below, and only once
                lines.append(f"{_header_text(name)}: {_header_text(value)}")
        if request.body or request.method != "GET":
            lines.append(f"Content-Length: {len(request.body)}")
        try:
            head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        except UnicodeEncodeError:
            raise HTTPFailure("unreachable", "a request header that is not Latin-1") from None
        self._data = [head, request.body] if request.body else [head]
        # A GET is asked again once, on a new connection, when a kept one closes before
        # any answer (as Twisted's Agent did): it changes nothing at the server. A POST
        # is not: it may have been carried out, and its retry is the queue's decision.
        self._may_repeat = request.method == "GET"
        self._deadline = pool.reactor.callLater(timeout, self._expire)

    def start(self, fresh: bool = False) -> None:
        connection = None if fresh else self._pool.take(self._key)
        if connection is not None:
            self._send(connection)
            return
        connection = _Connection(self._pool, self._key)
        self._connecting = self._pool.connect(self._key, connection)
        self._connecting.addCallbacks(self._send, self._not_connected)

    def _send(self, connection: _Connection) -> None:
        self._connecting = None
        if self._stopped or self.result.called:  # too late: the deadline passed
            connection.abort()
            return
        self._connection = connection
        connection.send(self, self._data)

    def _not_connected(self, failure: Any) -> None:
        self._connecting = None
        if not self._stopped:
            self.failed(HTTPFailure("unreachable", _reason(failure.value)))

    def answered(self, response: Response) -> None:
        if not self.result.called:
            self._done()
            self.result.callback(response)

    def unheard(self, failure: HTTPFailure) -> None:
        """A kept connection closed before a byte of the answer."""
        if self._may_repeat and not self.result.called and not self._stopped:
            self._may_repeat = False
            self._connection = None
            self.start(fresh=True)
        else:
            self.failed(failure)

    def failed(self, failure: HTTPFailure) -> None:
        if not self.result.called:
            self._done()
            self.result.errback(failure)

    def _done(self) -> None:
        self._connection = None
        if self._deadline.active():
            self._deadline.cancel()

    def _stop(self) -> None:
        """Drops whatever is under way: the connection cannot be reused mid-exchange."""
        self._stopped = True
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.abort()
        if self._connecting is not None:
            self._connecting.cancel()

    def _expire(self) -> None:
        self._stop()
        self.failed(HTTPFailure("timeout", f"no answer in {self._timeout:g}s"))

    def _cancel(self, result: Deferred[Response]) -> None:
        self._stop()
        self.failed(HTTPFailure("unreachable", "the request was cancelled"))


MAX_PROXY_ANSWER = 16 * 1024


class ProxyFailed(Exception):
    """No tunnel through the proxy: what it answered, or why it could not be reached."""


class _Tunnel(TunnelHandshake):
    """Asks a proxy to CONNECT to host:port; once it answers 200, the connection is the
    wrapped protocol's (TLS's, for https)."""

    def __init__(self, proxy: Proxy, authority: str, factory: Any) -> None:
        super().__init__(f"the proxy {proxy.address}", ProxyFailed, factory)
        self._proxy = proxy
        self._authority = authority
        self._head = b""

    def connectionMade(self) -> None:  # noqa: N802 (Twisted's)
        lines = [f"CONNECT {self._authority} HTTP/1.1", f"Host: {self._authority}"]
        if self._proxy.authorization:
            lines.append(f"Proxy-Authorization: {self._proxy.authorization}")
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def handshake(self, data: bytes) -> None:
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_PROXY_ANSWER:
                self.refuse("an answer too long to be HTTP")
            return
        status_line = self._head.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or parts[1] != "200":
            self.refuse(f"answered {status_line[:100]!r}")
            return
        rest, self._head = self._head[end + 4 :], b""
        self.hand_over(rest)


class _TunnelEndpoint:
    """An endpoint to host:port through the proxy's CONNECT (IStreamClientEndpoint)."""

    def __init__(self, reactor: Any, proxy: Proxy, host: str, port: int) -> None:
        from twisted.internet.endpoints import HostnameEndpoint

        self._to_proxy = HostnameEndpoint(reactor, proxy.host, proxy.port)
        self._proxy = proxy
        self._authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def connect(self, factory: Any) -> Deferred[Any]:
        proxy = self._proxy
        return connect_through(
            self._to_proxy,
            _Tunnel(proxy, self._authority, factory),
            ProxyFailed,
            lambda error: ProxyFailed(f"the proxy {proxy.address}: {_reason(error)}"),
        )


class _Endpoints:
    """Where connections go: TCP for http, TCP + TLS verified by Twisted's
    BrowserLikePolicyForHTTPS for https, each through the proxy's tunnel when there is
    one; made once per host and port instead of at every request (the host name's IDNA
    checks are not free)."""

    def __init__(self, reactor: Any, proxy: Proxy | None, no_proxy: tuple[str, ...]) -> None:
        from twisted.web.client import BrowserLikePolicyForHTTPS

        self._reactor = reactor
        self._policy = BrowserLikePolicyForHTTPS()
        self._made: dict[tuple[str, str, int], Any] = {}
        self._proxy = proxy
        self._no_proxy = no_proxy

    def endpoint(self, scheme: str, host: str, port: int) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        key = (scheme, host, port)
        endpoint: Any = self._made.get(key)
        if endpoint is None:
            if self._proxy is not None and not bypasses(host, self._no_proxy):
                endpoint = _TunnelEndpoint(self._reactor, self._proxy, host, port)
            else:
                endpoint = HostnameEndpoint(self._reactor, host, port)
            if scheme == "https":
                creator = self._policy.creatorForNetloc(host.encode("idna"), port)
                endpoint = wrapClientTLS(creator, endpoint)
            self._made[key] = endpoint
        return endpoint


class PooledClient:
    """Requests over persistent connections: up to ``connections`` idle ones are kept for
    each host and port; more are opened while that many are busy, and closed after."""

    def __init__(
        self,
        reactor: Any,
        connections: int,
        proxy: Proxy | None = None,
        no_proxy: tuple[str, ...] = (),
    ) -> None:
        self.reactor = reactor
        self._keep = connections
        self._endpoints = _Endpoints(reactor, proxy, no_proxy)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._closed = False

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        try:
            exchange = _Exchange(self, request, timeout)
        except HTTPFailure as error:
            return fail(error)
        exchange.start()
        return exchange.result

    # What the connections and exchanges ask of it.

    def take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        connection = idle.pop()
        _stop_timer(connection)
        return connection

    def connect(self, key: tuple[str, str, int], connection: _Connection) -> Deferred[Any]:
        from twisted.internet.endpoints import connectProtocol

        try:
            endpoint = self._endpoints.endpoint(*key)
        except Exception as error:  # a host name that is not a name
            return fail(error)
        return connectProtocol(endpoint, connection)

    def idle(self, connection: _Connection) -> None:
        kept = self._idle.setdefault(connection.key, [])
        if self._closed or len(kept) >= self._keep:
            connection.transport.loseConnection()
        else:
            kept.append(connection)
            connection.idle_timer = self.reactor.callLater(
                IDLE_SECONDS, connection.transport.loseConnection
            )

    def forget(self, connection: _Connection) -> None:
        _stop_timer(connection)
        kept = self._idle.get(connection.key)
        if kept and connection in kept:
            kept.remove(connection)

    def close(self) -> Deferred[None]:
        """Closes the idle connections (a busy one closes after its answer); fires once
        they are closed."""
        self._closed = True
        closing = [c for kept in self._idle.values() for c in kept]
        self._idle.clear()
        for connection in closing:
            _stop_timer(connection)
            connection.transport.loseConnection()
        done: Deferred[Any] = gatherResults([c.lost for c in closing])
        return done.addCallback(lambda _: None)


def _stop_timer(connection: _Connection) -> None:
    timer, connection.idle_timer = connection.idle_timer, None
    if timer is not None and timer.active():
        timer.cancel()


def retry_after(response: Response, now: float) -> float | None:
    """When a ``Retry-After`` (in seconds) says to come back; None without one."""
    value = response.headers.get("retry-after")
    try:
        return now + float(value) if value else None
    except ValueError:
        return None
