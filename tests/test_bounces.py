"""Bounces: the DSN (RFC 3464) checked part by part, sent with MAIL FROM:<> to the sender of
a message whose recipient failed; none for mail from <>; no storm past max_per_hour; one
delay warning per message, driven by task.Clock."""

from __future__ import annotations

import email
import email.policy
import os
from typing import Any

import attrs
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmailer.bounce.dsn import Failed, build_dsn
from tests.fake_relay import settle
from tests.support import DeliveryCase

ORIGINAL_HEAD = (
    b"From: App <app@example.com>\r\nTo: good@example.org, bad@example.org\r\n"
    b"Subject: The report\r\nMessage-ID: <m1@example.com>"
)


def parse(data: bytes) -> Any:
    return email.message_from_bytes(data, policy=email.policy.default)


def report_parts(dsn: Any) -> tuple[Any, Any, Any]:
    human, status, headers = dsn.get_payload()
    return human, status, headers


class DSNContentTests(SynchronousTestCase):
    def test_every_part_as_rfc_3464_says(self) -> None:
        data = build_dsn(
            reporting_mta="mx.example.com",
            from_header="Mail Delivery System <MAILER-DAEMON@mx.example.com>",
            to="app@example.com",
            message_id="7JSCQ0000ABCDE",
            arrived=1_800_000_000.0,
            failed=[
                Failed("bad@example.org", "550 5.1.1 <bad@example.org>: no such user",
                       "smtp.example.com[192.0.2.1]:587", 1_800_000_060.0),
                Failed("old@example.org", "451 4.4.1 no answer; retries exhausted after 10",
                       None, 1_800_000_090.0),
            ],
            original_headers=ORIGINAL_HEAD,
            now=1_800_000_100.0,
        )  # fmt: skip
        self.assertTrue(data.isascii())
        dsn = parse(data)
        self.assertEqual(dsn.get_content_type(), "multipart/report")
        self.assertEqual(dsn.get_param("report-type"), "delivery-status")
        self.assertIn("MAILER-DAEMON", str(dsn["From"]))
        self.assertEqual(str(dsn["To"]), "app@example.com")
        self.assertEqual(str(dsn["Auto-Submitted"]), "auto-replied")
        human, status, headers = report_parts(dsn)
        self.assertEqual(human.get_content_type(), "text/plain")
        self.assertIn(
            "<bad@example.org>: 550 5.1.1 <bad@example.org>: no such user", human.get_content()
        )
        self.assertEqual(status.get_content_type(), "message/delivery-status")
        per_message, first, second = status.get_payload()
        self.assertEqual(per_message["Reporting-MTA"], "dns; mx.example.com")
        self.assertTrue(per_message["Arrival-Date"])
        self.assertEqual(first["Final-Recipient"], "rfc822; bad@example.org")
        self.assertEqual(first["Action"], "failed")
        self.assertEqual(first["Status"], "5.1.1")
        self.assertEqual(first["Remote-MTA"], "dns; smtp.example.com[192.0.2.1]:587")
        self.assertEqual(
            first["Diagnostic-Code"], "smtp; 550 5.1.1 <bad@example.org>: no such user"
        )
        self.assertTrue(first["Last-Attempt-Date"])
        self.assertEqual((second["Status"], second["Remote-MTA"]), ("4.4.1", None))
        self.assertEqual(headers.get_content_type(), "text/rfc822-headers")
        self.assertIn("Subject: The report", headers.get_content())
        self.assertIn("Message-ID: <m1@example.com>", headers.get_content())


