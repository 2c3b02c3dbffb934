"""ManholeService: a Python console inside the running daemon, over SSH, public keys only.

Built from twisted.conch's manhole pieces, not manhole_tap (which offers passwords from
/etc/passwd and its own key helpers): our authorized_keys file, a persisted ed25519 host key,
and a session that survives window resizes and end-of-input.
"""

from __future__ import annotations

import os
import time
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import Service
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred.portal import Portal
from twisted.internet.defer import maybeDeferred
from zope.interface import implementer

from smtpmailer import __version__
from smtpmailer.config import Config
from smtpmailer.listeners import describe_port
from smtpmailer.logs import log
from smtpmailer.queue import STATES, priority_name

BANNER = """smtpmailer {version} manhole -- a Python console inside the running daemon.
Objects: service, queue, config, stats.  Helpers:
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
        super().openShell(proto)

    def windowChanged(self, size: Any) -> None:
        pass

    def eofReceived(self) -> None:
        shell = getattr(self, "_shell", None)
        if shell is not None:
            shell.loseConnection()


class _Console(manhole.Manhole):
    def initializeScreen(self) -> None:
        self.terminal.write(BANNER.format(version=__version__.public()).replace("\n", "\r\n"))
        self.terminal.write(self.ps[self.pn])
        self.setInsertMode()


class Helpers:
    """What the console offers beyond the live objects. Queue changes go through a
    connection of their own, as `smtpmailer queue` does, never the delivery thread's."""

    def __init__(self, mailer: Any) -> None:
        self.mailer = mailer
        self._store: Any = None

    @property
    def queue(self) -> Any:
        if self._store is None:
            from smtpmailer.queue.sqlite import SQLiteQueue

            self._store = SQLiteQueue(self.mailer.config.queue.path)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def ls(self, state: str | None = None, limit: int = 20) -> None:
        """List messages, oldest first."""
        now = time.time()
        shown = 0
        for info in self.queue.messages(state=state, limit=limit):
            recipients = ", ".join(r.address for r in info.recipients)
            print(
                f"{info.id}  {info.state:<8} {priority_name(info.priority):<6} "
                f"{int(now - info.created):>6}s  tries={info.attempts}  <{info.sender}> -> "
                f"{recipients}  {info.last_error or ''}"
            )
            shown += 1
        print(f"({shown} shown)")

    def show(self, message_id: str) -> None:
        """One message: state, recipients and their outcomes, last error."""
        info = self.queue.show(message_id)
        print(
            f"{info.id}: {info.state}, priority {priority_name(info.priority)}, "
            f"{info.attempts} attempt(s), {info.size} bytes, from <{info.sender}>"
        )
        for rcpt in info.recipients:
            print(f"  -> <{rcpt.address}> {rcpt.state} {rcpt.last_error or ''}")
        if info.last_error:
            print(f"  last error: {info.last_error}")

    def retry(self, message_id: str) -> None:
        """Attempt a deferred or failed message now."""
        self.queue.retry(message_id, time.time())
        self.mailer.poller.wake()
        print(f"{message_id}: queued for delivery")

    def hold(self, message_id: str) -> None:
        """Keep a queued or deferred message from delivery until release()."""
        self.queue.hold(message_id)
        print(f"{message_id}: held")

    def release(self, message_id: str) -> None:
        """Let a held message go."""
        self.queue.release(message_id, time.time())
        self.mailer.poller.wake()
        print(f"{message_id}: released")

    def pause(self) -> None:
        """Stop handing messages to delivery; deliveries under way finish."""
        self.mailer.poller.paused = True
        log.warn("manhole: delivery paused")
        print("delivery paused")

    def resume(self) -> None:
        """Hand messages to delivery again."""
        self.mailer.poller.paused = False
        self.mailer.poller.wake()
        log.warn("manhole: delivery resumed")
        print("delivery resumed")


class Stats:
    """``stats`` in the console: shown live each time it is displayed."""

    def __init__(self, helpers: Helpers, mailer: Any) -> None:
        self._helpers = helpers
        self._mailer = mailer

    def __repr__(self) -> str:
        counts = self._helpers.queue.counts()
        outcomes = dict(self._mailer.delivery.counters)
        queue = " ".join(f"{state}={counts.get(state, 0)}" for state in STATES)
        return (
            f"queue: {queue}\noutcomes since start: {outcomes}\n"
            f"paused: {self._mailer.poller.paused}  poller lag: {self._mailer.poller.lag:.3f}s"
        )


class ManholeService(Service):
    """Listens on ``[Manhole] listen`` when ``authorized_keys`` is set."""

    name = "manhole"

    def __init__(self, config: Config, mailer: Any, listen: Any = None) -> None:
        self.config = config
        self.mailer = mailer
        self._listen = listen
        self.port: Any = None
        self.helpers = Helpers(mailer)

    def namespace(self) -> dict[str, Any]:
        helpers = self.helpers
        return {
            "service": self.mailer,
            "queue": helpers.queue,
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

    def _factory(self, config: Config) -> Any:
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

    def _bind(self, config: Config) -> Any:
        port = self._listen(config.manhole.listen, self._factory(config))
        log.info(
            "manhole listening on {address} (ssh, keys from {keys})",
            address=describe_port(port),
            keys=config.manhole.authorized_keys,
        )
        return port

    @staticmethod
    def _wanted(config: Config) -> bool:
        return bool(config.manhole.authorized_keys and config.manhole.listen)

    def bind(self) -> None:
        """Bind now (see StatusService.bind)."""
        if self.port is None and self._listen is not None and self._wanted(self.config):
            self.port = self._bind(self.config)

    def startService(self) -> None:
        super().startService()
        self.bind()

    def stopService(self) -> Any:
        super().stopService()
        self.helpers.close()
        if self.port is not None:
            port, self.port = self.port, None
            return maybeDeferred(port.stopListening)
        return None

    async def reconfigure(self, config: Config) -> None:
        """Re-bound (new before old) when its endpoint, keys file or host key changes."""
        changed = config.manhole != self.config.manhole
        self.config = config
        if not changed or not self.running or self._listen is None:
            return
        new_port = self._bind(config) if self._wanted(config) else None
        if self.port is not None:
            await maybeDeferred(self.port.stopListening)
        self.port = new_port
