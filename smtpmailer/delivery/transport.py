"""The transport seam: what delivery needs from a way of carrying mail to one relay.

A transport opens sessions to its relay; a session delivers messages one at a time, each
with a result per recipient, and is then closed. The relay's ``kind`` picks the transport
module from ``TRANSPORT_MODULES``, so delivery never asks which kind a relay is, and a new
kind (an HTTP provider) is a new module with a ``make_transport`` and a line here.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from smtpmailer.config import RelayConfig
from smtpmailer.queue import Lease, RecipientResult

# kind -> the module whose ``make_transport(relay, context)`` builds its transport.
TRANSPORT_MODULES = {
    "smtp": "smtpmailer.delivery.smtp.transport",
    "maildir": "smtpmailer.delivery.maildir",
    "api": "smtpmailer.delivery.api.transport",
}


class OpenError(Exception):
    """No session could be opened: the message goes to the next relay, or is deferred.

    ``problem`` is the reason alone, ``where`` the relay's address as the operator wrote
    it, and ``label`` what log lines name: ``HOST[none]`` only when no connection was made,
    else the address that was reached (a failure at TLS or AUTH). ``credentials`` when it
    was our credentials that were refused or could not be had (a password, a token).
    ``busy`` when the relay answered and turned this session away for now (a 421
    greeting): with other sessions of ours open or opening, that is a connection limit,
    not a relay that is down (see RelayPool._held_back).
    """

    def __init__(
        self,
        problem: str,
        where: str,
        label: str,
        credentials: bool = False,
        busy: bool = False,
    ) -> None:
        super().__init__(f"{where}: {problem}")
        self.problem = problem
        self.where = where
        self.label = label
        self.credentials = credentials
        self.busy = busy
        # Set when the relay said when to come back (an HTTP 429 with its reset time).
        self.pause_until: float | None = None


# Called by a session once a message's content is on the wire: the next lease, to start on
# the same connection before that message's reply (SMTP PIPELINING), or None.
Follow = Callable[[], "Lease | None"]


class Session(Protocol):
    """One open connection (or its equivalent) to a relay."""

    @property
    def label(self) -> str:
        """Where it went, for log lines: ``host[address]:port``, ``maildir:PATH``."""

    @property
    def delivered(self) -> int:
        """How many messages it has carried, for ``max_messages_per_connection``."""

    def deliver(
        self, lease: Lease, follow: Follow | None = None
    ) -> Awaitable[tuple[RecipientResult, ...]]:
        """One message (a Deferred or a coroutine: the pool awaits it); fails only when
        the session cannot be trusted any more, or with OpenError when the relay cannot
        take it now (an HTTP API's 5xx or 429): the message then goes on to the next
        relay, as if no session could be opened. A session that can pipeline may call
        ``follow`` once; the lease it got is then the next one it is given."""

    def quit(self) -> Deferred[None]: ...

    def abort(self) -> None: ...


class Transport(Protocol):
    """Opens sessions to one relay and says in one line what went wrong."""

    def open(self) -> Deferred[Session]:
        """A ready session (greeted, TLS, AUTH done), or a failure with OpenError;
        cancelling it abandons the attempt."""

    def describe(self, error: BaseException) -> str:
        """A failure during delivery, as an operator reads it in last_error and the log."""

    def retire(self) -> None:
        """The pool is done with this transport (a reload replaced it, or its relay is
        gone): release what it holds (an HTTP connection pool) once its sessions end."""


@attrs.frozen
class TransportContext:
    """What transports are given by the daemon: time, and the parts tests replace."""

    clock: IReactorTime
    helo_name: str
    # For SMTP: (relay, protocol) -> Deferred that fires once connected.
    connector: Callable[..., Deferred[Any]] | None = None
    # Runs blocking work (file writes with fsync) off the reactor thread.
    blocking: Callable[..., Deferred[Any]] | None = None
    # For HTTP API relays: (request, timeout) -> Deferred response; default: httpclient.
    http: Callable[..., Deferred[Any]] | None = None
    # The access tokens of an [OAuth2:NAME], by NAME (a TokenSource), looked up at each
    # open: a reload may have replaced the section while the relay stayed the same.
    tokens: Callable[[str], Any] | None = None
    # Told of each HTTP request an API relay made: (relay label, status or None when no
    # answer came, seconds), for the metrics.
    http_observed: Callable[[str, int | None, float], None] = lambda label, status, took: None
    # [Daemon] http_proxy and no_proxy, for the HTTP client of each API relay.
    proxy: Any = None
    no_proxy: tuple[str, ...] = ()


def make_transport(relay: RelayConfig, context: TransportContext) -> Transport:
    module = importlib.import_module(TRANSPORT_MODULES[relay.kind])
    transport: Transport = module.make_transport(relay, context)
    return transport
