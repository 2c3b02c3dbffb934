"""[API:NAME] with provider = postmark: every field as Postmark's /email takes it, and its
answers (422 with an ErrorCode, an inactive recipient) against a Postmark-shaped fake."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed

from smtpmailer.httpclient import Request, Response
from tests.support import DeliveryCase
from tests.test_api_sendgrid import PNG, rich_message

TOKEN = "00000000-aaaa-bbbb-cccc-postmarktoken"
WHY_INACTIVE = (
    "Inactive recipients are ones that have generated a hard bounce, a spam complaint, "
    "or a manual suppression."
)


class FakePostmark:
    """POST /email as Postmark documents it: the server token header, 200 with MessageID,
    422 with ErrorCode and Message."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.inactive: set[str] = set()
        self._ids = itertools.count(1)

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        if request.headers.get("X-Postmark-Server-Token") != TOKEN:
            body = {
                "ErrorCode": 10,
                "Message": "The Server Token you provided in the X-Postmark-Server-Token "
                "request header was invalid.",
            }
            return succeed(Response(401, {}, json.dumps(body).encode()))
        if request.method == "GET" and request.url.endswith("/server"):
            server = {"ID": 1, "Name": "Production", "Color": "blue", "DeliveryType": "Live"}
            return succeed(Response(200, {}, json.dumps(server).encode()))
        sent = json.loads(request.body)
        sent["_path"] = request.url.split("://", 1)[-1].partition("/")[2]
        to = sent.get("To", "")
        everyone = [
            person.rsplit("<", 1)[-1].strip(" >").lower()
            for key in ("To", "Cc", "Bcc")
            for person in sent.get(key, "").split(",")
            if person.strip()
        ]
        inactive = [address for address in everyone if address in self.inactive]
        if inactive and len(inactive) == len(everyone):
            body = {
                "ErrorCode": 406,
                "Message": "You tried to send to recipient(s) that have been marked as inactive. "
                f"Found inactive addresses: {', '.join(inactive)}. {WHY_INACTIVE}",
            }
            return succeed(Response(422, {}, json.dumps(body).encode()))
        self.accepted.append(sent)
        words = "OK"
        if inactive:
            words = (
                "Message OK, but will not deliver to these inactive addresses: "
                f"{', '.join(inactive)}. {WHY_INACTIVE}"
            )
        body = {"To": to, "MessageID": f"pm-{next(self._ids)}", "ErrorCode": 0, "Message": words}
        return succeed(Response(200, {}, json.dumps(body).encode()))


class PostmarkTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.postmark = FakePostmark()
        self.configure(f"[API:pm]\nprovider = postmark\napi_key = {TOKEN}\n")

    def run_one(self) -> Any:
        message = self.store.enqueue(
            "zoe@example.com",
            ["ann@example.org", "bob@example.org", "carl@example.org", "dan@example.net"],
            rich_message(),
            5,
            self.clock.seconds(),
            1000,
        )
        self.start(http_client=self.postmark)
        return self.store.show(message)

    def test_every_field(self) -> None:
        info = self.run_one()
        self.assertEqual(info.state, "sent")
        (sent,) = self.postmark.accepted
        self.assertEqual(sent["From"], "Zoë Sender <zoe@example.com>")
        self.assertEqual(sent["To"], "Ann Example <ann@example.org>, bob@example.org")
        self.assertEqual(sent["Cc"], "Carl <carl@example.org>")
        self.assertEqual(sent["Bcc"], "dan@example.net")
        self.assertEqual(sent["ReplyTo"], "replies@example.com")
        self.assertEqual(sent["Subject"], "Grüße — the report")
        self.assertEqual(sent["TextBody"], "Hello in text.\n")
        self.assertEqual(sent["HtmlBody"], '<p>Hello <img src="cid:logo@example.com"></p>\n')
        by_name = {a["Name"]: a for a in sent["Attachments"]}
        self.assertEqual(base64.b64decode(by_name["report.csv"]["Content"]), b"a,b\n1,2\n")
        self.assertNotIn("ContentID", by_name["report.csv"])
        self.assertEqual(by_name["logo@example.com"]["ContentID"], "cid:logo@example.com")
        self.assertEqual(base64.b64decode(by_name["logo@example.com"]["Content"]), PNG)
        self.assertEqual(sent["Headers"], [{"Name": "X-Campaign", "Value": "weekly-7"}])
        self.assertEqual(sent["Metadata"], {"smtpmailer_id": info.id})
        self.assertRegex(self.lines[0], r"relay=api:pm .* status=sent \(HTTP 200 pm-1\)$")

    def test_an_inactive_recipient_fails_and_the_others_are_sent(self) -> None:
        self.postmark.inactive = {"ann@example.org"}
        info = self.run_one()
        self.assertEqual(len(self.postmark.accepted), 1, "Postmark sent it to the others")
        self.assertEqual(info.state, "failed", "one recipient failed for good")
        states = {r.address: (r.state, r.last_error) for r in info.recipients}
        self.assertEqual(
            states["ann@example.org"],
            (
                "failed",
                "HTTP 200: Postmark marked this recipient inactive (hard bounce, spam "
                "complaint or suppression)",
            ),
        )
        self.assertEqual(
            {a: s for a, (s, _) in states.items() if a != "ann@example.org"},
            {"bob@example.org": "sent", "carl@example.org": "sent", "dan@example.net": "sent"},
        )

    def test_every_recipient_inactive_fails_each_with_postmarks_406(self) -> None:
        self.postmark.inactive = {
            "ann@example.org",
            "bob@example.org",
            "carl@example.org",
            "dan@example.net",
        }
        info = self.run_one()
        self.assertEqual(self.postmark.accepted, [])
        self.assertEqual(info.state, "failed")
        self.assertEqual({r.state for r in info.recipients}, {"failed"})
        self.assertTrue(info.recipients[0].last_error.startswith("HTTP 422: Postmark marked"))
