"""A connection that first makes a tunnel through a proxy (HTTP CONNECT for the HTTP
client, SOCKS5 for SMTP relays) and is then the wrapped protocol's: the hand-over and the
Deferred plumbing both share, so that each keeps only its own handshake."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure


class TunnelHandshake(Protocol):
    """Speaks to the proxy (``handshake``, a subclass's) until the tunnel is made, then
    gives the connection to the wrapped protocol (``hand_over``), which hears every byte
    after. ``ready`` fires with the wrapped protocol, or fails with ``failure``: what the
    proxy (``who``, e.g. "the proxy HOST:PORT") answered, or that it closed."""

    transport: Any  # TCP's

    def __init__(self, who: str, failure: type[Exception], factory: Any) -> None:
        self._who = who
        self._failure = failure
        self._factory = factory
        self._wrapped: Any = None
        self.ready: Deferred[Any] = Deferred()

    def handshake(self, data: bytes) -> None:
        """The proxy's bytes, until hand_over or refuse."""
        raise NotImplementedError

    def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's)
        if self._wrapped is not None:
            self._wrapped.dataReceived(data)
        elif not self.ready.called:
            self.handshake(data)

    def hand_over(self, rest: bytes) -> None:
        """The tunnel is made; ``rest`` came after the proxy's answer, from the far end."""
        self._wrapped = self._factory.buildProtocol(self.transport.getPeer())
        self._wrapped.makeConnection(self.transport)
        self.ready.callback(self._wrapped)
        if rest:
            self._wrapped.dataReceived(rest)

    def refuse(self, what: str) -> None:
        """No tunnel: ``what`` the proxy did, after its name."""
        if not self.ready.called:
            self.ready.errback(self._failure(f"{self._who} {what}"))
        self.transport.abortConnection()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        if self._wrapped is not None:
            self._wrapped.connectionLost(reason)
        elif not self.ready.called:
            self.ready.errback(self._failure(f"{self._who} closed the connection"))


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
