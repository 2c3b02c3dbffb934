"""End to end: real ``twistd -n smtpmailer`` processes against a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import os
import signal
import socket
from typing import Any

from tests.daemon import Daemon, fill_queue, wait_until
from tests.fake_relay import EXCHANGE_CONCURRENT_LIMIT
from tests.smtp_peer import SMTPPeer
from tests.support import EndToEndCase
from tools.ports import fixed_port


class DeliveryTests(EndToEndCase):
    def test_starttls_auth_and_connection_reuse(self) -> None:
        """Messages go over verified STARTTLS with AUTH; the log has one line per recipient."""
        peer = self.start_peer()
        daemon = self.start_daemon(peer.port).start()
        first = daemon.send(
            "--from",
            "App <app@example.com>",
            "--to",
            "a@example.org",
            "--to",
            "b@example.org",
            "--subject",
            "Grüße",
            "--body",
            "one",
        )
        second = daemon.send(
            "--from",
            "app@example.com",
            "--to",
            "c@example.org",
            "--subject",
            "two",
            "--body",
            ".leading dot\n.\nend",
        )
        wait_until(lambda: len(peer.messages()) == 2, what="two messages at the relay")
        got = {m.header("Subject"): m for m in peer.messages()}
        self.assertEqual(
            sorted(got["=?utf-8?q?Gr=C3=BC=C3=9Fe?="].recipients),
            ["a@example.org", "b@example.org"],
        )
        for message in got.values():
            self.assertTrue(message.tls)
            self.assertEqual(message.authenticated_as, "app")
            self.assertEqual(message.sender, "app@example.com")
        # dot-stuffing undone by the relay: the body arrives as written
        self.assertIn(b"\r\n.leading dot\r\n.\r\nend", got["two"].data)
        wait_until(lambda: daemon.states() == {"sent": 2}, what="both marked sent")
        self.wait_for_outcomes(daemon, second, 1)
        lines = self.wait_for_outcomes(daemon, first, 2)
        self.assertEqual(sorted(line["to"] for line in lines), ["a@example.org", "b@example.org"])
        for line in lines + self.outcomes(daemon, second):
            self.assertEqual(line["status"], "sent")
            self.assertEqual(line["attempts"], "1")
            self.assertEqual(line["relay"], f"localhost[127.0.0.1]:{peer.port}")
            self.assertEqual(line["reply"], "250 2.0.0 OK queued")
        self.assertNotIn("s3cret", daemon.log())

    def test_implicit_tls(self) -> None:
        """security = tls: TLS from the first byte (port 465 style), verified, then AUTH."""
        peer = self.start_peer(implicit_tls=True)
        daemon = self.start_daemon(peer.port, security="tls").start()
        daemon.send("--from", "app@example.com", "--to", "a@example.org", "--subject", "tls")
        wait_until(lambda: daemon.states() == {"sent": 1}, what="delivery over implicit TLS")
        (message,) = peer.messages()
        self.assertEqual(message.authenticated_as, "app")

    def test_implicit_tls_wrong_name(self) -> None:
        peer = self.start_peer(implicit_tls=True, cert=self.ca.issue("x", dns=("x.example",)))
        daemon = self.start_daemon(peer.port, security="tls").start()
        message_id = daemon.send(
            "--from", "app@example.com", "--to", "a@example.org", "--subject", "tls"
        )
        wait_until(lambda: daemon.states().get("deferred") == 1, what="a deferral")
        self.assertIn("TLS", daemon.message(message_id)["last_error"])
        self.assertEqual(peer.messages(), [])

    def test_one_recipient_rejected_fails_alone(self) -> None:
        """A 550 for one recipient fails that recipient only; a retry never re-sends the others."""
        peer = self.start_peer()
        peer.set(reject_rcpt={"bad@example.org": "550 5.1.1 no such user"})
        daemon = self.start_daemon(peer.port).start()
        message_id = daemon.send(
            "--from",
            "app@example.com",
            "--to",
            "good@example.org",
            "--to",
            "bad@example.org",
            "--subject",
            "s",
            "--body",
            "b",
        )
        wait_until(lambda: daemon.states().get("failed") == 1, what="the message to fail")
        info = daemon.message(message_id)
        recipients = {r["address"]: r for r in info["recipients"]}
        self.assertEqual(recipients["good@example.org"]["state"], "sent")
        self.assertEqual(recipients["bad@example.org"]["state"], "failed")
        self.assertIn("550 5.1.1 no such user", recipients["bad@example.org"]["last_error"])
        wait_until(lambda: len(peer.messages()) == 2, what="the DSN to the sender")
        first, dsn = peer.messages()
        self.assertEqual(first.recipients, ["good@example.org"])
        self.assertEqual((dsn.sender, dsn.recipients), ("<>", ["app@example.com"]), "a DSN")
        # The operator fixes the mailbox and retries: only the failed recipient is tried again.
        peer.set(reject_rcpt={})
        self.assertEqual(daemon.cli("queue", "retry", message_id).returncode, 0)
        wait_until(lambda: daemon.states() == {"sent": 2}, what="the retry to succeed")
        self.assertEqual(
            [m.recipients for m in peer.messages()],
            [["good@example.org"], ["app@example.com"], ["bad@example.org"]],
        )

    def test_temporary_failures_back_off_then_deliver(self) -> None:
        """451 twice: deferred with the reason, retried with backoff, sent on attempt 3."""
        peer = self.start_peer()
        peer.set(tempfail_data=2)
        daemon = self.start_daemon(peer.port).start()
        message_id = daemon.send(
            "--from", "app@example.com", "--to", "a@example.org", "--subject", "s", "--body", "b"
        )
        wait_until(lambda: daemon.states() == {"sent": 1}, what="delivery after two 451s")
        statuses = [
            (line["attempts"], line["status"])
            for line in self.wait_for_outcomes(daemon, message_id, 3)
        ]
        self.assertEqual(statuses, [("1", "deferred"), ("2", "deferred"), ("3", "sent")])
        self.assertIn("451 4.3.0 try again later", self.outcomes(daemon, message_id)[0]["reply"])
        self.assertEqual(len(peer.messages()), 1)

    def test_relay_down_then_up(self) -> None:
        """Connection refused defers with the reason; when the relay comes up, mail flows."""
        port = fixed_port()  # the relay comes up on it later: a port no bind(0) is given
        closed = socket.socket()
        closed.bind(("127.0.0.1", port))  # bound, not listening: connections are refused
        daemon = self.start_daemon(port).start()
        message_id = daemon.send(
            "--from", "app@example.com", "--to", "a@example.org", "--subject", "s", "--body", "b"
        )
        wait_until(lambda: daemon.states().get("deferred") == 1, what="a deferral")
        self.assertIn("connection refused", daemon.message(message_id)["last_error"])
        closed.close()
        peer = self.start_peer(port=port)
        wait_until(lambda: daemon.states() == {"sent": 1}, what="delivery once the relay is up")
        self.assertEqual(len(peer.messages()), 1)

    def test_wrong_certificate_name_is_never_sent(self) -> None:
        """A certificate for another name fails verification: deferred, nothing sent."""
        wrong = self.ca.issue("elsewhere", dns=("elsewhere.example",))
        peer = self.start_peer(cert=wrong)
        daemon = self.start_daemon(peer.port).start()
        message_id = daemon.send(
            "--from", "app@example.com", "--to", "a@example.org", "--subject", "s", "--body", "b"
        )
        wait_until(lambda: daemon.states().get("deferred") == 1, what="a deferral")
        self.assertRegex(daemon.message(message_id)["last_error"], "TLS")
        self.assertEqual(peer.messages(), [])

    def test_untrusted_certificate_is_never_sent(self) -> None:
        """Without ca_file, a private CA is not trusted."""
        peer = self.start_peer()
        daemon = self.start_daemon(peer.port, ca_file="").start()
        message_id = daemon.send(
            "--from", "app@example.com", "--to", "a@example.org", "--subject", "s", "--body", "b"
        )
        wait_until(lambda: daemon.states().get("deferred") == 1, what="a deferral")
        self.assertIn("TLS", daemon.message(message_id)["last_error"])
        self.assertEqual(peer.messages(), [])

    def test_a_relay_that_asks_for_a_client_certificate(self) -> None:
        """cert_file and key_file: the certificate is shown in STARTTLS and the relay (which
        refuses a client without one, as a connector that knows senders by certificate
        does) takes the mail; without them, the message is deferred."""
        from tests.smtp_peer import SMTPPeer

        peer = SMTPPeer(
            tls_cert=self.server_cert, users={"app": "s3cret"}, client_ca=self.ca.ca_file
        )
        peer.start()
        self.addCleanup(peer.stop)
        daemon = self.start_daemon(peer.port).start()
        first = daemon.send("--from", "app@example.com", "--to", "a@example.org", "--subject", "s")
        wait_until(lambda: daemon.states().get("deferred") == 1, what="a deferral")
        # Python's TLS ends such a session without its alert, or (when it flushes it
        # first) with it: either way the mail waits, and the line says which.
        self.assertRegex(
            daemon.message(first)["last_error"], r": (connection closed by the relay|TLS: .+)$"
        )
        self.assertEqual(peer.messages(), [])
        daemon.stop()
        cert, key = self.ca.issue("smtpmailer-client", dns=("client.example",))
        os.chmod(key, 0o600)
        daemon.write_config(self.relay_section(peer.port, cert_file=cert, key_file=key))
        daemon.start()
        daemon.cli("queue", "retry", "--all")
        wait_until(lambda: daemon.states() == {"sent": 1}, what="delivery with the certificate")
        (received,) = peer.messages()
        self.assertEqual(received.client_certificate, "smtpmailer-client")
        self.assertEqual(received.authenticated_as, "app")

    def test_source_address(self) -> None:
        """source_address: the connection comes from that address (127.0.0.2 here); one
        that is not this host's defers the message with a line that says so."""
        peer = self.start_peer()
        daemon = self.start_daemon(peer.port, source_address="127.0.0.2").start()
        daemon.send("--from", "app@example.com", "--to", "a@example.org", "--subject", "s")
        wait_until(lambda: daemon.states() == {"sent": 1}, what="delivery")
        self.assertEqual([m.client_address for m in peer.messages()], ["127.0.0.2"])
        daemon.stop()
        daemon.write_config(self.relay_section(peer.port, source_address="192.0.2.10"))
        daemon.start()
        second = daemon.send("--from", "app@example.com", "--to", "b@example.org", "--subject", "t")
        wait_until(lambda: daemon.states().get("deferred") == 1, what="a deferral")
        self.assertEqual(
            daemon.message(second)["last_error"].split(": ", 1)[1],
            "cannot connect from source_address (99: Cannot assign requested address)",
        )
        self.assertEqual(len(peer.messages()), 1)

    def test_connection_dropped_mid_data(self) -> None:
        """The relay hangs up after the body, before its reply: deferred, then delivered."""
        peer = self.start_peer()
        peer.set(drop_in_data=1)
        daemon = self.start_daemon(peer.port).start()
        message_id = daemon.send(
            "--from", "app@example.com", "--to", "a@example.org", "--subject", "s", "--body", "b"
        )
        wait_until(lambda: daemon.states() == {"sent": 1}, what="delivery after the drop")
        lines = self.wait_for_outcomes(daemon, message_id, 2)
        self.assertEqual([line["status"] for line in lines], ["deferred", "sent"])
        self.assertIn("connection closed", lines[0]["reply"])
        self.assertEqual(peer.dropped, 1)

    def test_relay_stalls_past_timeout(self) -> None:
        """No reply after the body within timeout: deferred with the reason, never sent."""
        peer = self.start_peer()
        peer.set(stall_data=True)
        daemon = self.start_daemon(peer.port, timeout="1s").start()
        message_id = daemon.send(
            "--from", "app@example.com", "--to", "a@example.org", "--subject", "s", "--body", "b"
        )
        wait_until(lambda: daemon.states().get("deferred") == 1, what="a deferral")
        self.assertIn("no reply from the relay within 1s", daemon.message(message_id)["last_error"])

    def test_wrong_password_defers(self) -> None:
        """A rejected login is the operator's to fix: the mail waits, it does not fail."""
        peer = self.start_peer()
        with open(self.secret, "w") as handle:
            handle.write("wrong\n")
        daemon = self.start_daemon(peer.port).start()
        message_id = daemon.send(
            "--from", "app@example.com", "--to", "a@example.org", "--subject", "s", "--body", "b"
        )
        wait_until(lambda: daemon.states().get("deferred") == 1, what="a deferral")
        self.assertIn("authentication failed", daemon.message(message_id)["last_error"])
        self.assertNotIn("wrong", daemon.log().replace("wrong password", ""))


