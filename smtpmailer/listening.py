"""ListeningService: the one base of the daemon's listeners (status, manhole, submission,
sendmail socket).

``bind()`` binds at once: MailerService calls it for every listener before any thread
starts, so a port that cannot be bound fails the start instead of being logged and
forgotten (a listener that can do without its port says so with ``required = False``).
On reload a listener whose address or settings changed is bound anew before the old port
is closed, so there is no moment without one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred

from smtpmailer.config import Config
from smtpmailer.endpoints import describe_port
from smtpmailer.logs import log

# (address, factory) -> a listening port, bound now (listen_now); raises if it cannot bind.
Listen = Callable[[str, Any], Any]


class ListeningService(Service):
    what = "listener"  # how log lines name it
    required = True  # False: a failed bind is logged and the daemon goes on without it

    def __init__(self, config: Config, listen: Listen | None) -> None:
        self.config = config
        self._listen = listen
        self.port: Any = None

    # --- what each listener says ---

    def address(self, config: Config) -> str | None:
        """Where to listen under ``config``; None or empty: not at all."""
        raise NotImplementedError

    def make_factory(self, config: Config) -> Any:
        raise NotImplementedError

    def bound(self, port: Any, config: Config) -> None:
        log.info("{what} listening on {address}", what=self.what, address=describe_port(port))

    def needs_rebind(self, old: Config, new: Config) -> bool:
        """Whether a reload must bind anew (by default: when the address changes)."""
        return self.address(old) != self.address(new)

    def closed(self) -> None:
        """Called once the port is closed at stop."""

    # --- the life of the port ---

    def open_port(self, config: Config) -> Any:
        """Bind for ``config``, or None when it asks for no listener."""
        where = self.address(config)
        if not where or self._listen is None:
            return None
        try:
            port = self._listen(where, self.make_factory(config))
        except Exception as error:
            if self.required:
                raise
            log.warn(
                "{what} {address} unavailable ({error}); going on without it",
                what=self.what,
                address=where,
                error=getattr(error, "socketError", error),
            )
            return None
        self.bound(port, config)
        return port

    def bind(self) -> None:
        if self.port is None:
            self.port = self.open_port(self.config)

    def startService(self) -> None:
        super().startService()
        self.bind()

    def stopService(self) -> Deferred[Any] | None:
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        stopped: Deferred[Any] = maybeDeferred(port.stopListening)
        return stopped.addCallback(lambda _: self.closed())

    async def rebind(self, config: Config) -> None:
        """The new port first, then the old one closed."""
        new_port = self.open_port(config)
        old, self.port = self.port, new_port
        if old is not None:
            await maybeDeferred(old.stopListening)

    async def reconfigure(self, config: Config) -> None:
        old, self.config = self.config, config
        if self.running and self._listen is not None and self.needs_rebind(old, config):
            await self.rebind(config)


def listen_unix_socket(reactor: Any, mode: int) -> Listen:
    """A Listen for a UNIX stream socket at a path, with its file mode."""

    def listen(path: str, factory: Any) -> Any:
        return reactor.listenUNIX(path, factory, mode=mode, wantPID=False)

    return listen