class BounceDeliveryTests(DeliveryCase):
    queue_keys = ""

    def setUp(self) -> None:
        super().setUp()
        self.relay.rcpt_replies = {"bad@example.org": "550 5.1.1 <bad@example.org>: no such user"}

    def configure_bounces(self, bounce: str = "") -> None:
        self.configure(bounce=bounce)

    def send(self, sender: str = "app@example.com", *recipients: str) -> str:
        data = ORIGINAL_HEAD + b"\r\n\r\nthe body\r\n"
        return self.store.enqueue(
            sender,
            list(recipients) or ["good@example.org", "bad@example.org"],
            data,
            5,
            self.clock.seconds(),
            10_000,
        )

    def dsns(self) -> list[tuple[str, list[str], Any]]:
        """What the relay got that is a delivery status notification."""
        parsed = [(sender, list(rcpts), parse(data)) for sender, rcpts, data in self.relay.messages]
        return [one for one in parsed if one[2].get_content_type() == "multipart/report"]

    def test_a_failed_recipient_is_bounced_to_the_sender_with_the_null_sender(self) -> None:
        self.configure_bounces()
        message_id = self.send()
        self.start()
        settle(self.clock)
        self.assertEqual(self.state(message_id), "failed")
        ((sender, rcpts, dsn),) = self.dsns()
        self.assertEqual((sender, rcpts), ("", ["app@example.com"]))
        _, status, headers = report_parts(dsn)
        (_, only) = status.get_payload()
        self.assertEqual(only["Final-Recipient"], "rfc822; bad@example.org")
        self.assertEqual(only["Status"], "5.1.1")
        self.assertIn("a.test", only["Remote-MTA"])
        self.assertIn("Subject: The report", headers.get_content())
        self.assertEqual(
            self.service.metrics.registry.get_sample_value(
                "smtpmailer_bounces_total", {"result": "sent"}
            ),
            1,
        )

    def test_no_dsn_for_mail_whose_sender_is_null(self) -> None:
        self.configure_bounces()
        message_id = self.send("")
        self.start()
        settle(self.clock)
        self.assertEqual(self.state(message_id), "failed")
        self.assertEqual(self.dsns(), [])
        self.assertEqual(self.store.counts()["accepted"], 1, "nothing more was queued")

    def test_no_storm_past_max_per_hour(self) -> None:
        self.configure_bounces("max_per_hour = 5\n")
        for _ in range(100):
            self.send("app@example.com", "bad@example.org")
        self.start()
        settle(self.clock)
        self.assertEqual(len(self.dsns()), 5)
        registry = self.service.metrics.registry
        self.assertEqual(
            registry.get_sample_value("smtpmailer_bounces_total", {"result": "suppressed"}), 95
        )
        self.clock.advance(3601)
        self.send("app@example.com", "bad@example.org")
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual(len(self.dsns()), 6, "an hour later the sender hears again")

    def test_the_per_sender_count_forgets_quiet_senders(self) -> None:
        from smtpmailer.bounce import notifier

        self.configure_bounces("max_per_hour = 1\n")
        self.patch(notifier, "SENDERS_KEPT", 3)
        self.start()
        bouncer = self.service.bouncer
        for n in range(5):
            self.assertTrue(bouncer._allowed(f"s{n}@example.com"))
        self.assertFalse(bouncer._allowed("s4@example.com"), "still counted within the hour")
        self.clock.advance(3601)
        self.assertTrue(bouncer._allowed("new@example.com"))
        self.assertEqual(list(bouncer._sent), ["new@example.com"], "the quiet ones forgotten")

    def test_off(self) -> None:
        self.configure_bounces("enabled = false\n")
        self.send()
        self.start()
        settle(self.clock)
        self.assertEqual(self.dsns(), [])

    def test_one_delay_warning_per_message(self) -> None:
        self.configure_bounces("delay_warning = 30m\n")
        self.config = attrs.evolve(
            self.config, queue=attrs.evolve(self.config.queue, max_retries=50)
        )
        self.relay.rcpt_replies = {"slow@example.org": "451 4.7.1 greylisted"}
        message_id = self.send("app@example.com", "slow@example.org")
        self.start()
        for _ in range(8):  # retries at 1, 2, 4, 8, 10, 10 ... minutes: past the half hour
            self.clock.advance(600)
            self.service.poller.wake()
            settle(self.clock)
        self.assertEqual(self.state(message_id), "deferred")
        ((sender, rcpts, dsn),) = self.dsns()
        self.assertEqual((sender, rcpts), ("", ["app@example.com"]))
        self.assertIn("Delayed Mail", str(dsn["Subject"]))
        _, status, _ = report_parts(dsn)
        (_, only) = status.get_payload()
        self.assertEqual((only["Action"], only["Status"]), ("delayed", "4.7.1"))