class CrashTests(EndToEndCase):
    def test_kill_9_during_delivery_loses_nothing(self) -> None:
        """kill -9 while 1,000 messages drain; after a restart every one arrives, and
        duplicates are no more than the messages that were in flight at the kill."""
        peer = self.start_peer()
        daemon = self.start_daemon(peer.port, max_connections="4")
        fill_queue(daemon, 1000)
        daemon.start()
        wait_until(lambda: len(peer.messages()) >= 200, what="200 deliveries")
        daemon.kill(signal.SIGKILL)
        in_flight = daemon.states().get("active", 0)
        received_at_kill = len(peer.messages())
        self.assertLess(received_at_kill, 1000, "the kill came too late to test anything")
        daemon.start()
        wait_until(lambda: daemon.states() == {"sent": 1000}, timeout=90, what="all 1000 sent")
        sequence = [int(m.header("X-Seq") or -1) for m in peer.messages()]
        self.assertEqual(set(sequence), set(range(1000)))
        duplicates = len(sequence) - 1000
        self.assertLessEqual(duplicates, in_flight)
        self.assertIn("were being delivered when the daemon last stopped", daemon.log())

    def test_kill_9_while_accepting_and_delivering_loses_nothing(self) -> None:
        """SMTP submissions go straight to idle connections (leased in their own commit)
        while others queue; kill -9 in the middle, restart: every message that got its 250
        arrives."""
        import smtplib
        import threading

        from tests.test_submission import submission_port

        peer = SMTPPeer()
        peer.start()
        self.addCleanup(peer.stop)
        daemon = Daemon(
            os.path.join(self.home, "d"),
            f"[Relay]\nhost = 127.0.0.1\nport = {peer.port}\nsecurity = none\n"
            "[Submission]\nlisten = tcp:0:interface=127.0.0.1\n",
        )
        self.addCleanup(daemon.stop)
        daemon.start()
        port = submission_port(daemon)
        accepted: list[int] = []

        def submit(first: int) -> None:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                    for number in range(first, first + 150):
                        body = f"From: a@example.com\r\nX-Seq: {number}\r\n\r\nbody\r\n"
                        client.sendmail("a@example.com", ["r@example.org"], body)
                        accepted.append(number)  # after the 250: committed
            except (OSError, smtplib.SMTPException):
                pass  # the kill

        clients = [threading.Thread(target=submit, args=(n * 1000,)) for n in range(4)]
        for client in clients:
            client.start()
        wait_until(lambda: len(peer.messages()) >= 100, what="100 deliveries")
        daemon.kill(signal.SIGKILL)
        for client in clients:
            client.join(60)
        self.assertLess(len(accepted), 600, "the kill came too late to test anything")
        daemon.start()
        wait_until(
            lambda: set(accepted) <= {int(m.header("X-Seq") or -1) for m in peer.messages()},
            timeout=60,
            what="every accepted message to arrive",
        )
        wait_until(lambda: set(daemon.states()) <= {"sent"}, what="nothing left to send")

    def test_kill_9_of_send_leaves_no_partial_message(self) -> None:
        """send killed at any point: either the whole message is queued, or nothing."""
        import subprocess
        import sys

        from tests.daemon import environment

        peer = self.start_peer()
        daemon = self.start_daemon(peer.port, queue="max_message_size = 64MB")
        os.makedirs(daemon.state_dir)
        body = os.path.join(self.home, "big.txt")
        with open(body, "w") as handle:
            handle.write(("y" * 76 + "\n") * 200_000)  # ~15 MB: the commit takes a while
        wal = os.path.join(daemon.state_dir, "queue.sqlite3-wal")
        printed: set[str] = set()
        killed = 0
        for attempt in range(6):
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "smtpmailer.cli",
                    "--config",
                    daemon.config_path,
                    "send",
                    "--from",
                    "app@example.com",
                    "--to",
                    "a@example.org",
                    "--subject",
                    f"big {attempt}",
                    "--body-file",
                    body,
                ],
                env=environment(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            # Kill once the WAL has begun to grow by this attempt's write (mid-transaction).
            start = os.path.getsize(wal) if os.path.exists(wal) else 0
            wait_until(
                _writing(process, wal, start + 4096 * (1 + attempt)), what="the write to begin"
            )
            process.kill()
            out, _ = process.communicate()
            printed.update(out.decode().split())
            killed += process.returncode == -signal.SIGKILL
        with daemon.db() as db:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchone()[0], "ok")
            rows = db.execute(
                "SELECT m.id, m.size, length(b.data) FROM messages m "
                "LEFT JOIN bodies b ON b.message_id = m.id"
            ).fetchall()
        for message_id, size, stored in rows:
            self.assertEqual(size, stored, f"{message_id} is half-written")
        # Every id that send printed is queued; at least one kill landed before a commit.
        self.assertLessEqual(printed, {row[0] for row in rows})
        self.assertLess(len(rows), 6, "no kill landed mid-write: the test proved nothing")
        self.assertGreater(killed, 0)
        daemon.start()
        wait_until(
            lambda: daemon.states() == ({"sent": len(rows)} if rows else {}),
            what="whatever was committed to be delivered",
        )
        for message in peer.messages():
            self.assertIn(b"y" * 76, message.data)
            self.assertGreater(len(message.data), 15_000_000)


