"""ManholeService: a Python console inside the running daemon, over SSH, public keys only.

Built from twisted.conch's manhole pieces, not manhole_tap (which offers passwords from
/etc/passwd and its own key helpers): our authorized_keys file, a persisted ed25519 host key,
and a session that survives window resizes and end-of-input.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, DeferredList, DeferredLock
from zope.interface import implementer

from smtpmailer import __version__
from smtpmailer.config import Config
from smtpmailer.endpoints import describe_port
from smtpmailer.listening import Listen, ListeningService
from smtpmailer.logs import log
from smtpmailer.queue import STATES, QueueStore, priority_name

BANNER = """smtpmailer {version} manhole -- a Python console inside the running daemon.
Objects: service, queue (its calls return Deferreds), config, stats.  Helpers:
  ls(state=None, limit=20)   list messages, oldest first
  show(id)                   one message with its recipients
  retry(id), hold(id), release(id)
  pause(), resume()          stop/start taking new messages for delivery
Ctrl-D leaves.
"""


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """Keys from one file, read at every login: editing the file takes effect at once."""

    def __init__(self, path: str) -> None:
        self.path = path

    def getAuthorizedKeys(self, username: bytes) -> list[keys.Key]:
        try:
            with open(self.path, "rb") as handle:
                return list(readAuthorizedKeyFile(handle))
        except OSError as error:
            log.warn("manhole: cannot read {path}: {error}", path=self.path, error=error)
            return []


def load_or_create_host_key(path: str) -> keys.Key:
    """The server's identity: made once (ed25519, OpenSSH format, mode 0600), then kept."""
    if not os.path.exists(path):
        private = Ed25519PrivateKey.generate()
        data = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        log.info("manhole: created host key {path}", path=path)
    return keys.Key.fromFile(path)


class _Session(manhole_ssh.TerminalSession):
    """The stock session raises on window resize and on end-of-input; ours carries on, and
    ends the session at end-of-input (so `echo 'ls()' | ssh -tt ...` scripts work)."""

    def openShell(self, proto: Any) -> None:
        self._shell = proto
        self._terminal = self.chainedProtocolFactory()
        self.transportFactory(
            proto, self._terminal, IConchUser(self.original), self.width, self.height
        )

    def windowChanged(self, size: Any) -> None:
        pass

    def eofReceived(self) -> None:
        """End the session once every result still being fetched has been shown."""
        shell = getattr(self, "_shell", None)
        if shell is None:
            return
        console = getattr(getattr(self, "_terminal", None), "terminalProtocol", None)
        interpreter = getattr(console, "interpreter", None)
        if isinstance(interpreter, _Interpreter):
            interpreter.when_idle().addBoth(lambda _: shell.loseConnection())
        else:
            shell.loseConnection()


class Report(str):
    """Text a helper produced; the console shows it as it is, not as a quoted string."""

    def __repr__(self) -> str:
        return str(self)


class _Interpreter(manhole.ManholeInterpreter):
    """Shows what a Deferred fires with once it fires (the helpers' work runs on a
    thread), and fetches live objects such as ``stats`` the same way."""

    def __init__(self, handler: Any, locals: Any = None, filename: str = "<console>") -> None:
        super().__init__(handler, locals, filename)
        self.pending: set[Deferred[Any]] = set()

    def displayhook(self, obj: Any) -> None:
        if isinstance(obj, Stats):
            obj = obj.fetch()
        if not isinstance(obj, Deferred):
            super().displayhook(obj)
            return
        self.locals["_"] = obj
        shown: Deferred[Any] = Deferred()
        self.pending.add(shown)

        def show(result: Any) -> Any:
            if result is not None:
                self.write(repr(result), True)
            return result

        def failed(failure: Any) -> None:
            self.write(f"error: {failure.getErrorMessage()}", True)

        def done(_: object) -> None:
            self.pending.discard(shown)
            shown.callback(None)

        obj.addCallbacks(show, failed).addBoth(done)

    def when_idle(self) -> Deferred[Any]:
        """Fires once every result still being fetched has been shown."""
        return DeferredList(list(self.pending))


