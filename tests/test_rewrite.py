"""[Rewrite]: cron-style senders made real addresses at intake, envelope and From: header,
by every way in."""

from __future__ import annotations

import io
import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.config import flatten, parse_config
from smtpmailer.ini import ConfigError
from smtpmailer.intake.rewrite import rewrite_from_header, rewritten
from smtpmailer.intake.sendmail.command import run
from tests.support import DeliveryCase

RULES = (
    ("root", "ops@example.com"),
    ("*@localhost", "noreply@example.com"),
    ("backup@host.lan", "backups@example.com"),
    ("*@host.lan", "hosts@example.com"),
)


class RuleTests(SynchronousTestCase):
    def test_patterns(self) -> None:
        cases = {
            "root@web1.example.net": "ops@example.com",  # local part only: any domain
            "ROOT@Web1": "ops@example.com",  # case does not matter
            "cron@localhost": "noreply@example.com",
            "backup@host.lan": "backups@example.com",  # the first line that matches wins
            "www-data@host.lan": "hosts@example.com",
            "app@example.com": None,
            "": None,  # the null sender is never rewritten
        }
        for address, expected in cases.items():
            self.assertEqual(rewritten(RULES, address), expected, address)

    def test_the_from_header_keeps_its_display_name(self) -> None:
        data = (
            b"To: a@example.org\r\nFrom: =?utf-8?q?Cron_D=C3=A6mon?=\r\n <root@web1>\r\n"
            b"Subject: From: root\r\n\r\nFrom: root in the body\r\n"
        )
        out = rewrite_from_header(RULES, data)
        self.assertEqual(
            out,
            b"To: a@example.org\r\nFrom: =?utf-8?q?Cron_D=C3=A6mon?= <ops@example.com>\r\n"
            b"Subject: From: root\r\n\r\nFrom: root in the body\r\n",
        )
        unchanged = b"From: App <app@example.com>\r\n\r\nx\r\n"
        self.assertIs(rewrite_from_header(RULES, unchanged), unchanged)
        several = b"From: root@a, root@b\r\n\r\nx\r\n"
        self.assertIs(rewrite_from_header(RULES, several), several)

    def test_recipients(self) -> None:
        """recipient_map_file: cron's mail to root (root@THIS-HOST) goes to a mailbox;
        two recipients that become one are one; DSN options follow their recipient; the
        headers keep what was written."""
        from smtpmailer.config import RewriteConfig
        from smtpmailer.intake.rewrite import apply
        from smtpmailer.message import Envelope

        rules = RewriteConfig(
            None,
            True,
            None,
            recipient_rules=(("root", "admin@example.com"), ("*@localhost", "admin@example.com")),
        )
        data = b"To: root\r\n\r\nx\r\n"
        meta = '{"dsn": {"notify": {"root@web1.lan": "NEVER", "b@example.org": "SUCCESS"}}}'
        envelope = Envelope(
            "cron@example.com", ("root@web1.lan", "b@example.org", "ops@localhost"), data, meta
        )
        out = apply(rules, envelope)
        self.assertEqual(out.recipients, ("admin@example.com", "b@example.org"))
        self.assertEqual(out.sender, "cron@example.com")
        self.assertIs(out.data, data)
        self.assertIn('"admin@example.com": "NEVER"', out.meta)
        self.assertIn('"b@example.org": "SUCCESS"', out.meta)
        untouched = Envelope("a@example.com", ("b@example.org",), data)
        self.assertIs(apply(rules, untouched), untouched)

    def map_path(self) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return os.path.join(directory, "rewrite")

    def test_a_broken_map_is_a_config_error_at_its_line(self) -> None:
        path = self.map_path()
        for text, reason in (
            ("root ops@example.com\n\n# comment\nroot\n", f"{path}:4: expected 'PATTERN ADDRESS'"),
            ("root not-an-address\n", f"{path}:1: rewritten address 'not-an-address'"),
        ):
            with open(path, "w") as handle:
                handle.write(text)
            with self.assertRaises(ConfigError) as caught:
                parse_config(f"[Relay]\nhost = h\n[Rewrite]\nmap_file = {path}\n", "c.conf")
            self.assertIn(reason, str(caught.exception))

    def test_an_edited_map_is_a_change_for_reload(self) -> None:
        path = self.map_path()
        text = f"[Relay]\nhost = h\n[Rewrite]\nmap_file = {path}\n"
        with open(path, "w") as handle:
            handle.write("root ops@example.com\n")
        before = flatten(parse_config(text, "c.conf"))
        with open(path, "w") as handle:
            handle.write("root admin@example.com\n")
        after = flatten(parse_config(text, "c.conf"))
        self.assertNotEqual(before["[Rewrite] rules"], after["[Rewrite] rules"])


class WaysInTests(DeliveryCase):
    """The rules hold for sendmail (writing the queue, and through the daemon's socket),
    SMTP and HTTP alike: they run inside the shared checks."""

    def setUp(self) -> None:
        super().setUp()
        self.map = os.path.join(self.dir, "rewrite")
        with open(self.map, "w") as handle:
            handle.write("root ops@example.com\n*@localhost noreply@example.com\n")
        recipients = os.path.join(self.dir, "recipients")
        with open(recipients, "w") as handle:
            handle.write("root admin@example.org  # cron's mail\n")
        self.configure()
        self.config_path = os.path.join(self.dir, "c.conf")
        with open(self.config_path, "w") as handle:
            handle.write(
                f"[Daemon]\nstate_dir = {self.dir}\n[Relay]\nhost = a.test\nsecurity = none\n"
                f"[Rewrite]\nmap_file = {self.map}\nrecipient_map_file = {recipients}\n"
            )
        self.config = parse_config(open(self.config_path).read(), self.config_path)
        self.config = attrs.evolve(
            self.config, status=attrs.evolve(self.config.status, token="t" * 20)
        )

    def test_cron_mail_through_sendmail_t(self) -> None:
        cron = b"From: root (Cron Daemon)\nTo: root\nSubject: backup\n\nok\n"
        err = io.StringIO()
        code = run(["--config", self.config_path, "-t"], io.BytesIO(cron), io.StringIO(), err)
        self.assertEqual((code, err.getvalue()), (0, ""))
        (info,) = list(self.store.messages())
        self.assertEqual(info.sender, "ops@example.com")  # root@<this host>, rewritten
        self.assertEqual([r.address for r in info.recipients], ["admin@example.org"])
        head = self.store.body(info.id).split(b"\r\n\r\n")[0]
        self.assertIn(b"\r\nFrom: Cron Daemon <ops@example.com>\r\n", b"\r\n" + head + b"\r\n")

    def test_the_daemons_commit_for_smtp_http_and_its_socket(self) -> None:
        """SMTP, HTTP and sendmail's hand-over all commit through Dispatcher.submit."""
        from smtpmailer.message import Envelope

        service = self.start()
        service.poller.paused = True
        data = b"From: <nightly@localhost>\r\nSubject: s\r\n\r\nx\r\n"
        message_id = self.successResultOf(
            service.submit(Envelope("nightly@localhost", ("a@example.org",), data))
        )
        info = self.store.show(message_id)
        self.assertEqual(info.sender, "noreply@example.com")
        self.assertTrue(self.store.body(message_id).startswith(b"From: noreply@example.com\r\n"))
