"""What many test modules share: the in-memory service tree (DeliveryCase), a TLS+AUTH
relay with a daemon configured for it (EndToEndCase), and finding a daemon's ports."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmailer.config import parse_config
from smtpmailer.daemon.service import MailerService
from smtpmailer.delivery.smtp.protocol import SMTPClientProtocol
from smtpmailer.queue.runner import synchronous_runner
from smtpmailer.queue.sqlite import SQLiteQueue
from tests.certs import TestCA
from tests.daemon import Daemon, wait_until
from tests.fake_relay import FakeRelay, settle
from tests.smtp_peer import SMTPPeer

# One outcome line of the daemon's log.
OUTCOME = re.compile(
    r"id=(?P<id>\w+) to=<(?P<to>[^>]+)> relay=(?P<relay>\S+) delay=\d+\.\d\d "
    r"attempts=(?P<attempts>\d+) status=(?P<status>\w+) \((?P<reply>.*)\)$",
    re.MULTILINE,
)


def submission_port(daemon: Daemon) -> int:
    """The port this run of the daemon's submission listener bound (tcp:0)."""
    found = wait_until(
        lambda: re.search(r"submission listening on 127.0.0.1:(\d+)", daemon.new_log()),
        what="the submission listener",
    )
    return int(found.group(1))


class DeliveryCase(SynchronousTestCase):
    relay_keys = ""
    queue_keys = ""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.relays = {"a.test": FakeRelay(self.clock, 25), "b.test": FakeRelay(self.clock, 26)}
        self.relay = self.relays["a.test"]
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "smtpmailer" and "line" in event:
                self.lines.append(event["line"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def hear_everything(self) -> list[str]:
        """Every log event from now on, as its text (the warnings included)."""
        said: list[str] = []

        def hear(event: dict[str, Any]) -> None:
            said.append(formatEvent(event))

        globalLogPublisher.addObserver(hear)
        self.addCleanup(globalLogPublisher.removeObserver, hear)
        return said

    def configure(
        self, relays: str | None = None, queue: str = "", bounce: str = "enabled = false\n"
    ) -> None:
        """The daemon's config. Bounces are off unless asked for (``bounce``): they are
        test_bounces' subject, and elsewhere a DSN would be one more message at every fake."""
        relays = relays or (
            "[Relay]\nhost = a.test\nsecurity = none\ntimeout = 30s\n" + self.relay_keys
        )
        text = (
            f"[Daemon]\nstate_dir = {self.dir}\nshutdown_timeout = 10s\n"
            f"[Queue]\npoll_interval = 5s\nretry_delay = 60s\nmax_retry_delay = 10m\n"
            f"max_retries = 2\n{self.queue_keys}{queue}\n{relays}"
            f"[Logging]\nstats_interval = 0\n[Bounce]\n{bounce}"
        )
        path = os.path.join(self.dir, "c.conf")
        with open(path, "w") as handle:  # for tests that reload it
            handle.write(text)
        self.config = parse_config(text, path)
        self.store = SQLiteQueue(self.config.queue.path)

    def connect(self, relay: Any, client: SMTPClientProtocol) -> Deferred[Any]:
        return self.relays[relay.host].connect(relay, client)

    def start(self, **options: Any) -> MailerService:
        """The daemon's service tree in memory; ``options`` go to MailerService."""
        self.service = MailerService(
            self.config,
            open_store=lambda: self.store,
            reactor=self.clock,
            run=synchronous_runner,
            blocking=synchronous_runner,
            connector=self.connect,
            listen_wakeup=False,
            **options,
        )
        self.service.startService()
        self.addCleanup(self.stop)
        settle(self.clock)
        return self.service

    def post_json(
        self, path: str, body: Any, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """POST ``body`` as JSON to the status service in memory; (status, JSON answer)."""
        import json

        from treq.testing import StubTreq

        stub = StubTreq(self.service.status.site.resource)
        response = stub.post(
            f"http://status.test{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        stub.flush()
        settle(self.clock)
        stub.flush()
        result = self.successResultOf(response)
        return result.code, json.loads(self.successResultOf(result.content()))

    def stop(self) -> None:
        if self.service.running:
            result = self.service.stopService()
            settle(self.clock)
            self.clock.advance(60)
            settle(self.clock)
            self.successResultOf(result)
        self.assertEqual(self.clock.getDelayedCalls(), [], "stop left timers behind")

    def enqueue(self, *recipients: str, priority: int = 5, body: bytes = b"hi") -> str:
        data = b"Subject: test\r\n\r\n" + body + b"\r\n"
        return self.store.enqueue(
            "app@example.com",
            list(recipients) or ["r@example.org"],
            data,
            priority,
            self.clock.seconds(),
            10_000,
        )

    def state(self, message_id: str) -> str:
        """Read through a connection of its own: the service closes its store on stop."""
        return self.shown(message_id).state

    def shown(self, message_id: str) -> Any:
        """What ``queue show`` gives for the message, read the same way as state()."""
        reader = SQLiteQueue(self.config.queue.path)
        try:
            return reader.show(message_id)
        finally:
            reader.close()


class EndToEndCase(TestCase):
    """Starts a TLS+AUTH relay and a daemon configured for it; both are torn down."""

    timeout = 120

    def relay_section(self, port: int, **overrides: str) -> str:
        keys = {
            "host": "localhost",
            "port": str(port),
            "security": "starttls",
            "ca_file": self.ca.ca_file,
            "auth": "auto",
            "username": "app",
            "password_file": self.secret,
            "timeout": "3s",
            "max_connections": "2",
        }
        keys.update(overrides)
        return "[Relay]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v)

    def setUp(self) -> None:
        # Short paths: a UNIX socket path must fit in 108 bytes.
        self.home = tempfile.mkdtemp(prefix="smtpm-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.ca = TestCA(os.path.join(self.home, "ca"))
        self.server_cert = self.ca.issue("localhost", dns=("localhost",))
        self.secret = os.path.join(self.home, "relay-password")
        with open(self.secret, "w") as handle:
            handle.write("s3cret\n")
        os.chmod(self.secret, 0o600)

    def start_peer(
        self, port: int = 0, cert: tuple[str, str] | None = None, implicit_tls: bool = False
    ) -> SMTPPeer:
        peer = SMTPPeer(
            tls_cert=cert or self.server_cert,
            users={"app": "s3cret"},
            port=port,
            implicit_tls=implicit_tls,
        )
        peer.start()
        self.addCleanup(peer.stop)
        return peer

    def start_daemon(self, port: int, queue: str = "", **relay: str) -> Daemon:
        daemon = Daemon(os.path.join(self.home, "d"), self.relay_section(port, **relay), queue)
        self.addCleanup(daemon.stop)
        return daemon

    def outcomes(self, daemon: Daemon, message_id: str) -> list[dict[str, str]]:
        return [m.groupdict() for m in OUTCOME.finditer(daemon.log()) if m["id"] == message_id]

    def wait_for_outcomes(self, daemon: Daemon, message_id: str, count: int) -> list[Any]:
        """The message's outcome lines once there are ``count``: each is logged when its
        commit is done, a moment after the queue file already shows the new state."""
        found: list[Any] = wait_until(
            lambda: (lines := self.outcomes(daemon, message_id)) and len(lines) >= count and lines,
            what=f"{count} outcome line(s) of {message_id}",
        )
        return found
