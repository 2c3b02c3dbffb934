"""[API:NAME] with provider = mailjet: Send API v3.1's fields and its per-message errors,
against a Mailjet-shaped fake."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from twisted.internet.defer import Deferred, succeed

from smtpmailer.config import parse_config
from smtpmailer.httpclient import Request, Response
from smtpmailer.ini import ConfigError
from tests.fake_relay import settle
from tests.support import DeliveryCase
from tests.test_api_sendgrid import PNG, rich_message

KEY = "public0123456789:private0123456789"


class FakeMailjet:
    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.invalid: set[str] = set()
        self.senders = {"zoe@example.com": "Active", "new@example.com": "Inactive"}
        self.sandboxed: list[dict[str, Any]] = []

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        expected = "Basic " + base64.b64encode(KEY.encode()).decode()
        if request.headers.get("Authorization") != expected:
            body = {
                "ErrorIdentifier": "a1",
                "StatusCode": 401,
                "ErrorMessage": "API key authentication/authorization failure. You may be "
                "unauthorized to access the API or your API key may be expired.",
            }
            return succeed(Response(401, {}, json.dumps(body).encode()))
        if request.method == "GET" and "/v3/REST/sender" in request.url:
            asked = parse_qs(urlsplit(request.url).query).get("Email", [None])[0]
            data = [
                {"ID": n, "Email": email, "Status": status}
                for n, (email, status) in enumerate(self.senders.items())
                if asked in (None, email)
            ]
            body = {"Count": len(data), "Data": data, "Total": len(data)}
            return succeed(Response(200, {}, json.dumps(body).encode()))
        sandbox = json.loads(request.body).get("SandboxMode", False)
        (message,) = json.loads(request.body)["Messages"]
        bad = [i for i, to in enumerate(message["To"]) if to["Email"] in self.invalid]
        if bad:
            errors = [
                {
                    "ErrorCode": "mj-0013",
                    "StatusCode": 400,
                    "ErrorMessage": f'"{message["To"][i]["Email"]}" is an invalid email address.',
                    "ErrorRelatedTo": [f"To[{i}].Email"],
                }
                for i in bad
            ]
            body = {"Messages": [{"Status": "error", "Errors": errors}]}
            return succeed(Response(400, {}, json.dumps(body).encode()))
        (self.sandboxed if sandbox else self.accepted).append(message)
        to = [
            {"Email": t["Email"], "MessageUUID": "u", "MessageID": 576460752303423 + i}
            for i, t in enumerate(message["To"])
        ]
        body = {"Messages": [{"Status": "success", "CustomID": message["CustomID"], "To": to}]}
        return succeed(Response(200, {}, json.dumps(body).encode()))


class MailjetTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.mailjet = FakeMailjet()
        self.configure(f"[API:mj]\nprovider = mailjet\napi_key = {KEY}\n")

    def run_one(self) -> Any:
        message = self.store.enqueue(
            "zoe@example.com",
            ["ann@example.org", "bob@example.org", "carl@example.org", "dan@example.net"],
            rich_message(),
            5,
            self.clock.seconds(),
            1000,
        )
        self.start(http_client=self.mailjet)
        return self.store.show(message)

    def test_every_field(self) -> None:
        info = self.run_one()
        self.assertEqual(info.state, "sent")
        (sent,) = self.mailjet.accepted
        self.assertEqual(sent["From"], {"Email": "zoe@example.com", "Name": "Zoë Sender"})
        self.assertEqual(
            sent["To"],
            [{"Email": "ann@example.org", "Name": "Ann Example"}, {"Email": "bob@example.org"}],
        )
        self.assertEqual(sent["Cc"], [{"Email": "carl@example.org", "Name": "Carl"}])
        self.assertEqual(sent["Bcc"], [{"Email": "dan@example.net"}])
        self.assertEqual(sent["ReplyTo"], {"Email": "replies@example.com"})
        self.assertEqual(
            (sent["Subject"], sent["TextPart"]), ("Grüße — the report", "Hello in text.\n")
        )
        self.assertIn("cid:logo@example.com", sent["HTMLPart"])
        (attached,) = sent["Attachments"]
        self.assertEqual(
            (attached["Filename"], base64.b64decode(attached["Base64Content"])),
            ("report.csv", b"a,b\n1,2\n"),
        )
        (inlined,) = sent["InlinedAttachments"]
        self.assertEqual(
            (inlined["ContentID"], base64.b64decode(inlined["Base64Content"])),
            ("logo@example.com", PNG),
        )
        self.assertEqual(sent["Headers"], {"X-Campaign": "weekly-7"})
        self.assertEqual(sent["CustomID"], info.id)
        self.assertRegex(
            self.lines[0], r"relay=api:mj .* status=sent \(HTTP 200 576460752303423\)$"
        )

    def test_a_refused_address_fails_and_the_others_go_again_without_it(self) -> None:
        self.mailjet.invalid = {"bob@example.org"}
        info = self.run_one()
        self.assertEqual(info.state, "deferred")
        states = {r.address: (r.state, r.last_error) for r in info.recipients}
        self.assertEqual(
            states["bob@example.org"],
            ("failed", 'HTTP 400: "bob@example.org" is an invalid email address.'),
        )
        self.assertEqual(
            states["ann@example.org"],
            (
                "pending",
                'HTTP 400: "bob@example.org" is an invalid email address. (To[1].Email) '
                "(another recipient)",
            ),
        )
        self.assertEqual(self.mailjet.accepted, [])
        self.clock.advance(61)
        self.service.poller.wake()
        settle(self.clock)
        (sent,) = self.mailjet.accepted
        self.assertEqual([p["Email"] for p in sent["To"]], ["ann@example.org"])
        info = self.store.show(info.id)
        self.assertEqual(info.state, "failed", "sent to the others; bob failed for good")
        self.assertEqual([r.state for r in info.recipients], ["sent", "failed", "sent", "sent"])

    def test_the_key_needs_both_halves(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parse_config("[API:mj]\nprovider = mailjet\napi_key = onlyhalf\n", "/e/c.conf")
        self.assertIn("the key is PUBLIC:PRIVATE", str(caught.exception))