def _writing(process: Any, wal: str, size: int) -> Any:
    """True once ``process`` ended or the WAL file grew past ``size`` bytes."""
    return lambda: (
        process.poll() is not None or (os.path.exists(wal) and os.path.getsize(wal) > size)
    )


class RelayTestCommandTests(EndToEndCase):
    """`smtpmailer test`: every step against a real relay, and the one that fails."""

    def test_reports_each_step(self) -> None:
        peer = self.start_peer()
        daemon = self.start_daemon(peer.port)
        result = daemon.cli("test")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], f"[default] localhost:{peer.port} security=starttls")
        self.assertRegex(result.stdout, r"connect: ok \((127\.0\.0\.1|::1)\)")
        self.assertIn("greeting: 220 relay.test", result.stdout)
        self.assertIn("STARTTLS: ok, certificate verified", result.stdout)
        # The mechanisms the relay offers after STARTTLS, not just the word AUTH.
        self.assertRegex(result.stdout, r"EHLO again: .*AUTH\((?=[^)]*PLAIN)(?=[^)]*LOGIN)[^)]*\)")
        self.assertIn("AUTH PLAIN: ok", result.stdout)
        self.assertEqual(lines[-1], "  QUIT: ok")
        self.assertNotIn("s3cret", result.stdout)

    def test_says_which_step_failed(self) -> None:
        peer = self.start_peer()
        with open(self.secret, "w") as handle:
            handle.write("wrong\n")
        daemon = self.start_daemon(peer.port)
        result = daemon.cli("test")
        self.assertEqual(result.returncode, 1)
        self.assertIn("STARTTLS: ok", result.stdout)
        self.assertIn("FAILED: authentication failed (PLAIN): 535", result.stdout)
        unknown = daemon.cli("test", "--relay", "nope")
        self.assertEqual(unknown.returncode, 1)
        self.assertIn("no relay named 'nope' (relays: default)", unknown.stderr)