def listening_daemon(test: TestCase, refusal: str) -> tuple[Any, Any, int]:
    """Real twistd with its SMTP listener, relaying to aiosmtpd, which answers ``refusal``
    for bad@example.org; (daemon, relay, the listener's port)."""
    from tests.daemon import Daemon, started_peer, temporary_home
    from tests.test_submission import submission_port

    home = temporary_home(test)
    peer = started_peer(test)
    peer.set(reject_rcpt={"bad@example.org": refusal})
    daemon = Daemon(
        os.path.join(home, "d"),
        f"[Relay]\nhost = 127.0.0.1\nport = {peer.port}\nsecurity = none\n"
        "[Submission]\nlisten = tcp:0:interface=127.0.0.1\n",
    )
    test.addCleanup(daemon.stop)
    daemon.start()
    return daemon, peer, submission_port(daemon)


class BounceEndToEndTests(TestCase):
    """Real twistd, its SMTP listener, aiosmtpd as the relay answering 550 for one
    recipient: the DSN arrives at the relay with MAIL FROM:<>; a message submitted with
    MAIL FROM:<> that fails makes none."""

    timeout = 120

    def test_a_dsn_for_a_550_and_none_for_a_null_sender(self) -> None:
        import smtplib

        from tests.daemon import wait_until

        daemon, peer, port = listening_daemon(self, "550 5.1.1 <bad@example.org>: no such user")
        body = (
            "From: App <app@example.com>\r\nTo: good@example.org, bad@example.org\r\n"
            "Subject: The report\r\n\r\nhello\r\n"
        )
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.sendmail("app@example.com", ["good@example.org", "bad@example.org"], body)
            client.sendmail("", ["bad@example.org"], body.replace("The report", "A bounce"))
        null = ("", "<>")  # aiosmtpd keeps MAIL FROM:<> as "<>"
        wait_until(
            lambda: any(m.sender in null for m in peer.messages()), what="the DSN at the relay"
        )
        wait_until(lambda: "failed; no DSN: its sender is <>" in daemon.log(), what="the <>")
        dsns = [m for m in peer.messages() if m.sender in null]
        self.assertEqual(len(dsns), 1, "one DSN, none for the message from <>")
        (dsn,) = dsns
        self.assertEqual(dsn.recipients, ["app@example.com"])
        report = parse(dsn.data)
        self.assertEqual(report.get_param("report-type"), "delivery-status")
        _, status, headers = report_parts(report)
        (_, only) = status.get_payload()
        self.assertEqual(
            (only["Final-Recipient"], only["Action"], only["Status"]),
            ("rfc822; bad@example.org", "failed", "5.1.1"),
        )
        self.assertIn("127.0.0.1", only["Remote-MTA"])
        self.assertIn("no such user", only["Diagnostic-Code"])
        self.assertIn("Subject: The report", headers.get_content())
        self.assertNotIn("Traceback", daemon.log())


