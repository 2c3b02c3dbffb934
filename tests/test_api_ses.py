"""[API:NAME] with provider = ses: SES v2 outbound-emails with the stored bytes as
Content.Raw.Data, signed with SigV4. The fake checks the signature as AWS would, with the
secret it knows, so a request signed wrong (or with the wrong secret) is refused."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from twisted.internet.defer import Deferred, succeed

from smtpmailer.config import parse_config
from smtpmailer.httpclient import Request, Response
from smtpmailer.ini import ConfigError
from tests.support import DeliveryCase

ACCESS = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
STORED = b"From: zoe@example.com\r\nTo: ann@example.org\r\nSubject: s\r\n\r\nhi there\r\n"


class FakeSES:
    """SES v2 SendEmail: SigV4 verified with the known secret; 200 with MessageId."""

    def __init__(self, region: str = "eu-west-1") -> None:
        self.region = region
        self.accepted: list[dict[str, Any]] = []
        self.next: list[tuple[int, dict[str, str], bytes]] = []
        self.identities = {"example.com": True, "example.org": False}  # verified for sending
        self.sending_enabled = True

    def read(self, path: str) -> Response:
        """GetAccount and GetEmailIdentity, as SES v2 answers them."""
        if path == "v2/email/account":
            body: dict[str, Any] = {
                "SendingEnabled": self.sending_enabled,
                "ProductionAccessEnabled": False,
                "EnforcementStatus": "HEALTHY",
                "SendQuota": {"Max24HourSend": 200.0, "MaxSendRate": 1.0, "SentLast24Hours": 3.0},
            }
            return Response(200, {}, json.dumps(body).encode())
        name = path.rpartition("/")[2]
        if not path.startswith("v2/email/identities/") or name not in self.identities:
            body = {"message": f"Email identity {name} does not exist."}
            return Response(
                404, {"x-amzn-errortype": "NotFoundException:"}, json.dumps(body).encode()
            )
        verified = self.identities[name]
        body = {
            "IdentityType": "DOMAIN",
            "VerifiedForSendingStatus": verified,
            "VerificationStatus": "SUCCESS" if verified else "PENDING",
        }
        return Response(200, {}, json.dumps(body).encode())

    def signed_right(self, request: Request) -> bool:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        given = request.headers.get("Authorization", "")
        # Only the headers the signature names count, as at AWS: a proxy or an HTTP
        # client may add others (Content-Length, Connection) on the way.
        signed = given.partition("SignedHeaders=")[2].partition(",")[0].split(";")
        headers = {k: v for k, v in request.headers.items() if k.lower() in signed}
        check = AWSRequest(request.method, request.url, data=request.body, headers=headers)
        check.context["timestamp"] = headers.get("X-Amz-Date", "")
        auth = SigV4Auth(Credentials(ACCESS, SECRET), "ses", self.region)
        canonical = auth.canonical_request(check)
        signature = auth.signature(auth.string_to_sign(check, canonical), check)
        return given.endswith(f"Signature={signature}") and f"Credential={ACCESS}/" in given

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        path = request.url.split("://", 1)[-1].partition("/")[2]
        reads = request.method == "GET" and path.startswith("v2/email/")
        if not reads and path != "v2/email/outbound-emails":
            return succeed(Response(404, {}, b'{"message":"Not Found"}'))
        if not self.signed_right(request):
            body = (
                b'{"message":"The request signature we calculated does not match the '
                b'signature you provided."}'
            )
            return succeed(Response(403, {"x-amzn-errortype": "SignatureDoesNotMatch:"}, body))
        if reads:
            return succeed(self.read(path))
        if self.next:
            return succeed(Response(*self.next.pop(0)))
        sent = json.loads(request.body)
        self.accepted.append(sent)
        body = {"MessageId": f"0102018c-{len(self.accepted):04d}-ses"}
        return succeed(Response(200, {}, json.dumps(body).encode()))


class SESTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.ses = FakeSES()
        secret = os.path.join(self.dir, "aws-secret")
        with open(secret, "w") as handle:
            handle.write(SECRET + "\n")
        os.chmod(secret, 0o600)
        self.configure(
            f"[API:ses]\nprovider = ses\nregion = eu-west-1\naccess_key_id = {ACCESS}\n"
            f"secret_access_key_file = {secret}\n"
        )

    def run_one(self) -> Any:
        message = self.store.enqueue(
            "zoe@example.com",
            ["ann@example.org", "hidden@example.net"],
            STORED,
            5,
            self.clock.seconds(),
            1000,
        )
        self.start(http_client=self.ses)
        return self.store.show(message)

    def test_the_stored_bytes_signed_and_sent(self) -> None:
        self.assertEqual(self.config.relays[0].endpoint, "https://email.eu-west-1.amazonaws.com")
        info = self.run_one()
        self.assertEqual(info.state, "sent")
        (sent,) = self.ses.accepted
        self.assertEqual(base64.b64decode(sent["Content"]["Raw"]["Data"]), STORED)
        self.assertEqual(
            sent["Destination"]["ToAddresses"], ["ann@example.org", "hidden@example.net"]
        )
        self.assertEqual(sent["EmailTags"], [{"Name": "smtpmailer_id", "Value": info.id}])
        self.assertRegex(
            self.lines[0], r"relay=api:ses .* status=sent \(HTTP 200 0102018c-0001-ses\)$"
        )
        self.assertNotIn(SECRET, "\n".join(self.lines))

    def test_a_wrong_secret_is_refused_and_deferred(self) -> None:
        self.ses.region = "us-east-1"  # it now computes another signature: as a wrong key would
        info = self.run_one()
        self.assertEqual(info.state, "deferred")
        self.assertIn("HTTP 403: SignatureDoesNotMatch: The request signature", info.last_error)

    def test_a_rejected_message_fails_with_ses_words(self) -> None:
        self.ses.next = [
            (
                400,
                {"x-amzn-errortype": "MessageRejected:http://internal.amazon.com/coral/"},
                b'{"message":"Email address is not verified. The following identities failed '
                b'the check in region EU-WEST-1: zoe@example.com"}',
            )
        ]
        info = self.run_one()
        self.assertEqual(info.state, "failed")
        self.assertEqual(
            info.recipients[0].last_error,
            "HTTP 400: MessageRejected: Email address is not verified. The following "
            "identities failed the check in region EU-WEST-1: zoe@example.com",
        )


class SESConfigTests(DeliveryCase):
    def test_mistakes(self) -> None:
        for text, expected in (
            ("[API:ses]\nprovider = ses\n", "needs region"),
            (
                f"[API:ses]\nprovider = ses\nregion = eu-west-1\naccess_key_id = {ACCESS}\n",
                "together",
            ),
            (
                "[API:ses]\nprovider = ses\nregion = eu-west-1\napi_key = k\n",
                "signs with access_key_id",
            ),
        ):
            with self.assertRaises(ConfigError) as caught:
                parse_config(text, "/e/c.conf")
            self.assertIn(expected, str(caught.exception))