class RateLimitTests(EndToEndCase):
    def test_rate_limit_measured_at_the_relay(self) -> None:
        """rate_limit = 10/s with 35 messages over 4 connections: bursts of 10 a second,
        as the relay sees them."""
        peer = self.start_peer()
        daemon = self.start_daemon(peer.port, max_connections="4", rate_limit="10/s")
        fill_queue(daemon, 35)
        daemon.start()
        wait_until(lambda: daemon.states() == {"sent": 35}, what="35 sent")
        arrivals = sorted(m.at for m in peer.messages())
        self.assertEqual(len(arrivals), 35)
        # Half a period: arrivals at the relay trail their starts by a transaction's time,
        # so a window as long as the period could catch the tail of one burst and the next.
        busiest = max(sum(1 for t in arrivals if start <= t < start + 0.5) for start in arrivals)
        self.assertEqual(busiest, 10)
        self.assertGreaterEqual(arrivals[-1] - arrivals[0], 2.9, "four bursts: 0, 1, 2, 3 s")
        self.assertLess(arrivals[9] - arrivals[0], 0.8, "the first ten go at once")


class ConnectionLimitTests(EndToEndCase):
    def forty_sent_once(self, peer: SMTPPeer) -> tuple[str, list[str]]:
        """40 messages through up to 4 connections to ``peer``, each arriving once; the
        daemon's log and its `turned a connection away` lines."""
        daemon = self.start_daemon(peer.port, max_connections="4")
        fill_queue(daemon, 40)
        daemon.start()
        wait_until(lambda: daemon.states() == {"sent": 40}, what="40 sent")
        numbers = sorted(int(m.header("X-Seq") or -1) for m in peer.messages())
        self.assertEqual(numbers, list(range(40)))
        log = daemon.log()
        return log, [line for line in log.splitlines() if "turned a connection away" in line]

    def test_a_relay_that_limits_connections_gets_all_the_mail(self) -> None:
        """The relay takes 2 connections from us and we open up to 4: the others are
        greeted with Postfix's 421 and closed. The relay is limiting, not down: the two it
        took carry every message, and none is deferred."""
        peer = self.start_peer()
        peer.connection_limit = 2
        log, turned = self.forty_sent_once(peer)
        self.assertEqual(peer.most_open, 2)
        self.assertGreaterEqual(peer.turned_away, 1)
        self.assertEqual(len(turned), peer.turned_away)
        self.assertIn("Error: too many connections from 127.0.0.1", turned[0])
        self.assertTrue(all(line.endswith("for 30s") for line in turned), turned)
        self.assertNotIn("status=deferred", log)

    def test_a_mailbox_over_exchanges_limit_sends_on_its_three_connections(self) -> None:
        """Exchange Online lets a mailbox send on 3 connections at once; we open up to 4.
        The fourth is greeted and authenticated, and its message is refused after the
        content with 432 4.3.2. That is no attempt: every message goes once, none is
        deferred, and the daemon holds at the three."""
        peer = self.start_peer()
        peer.sending_limit = 3
        log, turned = self.forty_sent_once(peer)
        self.assertGreaterEqual(peer.over_sending_limit, 1)
        self.assertEqual(len(turned), peer.over_sending_limit)
        self.assertIn(f"(after the content: {EXCHANGE_CONCURRENT_LIMIT})", turned[0])
        self.assertNotIn("status=deferred", log)


