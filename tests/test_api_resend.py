"""[API:NAME] with provider = resend: the fields Resend's /emails takes, the queue id as the
Idempotency-Key (a retry after a lost answer is not sent twice), and its errors."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed

from smtpmailer.httpclient import Request, Response
from tests.support import DeliveryCase
from tests.test_api_sendgrid import PNG, rich_message

KEY = "re_123456789_abcdefghijklmnop"


class FakeResend:
    """POST /emails as Resend documents it, with idempotency keys honoured."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.by_key: dict[str, str] = {}
        self.lose_answer = 0  # answers to lose after doing the work (a dropped connection)
        self._ids = itertools.count(1)
        self.domains = {"example.com": "verified", "example.net": "pending"}  # GET /domains
        self.sending_only = False  # a key with sending access only

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        from smtpmailer.httpclient import HTTPFailure

        if request.headers.get("Authorization") != f"Bearer {KEY}":
            body = {"statusCode": 401, "name": "missing_api_key", "message": "Missing API key"}
            return succeed(Response(401, {}, json.dumps(body).encode()))
        if request.method == "GET" and request.url.endswith("/domains"):
            if self.sending_only:
                body = {
                    "statusCode": 401,
                    "name": "restricted_api_key",
                    "message": "This API key is restricted to only send emails",
                }
                return succeed(Response(401, {}, json.dumps(body).encode()))
            data = [
                {"id": f"d-{n}", "name": name, "status": status, "region": "us-east-1"}
                for n, (name, status) in enumerate(self.domains.items())
            ]
            return succeed(Response(200, {}, json.dumps({"data": data}).encode()))
        key = request.headers.get("Idempotency-Key", "")
        if key not in self.by_key:
            sent = json.loads(request.body)
            self.accepted.append(sent)
            self.by_key[key] = f"re-{next(self._ids)}"
        if self.lose_answer:
            self.lose_answer -= 1
            failed: Deferred[Response] = Deferred()
            failed.errback(HTTPFailure("unreachable", "the connection closed before an answer"))
            return failed
        return succeed(Response(200, {}, json.dumps({"id": self.by_key[key]}).encode()))


class ResendTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.resend = FakeResend()
        self.configure(f"[API:rs]\nprovider = resend\napi_key = {KEY}\n")

    def enqueue_rich(self) -> str:
        return self.store.enqueue(
            "zoe@example.com",
            ["ann@example.org", "bob@example.org", "carl@example.org", "dan@example.net"],
            rich_message(),
            5,
            self.clock.seconds(),
            1000,
        )

    def test_every_field(self) -> None:
        message = self.enqueue_rich()
        self.start(http_client=self.resend)
        self.assertEqual(self.state(message), "sent")
        (sent,) = self.resend.accepted
        self.assertEqual(sent["from"], "Zoë Sender <zoe@example.com>")
        self.assertEqual(sent["to"], ["Ann Example <ann@example.org>", "bob@example.org"])
        self.assertEqual(
            (sent["cc"], sent["bcc"]), (["Carl <carl@example.org>"], ["dan@example.net"])
        )
        self.assertEqual(sent["reply_to"], "replies@example.com")
        self.assertEqual(sent["subject"], "Grüße — the report")
        self.assertEqual((sent["text"], sent["html"][:9]), ("Hello in text.\n", "<p>Hello "))
        by_name = {a["filename"]: a for a in sent["attachments"]}
        self.assertEqual(base64.b64decode(by_name["report.csv"]["content"]), b"a,b\n1,2\n")
        self.assertEqual(by_name["logo@example.com"]["content_id"], "logo@example.com")
        self.assertEqual(base64.b64decode(by_name["logo@example.com"]["content"]), PNG)
        self.assertEqual(sent["headers"], {"X-Campaign": "weekly-7"})
        self.assertEqual(sent["tags"], [{"name": "smtpmailer_id", "value": message}])

    def test_a_lost_answer_is_retried_without_a_second_send(self) -> None:
        self.resend.lose_answer = 1
        message = self.enqueue_rich()
        self.start(http_client=self.resend)
        self.assertEqual(self.state(message), "deferred")  # no answer: as after a 421
        self.clock.advance(61)
        from tests.fake_relay import settle

        settle(self.clock)
        self.assertEqual(self.state(message), "sent")
        self.assertEqual(len(self.resend.accepted), 1, "the Idempotency-Key kept it to one")
