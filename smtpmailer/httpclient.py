"""The HTTP client: treq over a persistent connection pool (one per API relay, with as many
connections as its ``max_connections``; one for the OAuth2 token endpoints), TLS verified by
Twisted's default policy, one deadline for each whole request, the body included (treq's
own stops at the headers). Failures on the way are HTTPFailure, in one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred


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


def _reason(error: BaseException) -> str:
    from twisted.internet import error as net_error

    if isinstance(error, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, net_error.TimeoutError):
        return "connecting timed out"
    if isinstance(error, net_error.DNSLookupError):
        return "host name lookup failed"
    name = type(error).__name__
    if name in ("ResponseNeverReceived", "ResponseFailed", "RequestTransmissionFailed"):
        reasons = [getattr(reason, "value", reason) for reason in getattr(error, "reasons", [])]
        tls = [r for r in reasons if type(r).__module__.startswith("OpenSSL")]
        if tls:
            return f"TLS: {tls[0]}"[:200]
        return "the connection closed before an answer"
    return f"{name}: {error}" if str(error) else name


class TreqClient:
    def __init__(self, reactor: Any, connections: int) -> None:
        from twisted.web.client import HTTPConnectionPool

        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = connections

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        return Deferred.fromCoroutine(self._send(request, timeout))

    async def _send(self, request: Request, timeout: float) -> Response:
        import treq

        # Cancelling may surface as CancelledError or wrapped in ResponseNeverReceived: the
        # flag says which failures were the deadline's.
        expired = False
        doing: Deferred[Any] | None = None

        def expire() -> None:
            nonlocal expired
            expired = True
            if doing is not None:
                doing.cancel()

        deadline = self._reactor.callLater(timeout, expire)
        try:
            headers: dict[bytes | str, bytes | str] = {k: v for k, v in request.headers.items()}
            doing = treq.request(
                request.method,
                request.url,
                data=request.body,
                headers=headers,
                pool=self._pool,
                reactor=self._reactor,
            )
            response = await doing
            doing = treq.content(response)
            body = await doing
        except Exception as error:
            if expired:
                raise HTTPFailure("timeout", f"no answer in {timeout:g}s") from None
            raise HTTPFailure("unreachable", _reason(error)) from None
        finally:
            if deadline.active():
                deadline.cancel()
        names = {
            key.decode("latin-1").lower(): values[-1].decode("latin-1")
            for key, values in response.headers.getAllRawHeaders()
        }
        return Response(response.code, names, body[:MAX_ANSWER])

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed


def retry_after(response: Response, now: float) -> float | None:
    """When a ``Retry-After`` (in seconds) says to come back; None without one."""
    value = response.headers.get("retry-after")
    try:
        return now + float(value) if value else None
    except ValueError:
        return None