class RoutesAndRewritingTests(EndToEndCase):
    def test_routes_by_sender_and_cron_mail_rewritten(self) -> None:
        """Two real relays: billing mail goes to its own, the rest by priority; cron's
        ``From: root`` through ``sendmail -t`` leaves as the configured address, envelope
        and header; queue show and the log line name the relay that took each message."""
        main, billing = self.start_peer(), self.start_peer()
        relays = "".join(
            self.relay_section(peer.port, priority=str(priority)).replace(
                "[Relay]", f"[Relay:{name}]"
            )
            for name, peer, priority in (("main", main, 1), ("billing", billing, 2))
        )
        rewrite_map = os.path.join(self.home, "rewrite-map")
        with open(rewrite_map, "w") as handle:
            handle.write("root ops@example.com\n")
        extra = (
            "[Route:billing]\nsender = *@billing.example.com\nvia = billing, main\n"
            f"[Rewrite]\nmap_file = {rewrite_map}\n"
        )
        daemon = Daemon(os.path.join(self.home, "d"), relays, extra=extra)
        self.addCleanup(daemon.stop)
        daemon.start()
        invoice = daemon.send(
            "--from", "Invoices@Billing.example.com", "--to", "c@example.org", "--subject", "i"
        )
        cron = daemon.cli(
            "sendmail",
            "-t",
            stdin=b"From: root (Cron Daemon)\nTo: admin@example.org\nSubject: backup\n\nok\n",
        )
        self.assertEqual(cron.returncode, 0, cron.stderr)
        wait_until(lambda: daemon.states() == {"sent": 2}, what="both sent")
        (to_billing,) = billing.messages()
        (to_main,) = main.messages()
        self.assertEqual(to_billing.sender, "Invoices@billing.example.com")  # domain lowered
        self.assertEqual(to_main.sender, "ops@example.com")
        self.assertEqual(to_main.header("From"), "Cron Daemon <ops@example.com>")
        shown = daemon.message(invoice)
        self.assertEqual(shown["relay"], "billing")
        self.assertEqual(shown["relay_address"], f"localhost[127.0.0.1]:{billing.port}")
        (line,) = self.wait_for_outcomes(daemon, invoice, 1)
        self.assertEqual(line["relay"], f"localhost[127.0.0.1]:{billing.port}")
        text = daemon.cli("queue", "show", invoice).stdout
        self.assertIn(f"relay: billing (localhost[127.0.0.1]:{billing.port})", text)
