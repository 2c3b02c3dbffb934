"""Each refusal through every way in gets the answer of DESIGN.md's Refusals table.

The ways in: ``smtpmailer send``, ``sendmail`` writing the queue itself, ``sendmail``
handing the message to the daemon's socket, the SMTP listener (in the daemon, and across
a worker's channel) and HTTP ``POST /v1/messages``. Real input makes each refusal where it
can (a bad address, a header injection, an oversize message, a full queue, too many
recipients); where no input can reach a refusal on a way in (a malformed message over
SMTP, a busy store), the daemon's commit is made to refuse, so the mapping is still seen.
The expected codes below are copied from the table, not from the code's own table.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport

from smtpmailer.cli import main
from smtpmailer.intake.refusals import MessageError
from smtpmailer.intake.sendmail.command import encode_request, parse_arguments, run
from smtpmailer.intake.sendmail.handover import SendmailFactory
from smtpmailer.intake.smtp.channel import decode_reply, reply_for
from smtpmailer.intake.smtp.listener import SubmissionFactory
from smtpmailer.message import Envelope
from smtpmailer.queue import StoreBusy
from smtpmailer.queue.runner import synchronous_runner
from tests.fake_relay import settle
from tests.support import DeliveryCase

TOKEN = "t0ken-0123456789abcdef"

# DESIGN.md, "Refusals": sendmail's exit status, the SMTP reply, the HTTP status.
TABLE = {
    "address": (65, "553 5.1.3", 400),
    "message": (65, "554 5.6.0", 400),
    "size": (65, "552 5.3.4", 413),
    "full": (75, "452 4.3.1", 507),
    "busy": (75, "452 4.3.1", 503),
    "recipients": (65, "452 4.5.3", 400),
}
EX_CONFIG = 78

GOOD = b"From: app@example.com\r\nTo: a@example.org\r\nSubject: s\r\n\r\nhello\r\n"
BIG = b"From: app@example.com\r\nTo: a@example.org\r\nSubject: s\r\n\r\n" + b"x" * 3000 + b"\r\n"


class RefusalCase(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.configure(queue="max_message_size = 2KB\nmax_queue_size = 5\n")
        self.config_path = os.path.join(self.dir, "c.conf")
        with open(self.config_path, "w") as handle:  # the same settings, for the commands
            handle.write(
                f"[Daemon]\nstate_dir = {self.dir}\n[Queue]\nmax_message_size = 2KB\n"
                "max_queue_size = 5\n[Relay]\nhost = a.test\nsecurity = none\n"
                "[Submission]\nmax_recipients = 2\n"
            )
        self.config = attrs.evolve(
            self.config,
            status=attrs.evolve(self.config.status, token=TOKEN),
            submission=attrs.evolve(self.config.submission, max_recipients=2),
        )
        self.start()
        self.service.poller.paused = True  # refusals only: nothing need be delivered

    def fill_queue(self) -> None:
        for _ in range(5):
            self.enqueue()

    # --- the daemon's commit, made to refuse where no input can ---

    def refuse_commits(self, error: Exception) -> None:
        """From now on the store refuses every new message with ``error``."""
        original = self.store.record_and_enqueue

        def refusing(outcomes: Any, policy: Any, items: Any, *args: Any) -> Any:
            recorded, _, leases = original(outcomes, policy, [], *args)
            return recorded, [error for _ in items], leases

        self.store.record_and_enqueue = refusing  # type: ignore[method-assign]
        self.addCleanup(setattr, self.store, "record_and_enqueue", original)

    def submit(self, envelope: Envelope, priority: int = 5) -> Deferred[str]:
        return self.service.submit(envelope, priority)

    # --- the ways in ---

    def send(self, *args: str) -> tuple[int, str]:
        err = io.StringIO()
        code = main(["--config", self.config_path, "send", *args], out=io.StringIO(), err=err)
        return code, err.getvalue()

    def sendmail_direct(self, argv: list[str], data: bytes = GOOD) -> tuple[int, str]:
        """No daemon socket in state_dir: the command writes the queue itself."""
        self.assertFalse(os.path.exists(self.config.sendmail_socket))
        err = io.StringIO()
        code = run(["--config", self.config_path, *argv], io.BytesIO(data), io.StringIO(), err)
        return code, err.getvalue()

    def sendmail_socket(self, argv: list[str], data: bytes = GOOD) -> tuple[int, str]:
        factory = SendmailFactory(self.config, self.submit, self.clock, synchronous_runner)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(encode_request(parse_arguments(argv), "cron", data))
        settle(self.clock)
        code, _, text = transport.value().decode().rstrip("\n").partition(" ")
        return int(code), text

    def smtp(self, recipients: list[str], data: bytes = GOOD) -> str:
        """The reply that refused the transaction (at RCPT or after DATA)."""
        factory = SubmissionFactory(
            self.config, lambda envelope, peer: self.submit(envelope), self.clock, None
        )
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        protocol.makeConnection(transport)
        commands = b"EHLO app\r\nMAIL FROM:<app@example.com>\r\n" + b"".join(
            b"RCPT TO:<%s>\r\n" % r.encode() for r in recipients
        )
        try:
            protocol.dataReceived(commands)
            settle(self.clock)
            replies = [line for line in transport.value().split(b"\r\n") if line]
            refused = [r for r in replies if r[:1] in (b"4", b"5")]
            if refused:
                return refused[0].decode()
            transport.clear()
            protocol.dataReceived(b"DATA\r\n" + data + b".\r\n")
            settle(self.clock)
            replies = [line for line in transport.value().split(b"\r\n") if line]
            return replies[-1].decode()
        finally:
            protocol.connectionLost(None)

    def http(self, body: Any, content_type: str = "message/rfc822") -> tuple[int, str]:
        stub = StubTreq(self.service.status.site.resource)
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        response = stub.post(
            "http://status.test/v1/messages",
            data=data,
            headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"},
        )
        stub.flush()
        settle(self.clock)
        stub.flush()
        result = self.successResultOf(response)
        return result.code, json.loads(self.successResultOf(result.content()))["error"]

    def assertSMTP(self, reply: str, kind: str) -> None:
        self.assertEqual(reply[:9], TABLE[kind][1], reply)


class RealInputTests(RefusalCase):
    def test_malformed_address(self) -> None:
        bad = "a@exa_mple.org"
        code, err = self.send("--from", "a@example.com", "--to", bad, "--subject", "s")
        self.assertEqual(code, 1)
        self.assertIn("has an invalid domain", err)
        self.assertEqual(self.sendmail_direct([bad])[0], TABLE["address"][0])
        self.assertEqual(self.sendmail_socket([bad])[0], TABLE["address"][0])
        self.assertSMTP(self.smtp([bad]), "address")
        raw = GOOD.replace(b"To: a@example.org", b"To: " + bad.encode())
        self.assertEqual(self.http(raw)[0], TABLE["address"][2])
        self.assertEqual(self.store.counts()["accepted"], 0, "nothing was queued")

    def test_header_injection(self) -> None:
        injected = "Hi\r\nBcc: victim@example.org"
        code, err = self.send("--from", "a@example.com", "--to", "b@x.org", "--subject", injected)
        self.assertEqual(code, 1)
        self.assertIn("header injection", err)
        # sendmail -F NAME with a line break would have added a Bcc header (and, with -t,
        # a recipient): refused on both sendmail paths.
        argv = ["-t", "-F", injected]
        data = b"To: a@example.org\r\nSubject: s\r\n\r\nhello\r\n"
        self.assertEqual(self.sendmail_direct(argv, data)[0], TABLE["message"][0])
        self.assertEqual(self.sendmail_socket(argv, data)[0], TABLE["message"][0])
        body = {"from": "a@example.com", "to": "b@example.org", "subject": injected}
        self.assertEqual(self.http(body, "application/json")[0], TABLE["message"][2])
        self.assertEqual(self.store.counts()["accepted"], 0, "nothing was queued")

    def test_over_max_message_size(self) -> None:
        code, err = self.send("--from", "a@example.com", "--to", "b@x.org", "--subject", "s",
                              "--body", "x" * 3000)  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("over max_message_size (2KB)", err)
        self.assertEqual(self.sendmail_direct(["a@example.org"], BIG)[0], TABLE["size"][0])
        self.assertEqual(self.sendmail_socket(["a@example.org"], BIG)[0], TABLE["size"][0])
        self.assertSMTP(self.smtp(["a@example.org"], BIG), "size")
        self.assertEqual(self.http(BIG)[0], TABLE["size"][2])
        self.assertEqual(self.store.counts()["accepted"], 0, "nothing was queued")

    def test_queue_full(self) -> None:
        self.fill_queue()
        code, err = self.send("--from", "a@example.com", "--to", "b@x.org", "--subject", "s")
        self.assertEqual(code, 1)
        self.assertIn("max_queue_size", err)
        self.assertEqual(self.sendmail_direct(["a@example.org"])[0], TABLE["full"][0])
        self.assertEqual(self.sendmail_socket(["a@example.org"])[0], TABLE["full"][0])
        self.assertSMTP(self.smtp(["a@example.org"]), "full")
        self.assertEqual(self.http(GOOD)[0], TABLE["full"][2])
        self.assertEqual(self.store.counts()["accepted"], 5, "nothing more was queued")

    def test_too_many_recipients(self) -> None:
        three = ["a@example.org", "b@example.org", "c@example.org"]
        code, err = self.send(
            "--from", "a@example.com", *(f"--to={r}" for r in three), "--subject", "s"
        )
        self.assertEqual(code, 1)
        self.assertIn("over max_recipients (2)", err)
        self.assertEqual(self.sendmail_direct(three)[0], TABLE["recipients"][0])
        self.assertEqual(self.sendmail_socket(three)[0], TABLE["recipients"][0])
        self.assertSMTP(self.smtp(three), "recipients")
        body = {"from": "a@example.com", "to": three, "subject": "s"}
        self.assertEqual(self.http(body, "application/json")[0], TABLE["recipients"][2])
        self.assertEqual(self.store.counts()["accepted"], 0, "nothing was queued")

    def test_config_broken(self) -> None:
        with open(self.config_path, "a") as handle:
            handle.write("retry_dealy = 5m\n")
        code, err = self.send("--from", "a@example.com", "--to", "b@x.org", "--subject", "s")
        self.assertEqual(code, 1)
        self.assertIn("unknown key 'retry_dealy'", err)
        self.assertEqual(self.sendmail_direct(["a@example.org"])[0], EX_CONFIG)


class DaemonCommitTests(RefusalCase):
    """The daemon's ways in, with its commit refusing: each kind gets its table row."""

    def refusals(self) -> list[tuple[str, Exception]]:
        from smtpmailer.intake.refusals import BadAddress, MessageTooBig, TooManyRecipients
        from smtpmailer.queue import NoSpace, QueueFull

        return [
            ("address", BadAddress("recipient 'x' is not an email address")),
            ("message", MessageError("malformed message")),
            ("size", MessageTooBig("message is 3000 bytes, over max_message_size (2KB)")),
            ("full", QueueFull("the queue is full")),
            # A full disk is answered as a full queue: sendmail 75, SMTP 452, HTTP 507.
            ("full", NoSpace("queue storage is full: no space left on device (q)")),
            ("busy", StoreBusy("queue database is busy")),
            ("recipients", TooManyRecipients("3 recipients, over max_recipients (2)")),
        ]

    def test_every_kind_through_the_socket_smtp_and_http(self) -> None:
        for kind, error in self.refusals():
            self.refuse_commits(error)
            self.assertEqual(self.sendmail_socket(["a@example.org"])[0], TABLE[kind][0], kind)
            self.assertSMTP(self.smtp(["a@example.org"]), kind)
            self.assertEqual(self.http(GOOD)[0], TABLE[kind][2], kind)

    def test_a_worker_channel_keeps_the_kind(self) -> None:
        """A refusal the daemon sends to a submission worker is the same refusal there."""
        for kind, error in self.refusals():
            _, rebuilt = decode_reply(reply_for(7, error)[4:])
            assert isinstance(rebuilt, Exception)
            self.refuse_commits(rebuilt)
            self.assertSMTP(self.smtp(["a@example.org"]), kind)
            self.assertEqual(str(rebuilt), str(error))
