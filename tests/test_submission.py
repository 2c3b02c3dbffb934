"""The SMTP submission listener with real clients (Python's smtplib, swaks) against a real
twistd, each message checked byte for byte where it arrives (aiosmtpd)."""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import ssl
import subprocess
import tempfile
import unittest
from typing import Any

import bcrypt
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmailer.config import parse_config
from smtpmailer.ini import ConfigError
from smtpmailer.intake.smtp.listener import verify_password
from tests.certs import TestCA
from tests.daemon import REPO, Daemon, started_peer, temporary_home, wait_until
from tests.smtp_peer import SMTPPeer
from tests.support import submission_port


class PasswordTests(SynchronousTestCase):
    def test_bcrypt_and_argon2(self) -> None:
        from argon2 import PasswordHasher

        stored = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
        self.assertTrue(verify_password("pw", stored))
        self.assertFalse(verify_password("nope", stored))
        argon = PasswordHasher().hash("pw")
        self.assertTrue(verify_password("pw", argon))
        self.assertFalse(verify_password("nope", argon))
        self.assertFalse(verify_password("pw", "pw"))  # plain text never matches

    def test_plain_text_users_file_is_refused(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        users = os.path.join(directory, "users")
        with open(users, "w") as handle:
            handle.write("# users\napp:secret\n")
        with self.assertRaises(ConfigError) as caught:
            parse_config(
                f"[Relay]\nhost = h\n[Submission]\nlisten = tcp:2525:interface=127.0.0.1"
                f"\nusers_file = {users}\n",
                os.path.join(directory, "c.conf"),
            )
        self.assertIn(
            f"{users}:2: expected 'user:HASH' with a bcrypt or argon2 hash", str(caught.exception)
        )

    def test_public_listener_needs_users(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config("[Relay]\nhost = h\n[Submission]\nlisten = tcp:2525\n", "c.conf")
        self.assertIn("reachable from other hosts: set users_file", str(caught.exception))


class SubmissionTests(TestCase):
    """Through a submission worker process (the default on two or more CPUs)."""

    timeout = 120
    workers = 1

    def setUp(self) -> None:
        self.home = temporary_home(self)
        self.relay = started_peer(self)
        ca = TestCA(os.path.join(self.home, "ca"))
        self.ca_file = ca.ca_file
        cert, key = ca.issue("localhost", dns=("localhost",))
        users = os.path.join(self.home, "users")
        with open(users, "w") as handle:
            handle.write(f"app:{bcrypt.hashpw(b'app-pw', bcrypt.gensalt(rounds=4)).decode()}\n")
        self.daemon = Daemon(
            os.path.join(self.home, "d"),
            f"[Relay]\nhost = 127.0.0.1\nport = {self.relay.port}\nsecurity = none\n"
            f"[Submission]\nlisten = tcp:0:interface=127.0.0.1\ntls_cert = {cert}\n"
            f"tls_key = {key}\nusers_file = {users}\nmax_recipients = 3\n"
            f"max_connections_per_client = 4\nworkers = {self.workers}\n",
            queue="max_message_size = 32KB",
        )
        self.addCleanup(self.daemon.stop)
        self.daemon.start()
        self.port = submission_port(self.daemon)

    def client(self) -> smtplib.SMTP:
        client = smtplib.SMTP("localhost", self.port, timeout=30)
        self.addCleanup(lambda: client.close())
        client.ehlo("app.test")
        client.starttls(context=ssl.create_default_context(cafile=self.ca_file))
        client.ehlo("app.test")
        client.login("app", "app-pw")
        return client

    def test_smtplib_with_starttls_and_auth_byte_for_byte(self) -> None:
        client = self.client()
        self.assertIn("pipelining", client.esmtp_features)
        self.assertEqual(client.esmtp_features["size"], str(32 * 1024))
        body = (
            "Subject: via SMTP\r\nFrom: app@example.com\r\nTo: a@example.org\r\n\r\n"
            "line one\r\n.line with a dot\r\n\u00fcber 8-bit\r\n"
        ).encode()
        refused = client.sendmail(
            "app@example.com",
            ["a@example.org", "b@example.org"],
            body,
            mail_options=["BODY=8BITMIME"],
        )
        self.assertEqual(refused, {})
        code, reply = client.docmd("NOOP")
        self.assertEqual(code, 250)
        wait_until(lambda: len(self.relay.messages()) == 1, what="delivery to the relay")
        (arrived,) = self.relay.messages()
        self.assertEqual(arrived.recipients, ["a@example.org", "b@example.org"])
        self.assertEqual(arrived.sender, "app@example.com")
        received, rest = arrived.data.split(b"\r\n", 1)
        self.assertTrue(received.startswith(b"Received: from app.test"), received)
        self.assertIn(b"with ESMTPSA", received)
        # Byte for byte what the client sent, after the one Received line we add.
        self.assertEqual(rest, body)

    def test_the_250_means_queued(self) -> None:
        client = self.client()
        client.mail("app@example.com")
        client.rcpt("a@example.org")
        code, reply = client.data(b"Subject: s\r\n\r\nb\r\n")
        self.assertEqual(code, 250)
        message_id = re.search(rb"queued as (\w+)", reply).group(1).decode()  # type: ignore[union-attr]
        self.assertIn(self.daemon.message(message_id)["state"], ("queued", "active", "sent"))

    def test_refusals(self) -> None:
        plain = smtplib.SMTP("localhost", self.port, timeout=30)
        self.addCleanup(plain.close)
        plain.ehlo("x")
        self.assertNotIn("auth", plain.esmtp_features, "no AUTH before STARTTLS")
        self.assertEqual(plain.docmd("AUTH", "PLAIN AGFwcABhcHAtcHc=")[0], 538)
        self.assertEqual(plain.docmd("MAIL", "FROM:<app@example.com>")[0], 530)

        client = self.client()
        self.assertEqual(client.docmd("MAIL", "FROM:<app@example.com> SIZE=999999")[0], 552)
        self.assertEqual(client.docmd("MAIL", "FROM:<not valid@example.com>")[0], 553)
        self.assertEqual(client.docmd("MAIL", "FROM:not-in-brackets")[0], 501)
        self.assertEqual(client.docmd("MAIL", "FROM:<app@example.com>")[0], 250)
        self.assertEqual(client.docmd("RCPT", "TO:<a..b@example.org>")[0], 553)
        for name in ("a", "b", "c"):
            self.assertEqual(client.docmd("RCPT", f"TO:<{name}@example.org>")[0], 250)
        code, reply = client.docmd("RCPT", "TO:<d@example.org>")
        self.assertEqual((code, reply), (452, b"4.5.3 Too many recipients"))
        self.assertEqual(client.docmd("DATA")[0], 354)
        client.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 600 + b".\r\n")
        code, reply = client.getreply()
        self.assertEqual(code, 552)
        self.assertIn(b"Message too big", reply)
        self.assertEqual(self.daemon.states(), {})

    def test_wrong_password(self) -> None:
        client = smtplib.SMTP("localhost", self.port, timeout=30)
        self.addCleanup(client.close)
        client.ehlo("x")
        client.starttls(context=ssl.create_default_context(cafile=self.ca_file))
        client.ehlo("x")
        with self.assertRaises(smtplib.SMTPAuthenticationError) as caught:
            client.login("app", "wrong-pw-123")
        # RFC 4954's enhanced code, which EHLO's ENHANCEDSTATUSCODES promises.
        self.assertEqual(caught.exception.smtp_code, 535)
        self.assertTrue(caught.exception.smtp_error.startswith(b"5.7.8 "))
        line = wait_until(
            lambda: re.search(r"submission: authentication failed .*", self.daemon.new_log()),
            what="the failed AUTH's log line",
        )
        self.assertEqual(
            line.group(0),
            "submission: authentication failed for user=app from=127.0.0.1 (1 in a row)",
        )
        self.assertNotIn("wrong-pw-123", self.daemon.log())
        # smtplib tried PLAIN, then LOGIN: two failures, two lines for fail2ban.
        self.fail2ban_finds(self.daemon.log_path, "127.0.0.1", 2)

    def fail2ban_finds(self, log_path: str, host: str, count: int) -> None:
        """The shipped filter, run by fail2ban's own fail2ban-regex, on the real log."""
        import shutil
        import subprocess

        if shutil.which("fail2ban-regex") is None:
            raise unittest.SkipTest("fail2ban-regex is missing (make system-deps installs it)")
        result = subprocess.run(
            [
                "fail2ban-regex",
                "--print-all-matched",
                log_path,
                os.path.join(REPO, "packaging", "fail2ban", "filter.d", "smtpmailer.conf"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(result.stdout, rf"Failregex: {count} total")
        self.assertIn(host, result.stdout)

    def test_connections_per_client_are_limited(self) -> None:
        clients = [smtplib.SMTP("127.0.0.1", self.port, timeout=30) for _ in range(4)]
        for client in clients:
            self.addCleanup(client.close)
        with self.assertRaises(smtplib.SMTPConnectError) as caught:
            smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        self.assertEqual(caught.exception.smtp_code, 421)

    def test_swaks(self) -> None:
        swaks = shutil.which("swaks")
        if swaks is None:
            self.fail("swaks is missing: `make test` installs Debian's swaks")
        result = subprocess.run(
            [
                swaks,
                "--server",
                f"127.0.0.1:{self.port}",
                "--tls",
                "--tls-verify",
                "--tls-ca-path",
                self.ca_file,
                "--tls-sni",
                "localhost",
                "--auth",
                "LOGIN",
                "--auth-user",
                "app",
                "--auth-password",
                "app-pw",
                "--from",
                "swaks@example.com",
                "--to",
                "s@example.org",
                "--pipeline",
                "--header",
                "Subject: from swaks",
                "--body",
                "swaks body",
                "--helo",
                "swaks.test",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertRegex(result.stdout, r"<~  250 2.0.0 Ok: queued as \w+")
        wait_until(lambda: len(self.relay.messages()) == 1, what="the swaks message")
        (arrived,) = self.relay.messages()
        self.assertEqual(
            (arrived.sender, arrived.recipients), ("swaks@example.com", ["s@example.org"])
        )
        self.assertIn(b"Subject: from swaks\r\n", arrived.data)
        self.assertIn(b"\r\n\r\nswaks body\r\n", arrived.data)

    def test_pipelined_commands_wait_for_the_commit(self) -> None:
        """A plain socket, to control what arrives in one write: commands pipelined after
        the final dot are answered after the commit's 250, in order."""
        import socket

        # Off TLS, without AUTH: a daemon whose listener needs neither.
        self.daemon.stop()
        text = open(self.daemon.config_path).read()
        text = re.sub(r"tls_cert = .*\n|tls_key = .*\n|users_file = .*\n", "", text)
        with open(self.daemon.config_path, "w") as handle:
            handle.write(text)
        self.daemon.start()
        port = submission_port(self.daemon)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            reader = sock.makefile("rb")

            def reply() -> bytes:
                lines = []
                while True:
                    line = reader.readline()
                    lines.append(line)
                    if line[3:4] != b"-":
                        return b"".join(lines)

            self.assertTrue(reply().startswith(b"220"))
            sock.sendall(b"EHLO pipe.test\r\n")
            self.assertIn(b"PIPELINING", reply())
            sock.sendall(
                b"MAIL FROM:<p@example.com>\r\nRCPT TO:<a@example.org>\r\n"
                b"RCPT TO:<b@example.org>\r\nDATA\r\n"
            )
            self.assertEqual([reply()[:3] for _ in range(4)], [b"250", b"250", b"250", b"354"])
            sock.sendall(
                b"Subject: piped\r\n\r\nbody\r\n.\r\nMAIL FROM:<p@example.com>\r\nQUIT\r\n"
            )
            queued = reply()
            self.assertRegex(queued, rb"^250 2.0.0 Ok: queued as \w+")
            self.assertTrue(reply().startswith(b"250"))  # the MAIL after the dot, in order
            self.assertTrue(reply().startswith(b"221"))
        wait_until(lambda: len(self.relay.messages()) == 1, what="the piped message")


class InProcessSubmissionTests(SubmissionTests):
    """The same, served by the daemon's own process (one CPU, or ``workers = 0``)."""

    workers = 0

    def test_no_worker_runs(self) -> None:
        self.assertNotIn("submission worker", self.daemon.new_log())


class SMTPUTF8Tests(TestCase):
    """RFC 6531 end to end: UTF-8 addresses in through SMTPUTF8, out only with SMTPUTF8."""

    timeout = 120

    def run_through(self, relay_offers: bool) -> tuple[SMTPPeer, Daemon, str]:
        home = tempfile.mkdtemp(prefix="smtpm-")
        self.addCleanup(shutil.rmtree, home, True)
        relay = SMTPPeer(smtputf8=relay_offers)
        relay.start()
        self.addCleanup(relay.stop)
        daemon = Daemon(
            os.path.join(home, "d"),
            f"[Relay]\nhost = 127.0.0.1\nport = {relay.port}\nsecurity = none\n"
            "[Submission]\nlisten = tcp:0:interface=127.0.0.1\n",
        )
        self.addCleanup(daemon.stop)
        daemon.start()
        port = submission_port(daemon)
        client = smtplib.SMTP("127.0.0.1", port, timeout=30)
        self.addCleanup(client.close)
        client.ehlo("utf8.test")
        self.assertIn("smtputf8", client.esmtp_features)
        message = (
            "From: Jörg <jörg@example.com>\r\nTo: ünïcode@bücher.example\r\n"
            "Subject: Grüße\r\n\r\nHallo\r\n"
        )
        client.sendmail(
            "jörg@example.com",
            ["ünïcode@bücher.example"],
            message.encode(),
            mail_options=["SMTPUTF8", "BODY=8BITMIME"],
        )
        found = wait_until(
            lambda: re.search(r"submission: queued (\w+)", daemon.log()), what="the queued line"
        )
        return relay, daemon, found.group(1)

    def test_delivered_with_smtputf8(self) -> None:
        relay, daemon, _ = self.run_through(relay_offers=True)
        wait_until(lambda: len(relay.messages()) == 1, what="delivery")
        (arrived,) = relay.messages()
        self.assertEqual(arrived.sender, "jörg@example.com")
        self.assertEqual(arrived.recipients, ["ünïcode@xn--bcher-kva.example"])
        self.assertIn("Subject: Grüße".encode(), arrived.data)

    def test_fails_where_the_relay_lacks_smtputf8(self) -> None:
        relay, daemon, message_id = self.run_through(relay_offers=False)
        # The DSN to jörg@ needs SMTPUTF8 as well: it fails too, and is not bounced again.
        wait_until(lambda: daemon.states() == {"failed": 2}, what="the failure, and its DSN's")
        info = daemon.message(message_id)
        self.assertIn("5.6.7 the relay does not offer SMTPUTF8", info["last_error"])
        self.assertEqual(relay.messages(), [])

    def test_utf8_address_without_smtputf8_is_refused(self) -> None:
        home = tempfile.mkdtemp(prefix="smtpm-")
        self.addCleanup(shutil.rmtree, home, True)
        daemon = Daemon(
            os.path.join(home, "d"),
            "[Relay]\nhost = 127.0.0.1\nsecurity = none\n"
            "[Submission]\nlisten = tcp:0:interface=127.0.0.1\n",
        )
        self.addCleanup(daemon.stop)
        daemon.start()
        port = submission_port(daemon)
        import socket

        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall("EHLO x\r\nMAIL FROM:<jörg@example.com>\r\n".encode())
            while not reader.readline().startswith(b"250 "):
                pass
            self.assertTrue(reader.readline().startswith(b"553 5.6.7"))


class BulkDataTests(SynchronousTestCase):
    """DATA read in bulk, fed in awkward pieces through a StringTransport."""

    def setUp(self) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.internet.defer import succeed
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from smtpmailer.intake.smtp.listener import SubmissionFactory

        config = parse_config("[Relay]\nhost = h\n[Queue]\nmax_message_size = 2KB\n", "c.conf")
        self.queued: list[Any] = []
        self.peers: list[str] = []

        def enqueue(envelope: Any, peer: str) -> Any:
            self.queued.append(envelope)
            self.peers.append(peer)
            return succeed(f"Q{len(self.queued)}")

        self.clock = Clock()
        factory = SubmissionFactory(config, enqueue, self.clock, None)
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        self.protocol.makeConnection(self.transport)

    def feed(self, *pieces: bytes) -> list[bytes]:
        self.transport.clear()
        for piece in pieces:
            self.protocol.dataReceived(piece)
        return [line for line in self.transport.value().split(b"\r\n") if line]

    def transaction(self) -> None:
        self.feed(b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n")
        self.assertEqual(self.feed(b"DATA\r\n")[-1][:3], b"354")

    def body(self, index: int = 0) -> bytes:
        return bytes(self.queued[index].data.split(b"\r\n", 1)[1])  # after Received:

    def test_over_a_unix_socket(self) -> None:
        """listen = unix:PATH: the peer has no IP address, and EHLO still works."""
        from twisted.internet.address import UNIXAddress
        from twisted.internet.testing import StringTransport

        self.protocol = self.protocol.factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=UNIXAddress(None))
        self.protocol.makeConnection(self.transport)
        self.assertEqual(self.feed(b"EHLO app\r\n")[0][:4], b"250-")
        self.assertEqual(
            self.feed(b"MAIL FROM:<a@example.com>\r\n"), [b"250 Sender address accepted"]
        )
        self.feed(b"RCPT TO:<b@example.org>\r\nDATA\r\n")
        self.assertEqual(
            self.feed(b"Subject: s\r\n\r\nb\r\n.\r\n"), [b"250 2.0.0 Ok: queued as Q1"]
        )
        self.assertIn(b"Received: from app (localhost)", self.queued[0].data)

    def queued_lines(self, logs_queued: bool) -> list[str]:
        from twisted.logger import formatEvent, globalLogPublisher

        self.protocol.factory.logs_queued = logs_queued
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        try:
            self.transaction()
            self.assertEqual(self.feed(b"x\r\n.\r\n"), [b"250 2.0.0 Ok: queued as Q1"])
        finally:
            globalLogPublisher.removeObserver(events.append)
        self.assertEqual(self.peers, ["127.0.0.1"])  # handed over with the message
        self.queued_events = [e for e in events if "submission: queued" in formatEvent(e)]
        return [formatEvent(e) for e in self.queued_events]

    def test_the_queued_line_when_this_process_commits(self) -> None:
        from smtpmailer.logs import json_event

        self.assertEqual(
            self.queued_lines(logs_queued=True),
            ["submission: queued Q1 from <a@example.com> for 1 recipient(s) (127.0.0.1)"],
        )
        record = json_event(self.queued_events[0])  # the JSON log keeps its fields
        self.assertEqual(
            {key: record[key] for key in ("id", "sender", "n", "peer")},
            {"id": "Q1", "sender": "a@example.com", "n": 1, "peer": "127.0.0.1"},
        )

    def test_a_worker_leaves_the_queued_line_to_the_daemon(self) -> None:
        self.assertEqual(self.queued_lines(logs_queued=False), [])

    def test_end_marker_split_across_pieces_and_dots_unstuffed(self) -> None:
        self.transaction()
        replies = self.feed(b"Subject: s\r\n\r\n..lead", b"ing dot\r\nmid\r", b"\n.", b"\r", b"\n")
        self.assertEqual(replies, [b"250 2.0.0 Ok: queued as Q1"])
        self.assertEqual(self.body(), b"Subject: s\r\n\r\n.leading dot\r\nmid\r\n")

    def test_content_in_the_same_piece_as_data_and_commands_after_the_end(self) -> None:
        self.feed(b"EHLO x\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n")
        replies = self.feed(b"DATA\r\nSubject: one\r\n\r\nbody\r\n.\r\nRSET\r\nNOOP\r\n")
        self.assertEqual([r[:3] for r in replies], [b"354", b"250", b"250", b"250"])
        self.assertIn(b"queued as Q1", replies[1])
        self.assertEqual(self.body(), b"Subject: one\r\n\r\nbody\r\n")

    def test_empty_message(self) -> None:
        self.transaction()
        self.assertEqual(self.feed(b".\r\n"), [b"250 2.0.0 Ok: queued as Q1"])
        self.assertEqual(self.body(), b"")

    def test_too_big_is_refused_and_the_session_goes_on(self) -> None:
        self.transaction()
        replies = self.feed(*([b"x" * 500 + b"\r\n"] * 10), b".\r\n")
        self.assertEqual(len(replies), 1)
        self.assertTrue(replies[0].startswith(b"552 5.3.4 Message too big"))
        self.assertEqual(self.queued, [])
        self.transaction()
        self.assertEqual(self.feed(b"small\r\n.\r\n"), [b"250 2.0.0 Ok: queued as Q1"])

    def test_a_slow_large_message_is_not_cut_off_while_data_flows(self) -> None:
        self.transaction()
        for _ in range(5):
            self.clock.advance(200)  # more than the 300 s timeout in all, never idle for it
            self.feed(b"x" * 100 + b"\r\n")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.feed(b".\r\n"), [b"250 2.0.0 Ok: queued as Q1"])
        self.clock.advance(301)  # idle now: the session times out
        self.assertTrue(self.transport.disconnecting)

    def test_a_command_that_is_not_ascii_is_answered_and_the_session_goes_on(self) -> None:
        self.assertEqual(self.feed(b"EHLO x\r\n")[0][:4], b"250-")
        for line in (b"\xff\xfe\r\n", b"M\xc3\xa4IL FROM:<a@example.com>\r\n", b"AUTH \xff\r\n"):
            replies = self.feed(line)
            self.assertEqual(len(replies), 1, line)
            self.assertTrue(replies[0].startswith((b"500 5.5.2", b"501", b"503", b"504")), replies)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])
        self.transaction()
        self.assertEqual(self.feed(b"body\r\n.\r\n"), [b"250 2.0.0 Ok: queued as Q1"])

    def test_auth_without_a_mechanism_is_a_syntax_error(self) -> None:
        """Found by fuzzing: Twisted raised IndexError on a bare AUTH and dropped the
        connection (a traceback in the log)."""
        self.feed(b"EHLO x\r\n")
        self.assertEqual(
            self.feed(b"AUTH\r\n"), [b"501 5.5.4 Syntax: AUTH mechanism [initial-response]"]
        )
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])


class AuthFailureTests(SynchronousTestCase):
    """Failed AUTH in memory: 535 5.7.8, one log line, and a refusal that waits longer
    after each failure from the same address (time is a task.Clock)."""

    def setUp(self) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.internet.task import Clock
        from twisted.internet.testing import StringTransport

        from smtpmailer.intake.smtp.listener import SubmissionFactory
        from smtpmailer.queue.runner import synchronous_runner

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        users = os.path.join(directory, "users")
        with open(users, "w") as handle:
            handle.write(f"app:{bcrypt.hashpw(b'app-pw', bcrypt.gensalt(rounds=4)).decode()}\n")
        config = parse_config(f"[Relay]\nhost = h\n[Submission]\nusers_file = {users}\n", "c")
        self.clock = Clock()
        self.factory = SubmissionFactory(config, None, self.clock, synchronous_runner)
        self.transports: list[Any] = []
        self.lines: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "line" in event:
                self.lines.append(event["line"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.make = lambda: self._connect(IPv4Address("TCP", "192.0.2.7", 1), StringTransport)

    def _connect(self, address: Any, transport_type: Any) -> tuple[Any, Any]:
        protocol = self.factory.buildProtocol(None)
        transport = transport_type(peerAddress=address)
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, None)
        return protocol, transport

    def login(self, password: bytes) -> list[bytes]:
        import base64

        protocol, transport = self.make()
        transport.clear()
        token = base64.b64encode(b"\0app\0" + password)
        protocol.dataReceived(b"EHLO x\r\nAUTH PLAIN " + token + b"\r\n")
        self.protocol, self.transport = protocol, transport
        self.clock.advance(0)  # a refusal that need not wait still goes through the clock
        return self.replies()

    def replies(self) -> list[bytes]:
        return [line for line in self.transport.value().split(b"\r\n") if line][-1:]

    def test_each_failure_waits_longer_and_a_success_forgets(self) -> None:
        self.assertEqual(self.login(b"wrong"), [b"535 5.7.8 Authentication credentials invalid"])
        self.assertEqual(
            self.lines[-1],
            "submission: authentication failed for user=app from=192.0.2.7 (1 in a row)",
        )
        for failures, delay in ((2, 1.0), (3, 2.0), (4, 4.0)):
            self.assertNotEqual(self.login(b"wrong")[0][:3], b"535")  # not yet
            self.clock.advance(delay - 0.02)
            self.assertNotEqual(self.replies()[0][:3], b"535")
            self.clock.advance(0.02)
            self.assertEqual(self.replies(), [b"535 5.7.8 Authentication credentials invalid"])
            self.assertIn(f"({failures} in a row)", self.lines[-1])
        self.assertEqual(self.login(b"app-pw")[0][:3], b"235")
        self.assertEqual(self.login(b"wrong")[0][:3], b"535")  # forgotten: at once again
        self.assertNotIn("wrong", " ".join(self.lines).replace("=app", ""))


class DrainTests(SynchronousTestCase):
    """A listener that is replaced (a reload restarting its worker) finishes the
    transactions under way, answers them after their commit, then closes."""

    def setUp(self) -> None:
        from twisted.internet.task import Clock

        from smtpmailer.intake.smtp.listener import SubmissionFactory

        config = parse_config("[Relay]\nhost = h\n", "c.conf")
        self.commits: list[Any] = []
        self.factory = SubmissionFactory(config, self.enqueue, Clock(), None)

    def enqueue(self, envelope: Any, peer: str) -> Any:
        from twisted.internet.defer import Deferred

        committed: Deferred[str] = Deferred()
        self.commits.append(committed)
        return committed

    def connect(self) -> tuple[Any, Any]:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        protocol = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        protocol.makeConnection(transport)
        protocol.dataReceived(b"EHLO x\r\n")
        transport.clear()
        return protocol, transport

    def test_a_transaction_under_way_gets_its_250_before_the_close(self) -> None:
        idle, idle_transport = self.connect()
        busy, busy_transport = self.connect()
        busy.dataReceived(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
        busy.dataReceived(b"Subject: s\r\n\r\nbody\r\n.\r\n")
        self.assertEqual(len(self.commits), 1)  # being committed
        drained = self.factory.drain()
        self.assertTrue(idle_transport.value().startswith(b"421 4.3.2"))
        self.assertTrue(idle_transport.disconnecting)
        idle.connectionLost(None)
        self.assertFalse(busy_transport.disconnecting, "cut before its answer")
        self.assertNoResult(drained)
        self.commits[0].callback("Q1")
        replies = busy_transport.value().split(b"\r\n")
        self.assertIn(b"250 2.0.0 Ok: queued as Q1", replies)
        self.assertTrue(
            replies[replies.index(b"250 2.0.0 Ok: queued as Q1") + 1].startswith(b"421")
        )
        self.assertTrue(busy_transport.disconnecting)
        busy.connectionLost(None)
        self.successResultOf(drained)
