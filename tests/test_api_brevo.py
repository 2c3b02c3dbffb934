"""[API:NAME] with provider = brevo: the fields of /v3/smtp/email, the rate-limit pause
from ``x-sib-ratelimit-reset``, and what Brevo cannot carry (an inline image)."""

from __future__ import annotations

import base64
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed

from smtpmailer.httpclient import Request, Response
from tests.fake_relay import settle
from tests.support import DeliveryCase

KEY = "xkeysib-0123456789abcdef-brevokey"


class FakeBrevo:
    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.next: list[tuple[int, dict[str, str], bytes]] = []
        self.senders = {"zoe@example.com": True, "old@example.com": False}
        self.dropped: list[dict[str, Any]] = []

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        if request.headers.get("api-key") != KEY:
            body = {"code": "unauthorized", "message": "Key not found"}
            return succeed(Response(401, {}, json.dumps(body).encode()))
        if request.method == "GET" and request.url.endswith("/v3/account"):
            plan = [{"type": "free", "creditsType": "sendLimit", "credits": 287}]
            body = {"email": "ops@example.com", "companyName": "Example", "plan": plan}
            return succeed(Response(200, {}, json.dumps(body).encode()))
        if request.method == "GET" and request.url.endswith("/v3/senders"):
            senders = [
                {"id": n, "name": "", "email": email, "active": active}
                for n, (email, active) in enumerate(self.senders.items())
            ]
            return succeed(Response(200, {}, json.dumps({"senders": senders}).encode()))
        if self.next:
            return succeed(Response(*self.next.pop(0)))
        if request.headers.get("X-Sib-Sandbox") == "drop":
            self.dropped.append(json.loads(request.body))  # checked, then dropped
            return succeed(Response(201, {}, b'{"messageId": "<sandbox@smtp-relay.mailin.fr>"}'))
        self.accepted.append(json.loads(request.body))
        body = {"messageId": f"<2026{len(self.accepted)}.1@smtp-relay.mailin.fr>"}
        return succeed(Response(201, {}, json.dumps(body).encode()))


MESSAGE = (
    b"From: Zoe <zoe@example.com>\r\nTo: Ann <ann@example.org>\r\nCc: carl@example.org\r\n"
    b"Reply-To: replies@example.com\r\nSubject: s\r\nX-Campaign: w7\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
    b"hello\r\n--b\r\nContent-Type: text/csv\r\nContent-Disposition: attachment;"
    b' filename="r.csv"\r\n\r\na,b\r\n--b--\r\n'
)


class BrevoTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.brevo = FakeBrevo()
        self.configure(
            f"[API:br]\nprovider = brevo\napi_key = {KEY}\npriority = 1\n"
            "[Relay:backup]\nhost = b.test\nport = 26\nsecurity = none\npriority = 2\n"
        )

    def enqueue_one(self, data: bytes = MESSAGE) -> str:
        return self.store.enqueue(
            "zoe@example.com",
            ["ann@example.org", "carl@example.org", "dan@example.net"],
            data,
            5,
            self.clock.seconds(),
            1000,
        )

    def test_every_field(self) -> None:
        message = self.enqueue_one()
        self.start(http_client=self.brevo)
        self.assertEqual(self.state(message), "sent")
        (sent,) = self.brevo.accepted
        self.assertEqual(sent["sender"], {"email": "zoe@example.com", "name": "Zoe"})
        self.assertEqual(sent["to"], [{"email": "ann@example.org", "name": "Ann"}])
        self.assertEqual(sent["cc"], [{"email": "carl@example.org"}])
        self.assertEqual(sent["bcc"], [{"email": "dan@example.net"}])
        self.assertEqual(sent["replyTo"], {"email": "replies@example.com"})
        self.assertEqual((sent["subject"], sent["textContent"]), ("s", "hello"))
        (attachment,) = sent["attachment"]
        self.assertEqual(attachment["name"], "r.csv")
        self.assertEqual(base64.b64decode(attachment["content"]), b"a,b")
        self.assertEqual(sent["headers"]["X-Campaign"], "w7")
        self.assertEqual(sent["headers"]["X-Mailin-custom"], f"smtpmailer_id:{message}")
        self.assertRegex(
            self.lines[0],
            r"relay=api:br .* status=sent \(HTTP 201 20261\.1@smtp-relay\.mailin\.fr\)$",
        )

    def test_rate_limited_it_pauses_and_the_backup_takes_the_mail(self) -> None:
        self.brevo.next = [
            (
                429,
                {"x-sib-ratelimit-reset": "90"},
                b'{"code":"too_many_requests","message":"Too many requests"}',
            )
        ]
        first = self.enqueue_one()
        self.start(http_client=self.brevo)
        self.assertEqual(self.state(first), "sent")
        self.assertEqual(len(self.relays["b.test"].messages), 1)
        self.clock.advance(91)
        second = self.enqueue_one()
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual(self.state(second), "sent")
        self.assertEqual(len(self.brevo.accepted), 1, "Brevo again after its reset")

    def test_an_inline_image_is_refused_saying_why(self) -> None:
        inline = MESSAGE.replace(
            b'Content-Type: text/csv\r\nContent-Disposition: attachment; filename="r.csv"',
            b"Content-Type: image/png\r\nContent-ID: <logo@example.com>",
        )
        message = self.enqueue_one(inline)
        self.start(http_client=self.brevo)
        info = self.store.show(message)
        self.assertEqual(info.state, "failed")
        self.assertIn("cannot show an image inline", info.recipients[0].last_error)
