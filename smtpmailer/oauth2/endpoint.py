"""Posting a form to a token endpoint, with treq: a persistent connection pool, TLS
verified by Twisted's default policy, a timeout on every request. Errors on the way
become a TokenEndpointError in one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import error as net_error
from twisted.internet.defer import Deferred

from smtpmailer.oauth2.grants import TokenEndpointError

# (url, form fields, timeout) -> (HTTP status, body)
Poster = Callable[[str, dict[str, str], float], "Deferred[tuple[int, bytes]]"]
# A token answer is a few kilobytes; anything far larger is not one.
MAX_ANSWER = 256 * 1024
ACCEPT_JSON: dict[bytes | str, bytes | str] = {b"Accept": b"application/json"}


def _reason(error: BaseException) -> TokenEndpointError:
    if isinstance(error, net_error.TimeoutError):
        return TokenEndpointError("timeout", "connecting to the token endpoint timed out")
    if isinstance(error, net_error.ConnectionRefusedError):
        return TokenEndpointError("unreachable", "connection refused")
    if isinstance(error, net_error.DNSLookupError):
        return TokenEndpointError("unreachable", "host name lookup failed")
    name = type(error).__name__
    if (
        "SSL" in name
        or type(error).__module__.startswith("OpenSSL")
        or name == "ResponseNeverReceived"
    ):
        text = str(error) or name
        return TokenEndpointError("unreachable", " ".join(text.split())[:200])
    return TokenEndpointError("unreachable", f"{name}: {error}" if str(error) else name)


class HTTPPoster:
    """The real thing: treq over one persistent HTTPConnectionPool; ``close()`` drops
    the connections it keeps."""

    def __init__(self, reactor: Any) -> None:
        from twisted.web.client import HTTPConnectionPool

        self._reactor = reactor
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = 2

    def __call__(
        self, url: str, fields: dict[str, str], timeout: float
    ) -> Deferred[tuple[int, bytes]]:
        return Deferred.fromCoroutine(self._post(url, fields, timeout))

    def close(self) -> Deferred[None]:
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    async def _post(self, url: str, fields: dict[str, str], timeout: float) -> tuple[int, bytes]:
        import treq

        # One deadline for the whole exchange, the body included (treq's own stops at
        # the headers). Cancelling may surface as CancelledError or wrapped in
        # ResponseNeverReceived: the flag says which failures were the deadline's.
        expired = False
        doing: Deferred[Any] | None = None

        def expire() -> None:
            nonlocal expired
            expired = True
            if doing is not None:
                doing.cancel()

        deadline = self._reactor.callLater(timeout, expire)
        try:
            doing = treq.post(
                url, data=fields, headers=ACCEPT_JSON, pool=self._pool, reactor=self._reactor
            )
            response = await doing
            doing = treq.content(response)
            body = await doing
        except Exception as error:
            if expired:
                raise TokenEndpointError(
                    "timeout", f"no answer from the token endpoint in {timeout:g}s"
                ) from None
            raise _reason(error) from None
        finally:
            if deadline.active():
                deadline.cancel()
        return response.code, body[:MAX_ANSWER]