class DSNOptionsEndToEndTests(TestCase):
    """RFC 3461 through the real SMTP listener (and its worker process): DSN announced,
    RET/ENVID/NOTIFY/ORCPT taken and kept with the message, malformed ones refused with
    501, and our DSNs honouring them: NOTIFY=NEVER gets none, NOTIFY=SUCCESS gets a
    relayed report, RET=FULL returns the whole message, ENVID and ORCPT are in the report."""

    timeout = 120

    def test_notify_ret_envid_orcpt(self) -> None:
        import json
        import smtplib

        from tests.daemon import wait_until

        daemon, peer, port = listening_daemon(self, "550 5.1.1 no such user")
        body = "From: app@example.com\r\nSubject: {}\r\n\r\nthe body\r\n"
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo()
            self.assertTrue(client.has_extn("dsn"))
            # NOTIFY=NEVER: no DSN for this failure
            client.sendmail(
                "quiet@example.com", ["bad@example.org"], body.format("never"),
                rcpt_options=["NOTIFY=NEVER"],
            )  # fmt: skip
            # NOTIFY=SUCCESS: a relayed report for good@; RET=FULL, ENVID, ORCPT on a failure
            client.sendmail(
                "loud@example.com", ["good@example.org"], body.format("success"),
                mail_options=["ENVID=order+2B42"],
                rcpt_options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Good@example.org"],
            )  # fmt: skip
            client.sendmail(
                "full@example.com", ["bad@example.org"], body.format("full"),
                mail_options=["RET=FULL", "ENVID=E-7"],
                rcpt_options=["ORCPT=rfc822;Bad@example.org"],
            )  # fmt: skip
            code, said = client.docmd("MAIL FROM:<x@example.com> RET=SOME")
            self.assertEqual((code, said), (501, b"5.5.4 RET is FULL or HDRS"))
            client.rset()
            client.docmd("MAIL FROM:<x@example.com>")
            code, said = client.docmd("RCPT TO:<y@example.org> NOTIFY=NEVER,SUCCESS")
            self.assertEqual(code, 501)
        null = ("", "<>")
        wait_until(
            lambda: len([m for m in peer.messages() if m.sender in null]) >= 2, what="the DSNs"
        )
        wait_until(lambda: "id=" in daemon.log() and "NOTIFY asked for none" in daemon.log(),
                   what="NEVER honoured")  # fmt: skip
        dsns = {m.recipients[0]: parse(m.data) for m in peer.messages() if m.sender in null}
        self.assertEqual(set(dsns), {"loud@example.com", "full@example.com"})
        relayed = dsns["loud@example.com"]
        _, status, _ = report_parts(relayed)
        per_message, only = status.get_payload()
        self.assertEqual(per_message["Original-Envelope-Id"], "order+2B42")
        self.assertEqual(
            (only["Action"], only["Status"], only["Original-Recipient"]),
            ("relayed", "2.0.0", "rfc822;Good@example.org"),
        )
        _, status, returned = report_parts(dsns["full@example.com"])
        per_message, only = status.get_payload()
        self.assertEqual((per_message["Original-Envelope-Id"], only["Action"]), ("E-7", "failed"))
        self.assertEqual(only["Original-Recipient"], "rfc822;Bad@example.org")
        self.assertEqual(returned.get_content_type(), "message/rfc822")
        self.assertIn("the body", returned.get_payload()[0].get_content())
        stored = daemon.db().execute("SELECT meta FROM messages WHERE sender = 'full@example.com'")
        self.assertEqual(
            json.loads(stored.fetchone()[0])["dsn"],
            {"ret": "FULL", "envid": "E-7", "orcpt": {"bad@example.org": "rfc822;Bad@example.org"}},
        )
        self.assertNotIn("Traceback", daemon.log())

    def test_sendmail_dsn_options(self) -> None:
        """sendmail's -N, -R and -V take the same way: -N never gets no DSN for a failure;
        -N failure -R full -V gets one with the envelope id and the whole message."""
        import subprocess
        import sys

        from tests.daemon import environment, wait_until
        from tests.test_sendmail import INSTALLED_SCRIPT

        daemon, peer, _ = listening_daemon(self, "550 5.1.1 no such user")
        env = environment()
        env["SMTPMAILER_CONFIG"] = daemon.config_path
        for sender, options in (
            ("quiet@example.com", ["-N", "never"]),
            ("full@example.com", ["-N", "failure", "-R", "full", "-V", "order 7"]),
        ):
            result = subprocess.run(
                [sys.executable, "-IS", "-c", INSTALLED_SCRIPT, "-f", sender, *options]
                + ["bad@example.org"],
                input=b"From: app@example.com\nSubject: s\n\nthe body\n",
                capture_output=True,
                env=env,
                timeout=60,
            )
            self.assertEqual((result.returncode, result.stderr), (0, b""))
        null = ("", "<>")
        wait_until(lambda: any(m.sender in null for m in peer.messages()), what="the DSN")
        wait_until(lambda: "NOTIFY asked for none" in daemon.log(), what="NEVER honoured")
        (dsn,) = [m for m in peer.messages() if m.sender in null]
        self.assertEqual(dsn.recipients, ["full@example.com"])
        _, status, returned = report_parts(parse(dsn.data))
        per_message, only = status.get_payload()
        self.assertEqual(
            (per_message["Original-Envelope-Id"], only["Action"]), ("order+207", "failed")
        )
        self.assertIn("the body", returned.get_payload()[0].get_content())
