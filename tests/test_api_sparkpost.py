"""[API:NAME] with provider = sparkpost: the stored message as email_rfc822, to the
envelope's recipients, against a SparkPost-shaped fake (its auth header, answers and errors)."""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed

from smtpmailer.httpclient import Request, Response
from tests.support import DeliveryCase

KEY = "a1b2c3d4e5f6sparkpostkey"
STORED = (
    "From: Zoë <zoe@example.com>\r\nTo: ann@example.org\r\nSubject: s\r\n"
    "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nGrüße\r\n"
).encode()


class FakeSparkPost:
    """POST /api/v1/transmissions as SparkPost documents it."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.next: list[tuple[int, bytes]] = []
        self._ids = itertools.count(7000)
        self.domains = {"example.com": True, "example.org": False}  # ownership verified

    def sending_domains(self, rest: str) -> Response:
        def status(verified: bool) -> dict[str, Any]:
            dkim = "valid" if verified else "unverified"
            return {"ownership_verified": verified, "dkim_status": dkim, "spf_status": dkim}

        if not rest:
            listed = [{"domain": d, "status": status(v)} for d, v in self.domains.items()]
            return Response(200, {}, json.dumps({"results": listed}).encode())
        domain = rest.strip("/")
        if domain not in self.domains:
            error = {
                "message": "resource not found",
                "code": "1600",
                "description": f"Sending domain '{domain}' does not exist",
            }
            return Response(404, {}, json.dumps({"errors": [error]}).encode())
        results = {"status": status(self.domains[domain])}
        return Response(200, {}, json.dumps({"results": results}).encode())

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        if request.headers.get("Authorization") != KEY:
            body = b'{"errors":[{"message":"Unauthorized."}]}'
            return succeed(Response(401, {}, body))
        if request.method == "GET" and "/api/v1/sending-domains" in request.url:
            return succeed(self.sending_domains(request.url.partition("/sending-domains")[2]))
        if not request.url.endswith("/api/v1/transmissions"):
            return succeed(Response(404, {}, b'{"errors":[{"message":"Not found"}]}'))
        if self.next:
            status, body = self.next.pop(0)
            return succeed(Response(status, {}, body))
        sent = json.loads(request.body)
        self.accepted.append(sent)
        results = {
            "id": str(next(self._ids)),
            "total_accepted_recipients": len(sent["recipients"]),
            "total_rejected_recipients": 0,
        }
        return succeed(Response(200, {}, json.dumps({"results": results}).encode()))


class SparkPostTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.sparkpost = FakeSparkPost()
        self.configure(f"[API:sp]\nprovider = sparkpost\napi_key = {KEY}\n")

    def run_one(self, data: bytes = STORED) -> Any:
        message = self.store.enqueue(
            "zoe@example.com",
            ["ann@example.org", "hidden@example.net"],
            data,
            5,
            self.clock.seconds(),
            1000,
        )
        self.start(http_client=self.sparkpost)
        return self.store.show(message)

    def test_the_stored_message_to_the_envelope_recipients(self) -> None:
        info = self.run_one()
        self.assertEqual(info.state, "sent")
        (sent,) = self.sparkpost.accepted
        self.assertEqual(sent["content"]["email_rfc822"].encode("utf-8"), STORED)
        self.assertEqual(
            [r["address"]["email"] for r in sent["recipients"]],
            ["ann@example.org", "hidden@example.net"],
        )
        self.assertEqual(sent["metadata"], {"smtpmailer_id": info.id})
        self.assertRegex(self.lines[0], r"relay=api:sp .* status=sent \(HTTP 200 7000\)$")

    def test_bytes_that_are_not_utf8_fail_saying_so(self) -> None:
        info = self.run_one(b"From: a@example.com\r\nTo: b@example.org\r\n\r\n\xff\xfe\r\n")
        self.assertEqual(info.state, "failed")
        self.assertIn("8-bit bytes that are not UTF-8", info.recipients[0].last_error)
        self.assertEqual(self.sparkpost.accepted, [], "nothing was sent mangled")

    def test_refused_with_sparkposts_words(self) -> None:
        self.sparkpost.next = [
            (
                422,
                b'{"errors":[{"message":"Invalid domain","description":"Unconfigured '
                b'Sending Domain <example.com>","code":"7001"}]}',
            )
        ]
        info = self.run_one()
        self.assertEqual(info.state, "failed")
        self.assertEqual(
            info.recipients[0].last_error,
            "HTTP 422: Invalid domain: Unconfigured Sending Domain <example.com>",
        )
