"""Opening the configured queue: the one place that knows which backend class to build.

Every caller (the daemon, the CLI, sendmail, the manhole, the benches) opens the queue
through ``open_store(config)``, and asks ``wakeups_for(config)`` how new mail reaches an
idle daemon: for SQLite, a datagram on a socket in state_dir; a shared backend would use
its own notifications (PostgreSQL's LISTEN/NOTIFY).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from smtpmailer.queue import QueueError, QueueStore

if TYPE_CHECKING:
    from smtpmailer.config import Config


def open_store(config: Config, *, read_only: bool = False) -> QueueStore:
    """The queue ``[Queue] backend`` names. ``read_only`` for commands that only look
    (``queue list``, ``show``, ``stats``): they write nothing and take no write lock."""
    if config.queue.backend == "sqlite":
        from smtpmailer.queue.sqlite import SQLiteQueue

        return SQLiteQueue(config.queue.path, read_only=read_only)
    if config.queue.backend == "postgresql":
        from smtpmailer.queue.postgresql import PostgreSQLQueue

        assert config.queue.dsn is not None
        return PostgreSQLQueue(
            config.queue.dsn,
            node=config.queue.node,
            lease_timeout=config.queue.lease_timeout,
            read_only=read_only,
        )
    raise QueueError(f"queue backend {config.queue.backend!r} is not available")


class Wakeups(Protocol):
    """How a writer tells an idle daemon that new mail is due, and how the daemon hears."""

    def notify(self) -> bool:
        """Best effort; False when no daemon could be told (it polls anyway)."""

    def listen(self, reactor: Any, wake: Callable[[], None]) -> Any:
        """Start calling ``wake`` on each notification; returns a port to stop, or None
        when notifications are unavailable (mail then waits for the next poll)."""

    def stop(self, port: Any) -> Any: ...


class DatagramWakeups:
    """Any datagram on ``state_dir/wakeup.sock`` means: poll now."""

    def __init__(self, path: str) -> None:
        self.path = path

    def notify(self) -> bool:
        if not os.path.exists(self.path):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            try:
                sock.sendto(b"wake", self.path)
            except OSError:
                return False
        return True

    def listen(self, reactor: Any, wake: Callable[[], None]) -> Any:
        from twisted.internet.error import CannotListenError
        from twisted.internet.protocol import DatagramProtocol

        from smtpmailer.logs import log

        class Heard(DatagramProtocol):
            noisy = False

            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                wake()

        try:
            if os.path.exists(self.path):
                os.unlink(self.path)
            port = reactor.listenUNIXDatagram(self.path, Heard())
            os.chmod(self.path, 0o666)  # any local writer of the queue may poke it
        except (CannotListenError, OSError) as error:
            log.warn(
                "wakeup socket {path} unavailable ({error}); new mail waits for the next poll",
                path=self.path,
                error=getattr(error, "socketError", error),
            )
            return None
        return port

    def stop(self, port: Any) -> Any:
        from twisted.internet.defer import maybeDeferred

        stopped = maybeDeferred(port.stopListening)

        def remove(result: object) -> object:
            if os.path.exists(self.path):
                os.unlink(self.path)
            return result

        return stopped.addBoth(remove)


class NotifyWakeups:
    """PostgreSQL's LISTEN/NOTIFY: every commit that adds due mail sends one NOTIFY (the
    store does it inside the commit, so ``notify`` has nothing left to do), and the daemon
    listens on a connection of its own, in a thread, reconnecting after a loss."""

    RECONNECT_AFTER = 5.0

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def notify(self) -> bool:
        return True

    def listen(self, reactor: Any, wake: Callable[[], None]) -> Any:
        import threading

        stopping = threading.Event()
        thread = threading.Thread(
            target=self._listen,
            args=(reactor, wake, stopping),
            name="smtpmailer-listen",
            daemon=True,
        )
        thread.start()
        return (thread, stopping)

    def _listen(self, reactor: Any, wake: Callable[[], None], stopping: Any) -> None:
        import psycopg

        from smtpmailer.logs import log
        from smtpmailer.queue.postgresql import CHANNEL

        lost = False
        while not stopping.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as db:
                    db.execute(f"LISTEN {CHANNEL}")
                    if lost:
                        reactor.callFromThread(log.info, "listening for new mail again")
                        reactor.callFromThread(wake)  # what was missed meanwhile
                        lost = False
                    while not stopping.is_set():
                        for _ in db.notifies(timeout=1.0, stop_after=1):
                            reactor.callFromThread(wake)
            except psycopg.Error as error:
                if not lost:
                    text = " ".join(str(error).split())
                    reactor.callFromThread(
                        log.warn,
                        "not listening for new mail ({error}); polling until it is back",
                        error=text,
                    )
                lost = True
                stopping.wait(self.RECONNECT_AFTER)

    def stop(self, port: Any) -> Any:
        from twisted.internet.threads import deferToThread

        thread, stopping = port
        stopping.set()
        return deferToThread(thread.join, 5)


def wakeups_for(config: Config) -> Wakeups:
    if config.queue.backend == "postgresql":
        assert config.queue.dsn is not None
        return NotifyWakeups(config.queue.dsn)
    return DatagramWakeups(config.wakeup_socket)