class _Console(manhole.Manhole):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.interpreter = _Interpreter(self, self.namespace)

    def initializeScreen(self) -> None:
        self.terminal.write(BANNER.format(version=__version__.public()).replace("\n", "\r\n"))
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()


class Helpers:
    """What the console offers beyond the live objects.

    Every queue call runs on a worker thread, one at a time and in the order typed, never
    on the reactor thread (SQLite blocks); each helper returns a Deferred of its Report.
    Changes go through a connection of their own, as ``smtpmailer queue`` does, never the
    delivery thread's.
    """

    def __init__(
        self,
        mailer: Any,
        run: Callable[..., Deferred[Any]],
        open_store: Callable[[], QueueStore],
    ) -> None:
        self.mailer = mailer
        self._run = run
        self._open_store = open_store
        self._store: QueueStore | None = None
        self._lock = DeferredLock()

    def call(self, work: Callable[[QueueStore], str]) -> Deferred[Report]:
        """``work(store)`` on a thread, after every call made before it."""

        def on_thread() -> Report:
            if self._store is None:
                self._store = self._open_store()
            return Report(work(self._store))

        return self._lock.run(self._run, on_thread)

    def close(self) -> Deferred[None]:
        def on_thread() -> None:
            if self._store is not None:
                self._store.close()
                self._store = None

        return self._lock.run(self._run, on_thread)

    def ls(self, state: str | None = None, limit: int = 20) -> Deferred[Report]:
        """List messages, oldest first."""

        def work(store: QueueStore) -> str:
            now = time.time()
            lines = []
            for info in store.messages(state=state, limit=limit):
                recipients = ", ".join(r.address for r in info.recipients)
                lines.append(
                    f"{info.id}  {info.state:<8} {priority_name(info.priority):<6} "
                    f"{int(now - info.created):>6}s  tries={info.attempts}  <{info.sender}> -> "
                    f"{recipients}  {info.last_error or ''}"
                )
            return "\n".join([*lines, f"({len(lines)} shown)"])

        return self.call(work)

    def show(self, message_id: str) -> Deferred[Report]:
        """One message: state, recipients and their outcomes, last error, attempts."""

        def work(store: QueueStore) -> str:
            info = store.show(message_id)
            lines = [
                f"{info.id}: {info.state}, priority {priority_name(info.priority)}, "
                f"{info.attempts} attempt(s), {info.size} bytes, from <{info.sender}>"
            ]
            for rcpt in info.recipients:
                lines.append(f"  -> <{rcpt.address}> {rcpt.state} {rcpt.last_error or ''}")
            if info.last_error:
                lines.append(f"  last error: {info.last_error}")
            if info.origin_text():
                lines.append(f"  built from: {info.origin_text()}")
            for attempt in info.history:
                lines.extend(f"  {line}" for line in attempt.as_text())
            return "\n".join(lines)

        return self.call(work)

    def _then_wake(self, done: Deferred[Report]) -> Deferred[Report]:
        def wake(report: Report) -> Report:
            self.mailer.poller.wake()
            return report

        return done.addCallback(wake)

    def retry(self, message_id: str) -> Deferred[Report]:
        """Attempt a deferred or failed message now."""

        def work(store: QueueStore) -> str:
            store.retry(message_id, time.time())
            return f"{message_id}: queued for delivery"

        return self._then_wake(self.call(work))

    def hold(self, message_id: str) -> Deferred[Report]:
        """Keep a queued or deferred message from delivery until release()."""

        def work(store: QueueStore) -> str:
            store.hold(message_id)
            return f"{message_id}: held"

        return self.call(work)

    def release(self, message_id: str) -> Deferred[Report]:
        """Let a held message go."""

        def work(store: QueueStore) -> str:
            store.release(message_id, time.time())
            return f"{message_id}: released"

        return self._then_wake(self.call(work))

    def pause(self) -> Report:
        """Stop handing messages to delivery; deliveries under way finish."""
        self.mailer.poller.paused = True
        log.warn("manhole: delivery paused")
        return Report("delivery paused")

    def resume(self) -> Report:
        """Hand messages to delivery again."""
        self.mailer.poller.paused = False
        self.mailer.poller.wake()
        log.warn("manhole: delivery resumed")
        return Report("delivery resumed")


