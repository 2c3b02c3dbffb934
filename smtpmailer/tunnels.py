"""A connection that first makes a tunnel through a proxy (HTTP CONNECT for the HTTP
client, SOCKS5 for SMTP relays) and is then the wrapped protocol's: the Deferred plumbing
both endpoints share, so that each keeps only its own handshake."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.python.failure import Failure


def connect_through(
    to_proxy: Any,
    handshake: Any,
    own: type[Exception],
    unreachable: Callable[[BaseException], Exception],
    tunnelled: Callable[[], Deferred[Any]] | None = None,
) -> Deferred[Any]:
    """Connect ``handshake`` (a protocol whose ``ready`` fires with the wrapped protocol)
    over the endpoint ``to_proxy``. ``tunnelled`` is called once the proxy is reached and
    returns what to wait for (default: ``handshake.ready``). A failure of the handshake
    (``own``) passes as it is; one to reach the proxy becomes ``unreachable(error)``.
    Cancelling the result stops whichever step is under way."""
    from twisted.internet.endpoints import connectProtocol

    connecting = connectProtocol(to_proxy, handshake)

    def cancel(_: Any) -> None:
        if not connecting.called:
            connecting.cancel()
        elif handshake.transport is not None:
            handshake.transport.abortConnection()

    result: Deferred[Any] = Deferred(cancel)

    def connected(_: Any) -> Deferred[Any]:
        return tunnelled() if tunnelled is not None else handshake.ready

    def not_connected(failure: Failure) -> Any:
        if failure.check(own, CancelledError):
            return failure
        assert failure.value is not None
        return fail(unreachable(failure.value))

    def handed(outcome: Any) -> None:
        if result.called:  # cancelled: nobody waits for it
            return
        if isinstance(outcome, Failure):
            result.errback(outcome)
        else:
            result.callback(outcome)

    connecting.addCallback(connected).addErrback(not_connected).addBoth(handed)
    return result
