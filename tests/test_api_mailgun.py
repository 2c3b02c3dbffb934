"""[API:NAME] with provider = mailgun: the stored bytes sent as they are, to the envelope's
recipients, with the queue id; Mailgun's answers classified."""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.config import parse_config
from smtpmailer.delivery.api import mailgun
from smtpmailer.ini import ConfigError
from smtpmailer.queue import Lease
from tests.fake_mailgun import KEY, FakeMailgun
from tests.support import DeliveryCase

STORED = (
    b"From: Zo\xc3\xab <zoe@example.com>\r\nTo: ann@example.org\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n\r\nbody with a trailing space \r\n.leading dot\r\n"
)


def relay(extra: str = "") -> Any:
    text = f"[API:mg]\nprovider = mailgun\napi_key = {KEY}\ndomain = mg.example.com\n{extra}"
    return parse_config(text, "/etc/smtpmailer/smtpmailer.conf").relays[0]


class MailgunRequestTests(SynchronousTestCase):
    def test_the_stored_bytes_to_the_envelope_recipients(self) -> None:
        lease = Lease(
            "7JSCQ0000ABCDE",
            "t",
            "zoe@example.com",
            ("ann@example.org", "hidden@example.net"),
            STORED,
            5,
            0,
            100.0,
        )
        request = mailgun.build(lease, relay())
        self.assertEqual(request.url, "https://api.mailgun.net/v3/mg.example.com/messages.mime")
        self.assertEqual(
            request.headers["Authorization"],
            "Basic " + base64.b64encode(f"api:{KEY}".encode()).decode(),
        )
        fields = FakeMailgun.form(request)
        self.assertEqual(fields["message"], [STORED], "byte for byte")
        self.assertEqual(fields["to"], ["ann@example.org", "hidden@example.net"], "bcc included")
        self.assertEqual(fields["v:smtpmailer_id"], [lease.id])

    def test_the_eu_region(self) -> None:
        self.assertEqual(relay("region = eu\n").endpoint, "https://api.eu.mailgun.net")

    def test_domain_is_needed(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config(f"[API:mg]\nprovider = mailgun\napi_key = {KEY}\n", "/e/c.conf")
        self.assertIn("with provider = mailgun needs domain", str(caught.exception))


class MailgunDeliveryTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.mailgun = FakeMailgun()
        self.configure(
            "[API:mg]\nprovider = mailgun\napi_key_env = MG_TEST_KEY\ndomain = mg.example.com\n"
        )

    def configure(self, relays: str | None = None, queue: str = "") -> None:
        import os

        os.environ["MG_TEST_KEY"] = self.mailgun.key
        self.addCleanup(os.environ.pop, "MG_TEST_KEY", None)
        super().configure(relays, queue)

    def run_one(self) -> Any:
        message = self.store.enqueue(
            "zoe@example.com", ["ann@example.org"], STORED, 5, self.clock.seconds(), 1000
        )
        self.start(http_client=self.mailgun)
        return self.store.show(message)

    def test_sent(self) -> None:
        info = self.run_one()
        self.assertEqual(info.state, "sent")
        self.assertRegex(
            self.lines[0], r"relay=api:mg .* status=sent \(HTTP 200 20261\.1@mg\.example\.com\)$"
        )
        self.assertEqual(self.mailgun.accepted[0]["message"], [STORED])

    def test_a_bad_key_defers(self) -> None:
        self.mailgun.key = "key-other"
        info = self.run_one()
        self.assertEqual(info.state, "deferred")
        self.assertIn("HTTP 401: Forbidden (check the API key)", info.last_error)
        health: dict[str, Any] = self.successResultOf(
            Deferred.fromCoroutine(self.service.status.health())
        )
        self.assertTrue(any("relay api:mg refuses our credentials" in r for r in health["reasons"]))

    def test_refused_with_mailguns_words(self) -> None:
        self.mailgun.next = [(400, {}, b'{"message": "from parameter is not a valid address"}')]
        info = self.run_one()
        self.assertEqual(info.state, "failed")
        self.assertEqual(
            info.recipients[0].last_error, "HTTP 400: from parameter is not a valid address"
        )