class Stats:
    """``stats`` in the console: fetched afresh (on a thread) each time it is shown."""

    def __init__(self, helpers: Helpers, mailer: Any) -> None:
        self._helpers = helpers
        self._mailer = mailer

    def fetch(self) -> Deferred[Report]:
        def work(store: QueueStore) -> str:
            counts = store.counts()
            outcomes = dict(self._mailer.delivery.counters)
            queue = " ".join(f"{state}={counts.get(state, 0)}" for state in STATES)
            return (
                f"queue: {queue}\noutcomes since start: {outcomes}\n"
                f"paused: {self._mailer.poller.paused}  "
                f"poller lag: {self._mailer.poller.lag:.3f}s"
            )

        return self._helpers.call(work)

    def __repr__(self) -> str:
        return "<stats: type `stats` alone to see them>"


class ManholeService(ListeningService):
    """Listens on ``[Manhole] listen`` when ``authorized_keys`` is set."""

    name = "manhole"
    what = "manhole"

    def __init__(
        self,
        config: Config,
        mailer: Any,
        listen: Listen | None,
        run: Callable[..., Deferred[Any]],
        open_store: Callable[[], QueueStore],
    ) -> None:
        super().__init__(config, listen)
        self.mailer = mailer
        self.helpers = Helpers(mailer, run, open_store)

    def namespace(self) -> dict[str, Any]:
        helpers = self.helpers
        return {
            "service": self.mailer,
            "queue": self.mailer.queue,
            "config": self.mailer.config,
            "stats": Stats(helpers, self.mailer),
            "ls": helpers.ls,
            "show": helpers.show,
            "retry": helpers.retry,
            "hold": helpers.hold,
            "release": helpers.release,
            "pause": helpers.pause,
            "resume": helpers.resume,
        }

    def address(self, config: Config) -> str | None:
        return config.manhole.listen if config.manhole.authorized_keys else None

    def needs_rebind(self, old: Config, new: Config) -> bool:
        """Its endpoint, keys file or host key: the factory holds all three."""
        return old.manhole != new.manhole

    def bound(self, port: Any, config: Config) -> None:
        log.info(
            "manhole listening on {address} (ssh, keys from {keys})",
            address=describe_port(port),
            keys=config.manhole.authorized_keys,
        )

    def make_factory(self, config: Config) -> Any:
        service = self

        class Realm(manhole_ssh.TerminalRealm):
            sessionFactory = _Session

            def _getAvatar(self, avatar_id: Any) -> Any:
                # A fresh namespace per login: `config` is the one running now.
                realm: Any = self
                realm.chainedProtocolFactory = lambda: insults.ServerProtocol(
                    _Console, service.namespace()
                )
                return super()._getAvatar(avatar_id)

        assert config.manhole.authorized_keys
        checker = SSHPublicKeyChecker(AuthorizedKeysFile(config.manhole.authorized_keys))
        realm: Any = Realm()
        factory: Any = manhole_ssh.ConchFactory(Portal(realm, [checker]))
        host_key = load_or_create_host_key(config.manhole.host_key)
        # On the instance: the class-level dicts are shared by every ConchFactory.
        factory.publicKeys = {host_key.sshType(): host_key.public()}
        factory.privateKeys = {host_key.sshType(): host_key}
        factory.noisy = False
        return factory

    def stopService(self) -> Any:
        closed = self.helpers.close()
        stopped = super().stopService()
        return DeferredList([closed, stopped]) if stopped is not None else closed
