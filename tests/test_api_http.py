"""Every provider over real HTTP on 127.0.0.1: the transport's request through httpclient to the
provider's fake served by twisted.web, and its answer classified. In memory the fakes are
called directly; here the bytes cross a socket (headers, bodies, SigV4's Host with a port)."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from smtpmailer.config import parse_config
from smtpmailer.delivery.api.transport import APITransport
from smtpmailer.delivery.transport import TransportContext
from smtpmailer.httpclient import PooledClient
from smtpmailer.queue import Lease
from tests import (
    test_api_brevo,
    test_api_mailjet,
    test_api_postmark,
    test_api_resend,
    test_api_ses,
    test_api_sparkpost,
)
from tests.fake_http import ServedOverHTTP
from tests.fake_mailgun import KEY as MAILGUN_KEY
from tests.fake_mailgun import FakeMailgun
from tests.fake_sendgrid import KEY as SENDGRID_KEY
from tests.fake_sendgrid import FakeSendGrid

MESSAGE = (
    b"From: Zoe <zoe@example.com>\r\nTo: Ann <ann@example.org>\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\nhello over http\r\n"
)


def _cases() -> dict[str, tuple[Any, str, Any]]:
    """provider -> (fake, its [API:NAME] keys, where the fake keeps what it accepted)."""
    ses_keys = (
        f"region = eu-west-1\naccess_key_id = {test_api_ses.ACCESS}\n"
        f"secret_access_key = {test_api_ses.SECRET}\n"
    )
    fakes = {
        "sendgrid": (FakeSendGrid(), f"api_key = {SENDGRID_KEY}\n"),
        "mailgun": (FakeMailgun(), f"api_key = {MAILGUN_KEY}\ndomain = mg.example.com\n"),
        "postmark": (test_api_postmark.FakePostmark(), f"api_key = {test_api_postmark.TOKEN}\n"),
        "resend": (test_api_resend.FakeResend(), f"api_key = {test_api_resend.KEY}\n"),
        "brevo": (test_api_brevo.FakeBrevo(), f"api_key = {test_api_brevo.KEY}\n"),
        "mailjet": (test_api_mailjet.FakeMailjet(), f"api_key = {test_api_mailjet.KEY}\n"),
        "sparkpost": (test_api_sparkpost.FakeSparkPost(), f"api_key = {test_api_sparkpost.KEY}\n"),
        "ses": (test_api_ses.FakeSES(), ses_keys),
    }
    return {name: (fake, keys, fake.accepted) for name, (fake, keys) in fakes.items()}


async def send_through(
    case: TestCase, url: str, provider: str = "sendgrid", keys: str = "", name: str = "sg"
) -> Any:
    """MESSAGE through an [API:NAME] relay of ``provider`` to ``url``, on a client of its
    own; ``keys``: the section's credentials (SendGrid's test key when not given)."""
    client = PooledClient(reactor, 1)
    case.addCleanup(client.close)
    keys = keys or f"api_key = {SENDGRID_KEY}\n"
    relay = parse_config(
        f"[API:{name}]\nprovider = {provider}\n{keys}endpoint = {url}\n",
        "/etc/smtpmailer/smtpmailer.conf",
    ).relays[0]
    session = await APITransport(relay, TransportContext(reactor, "x", http=client)).open()
    lease = Lease("7JSCQ0000ABCDE", "t", "z@example.com", ("ann@example.org",), MESSAGE, 5, 0, 0)
    return await session.deliver(lease)


class OverHTTPTests(TestCase):
    timeout = 30

    async def deliver(self, provider: str) -> tuple[Any, list[Any]]:
        fake, keys, accepted = _cases()[provider]
        served = ServedOverHTTP(fake, reactor)
        self.addCleanup(served.close)
        (result,) = await send_through(self, served.url, provider, keys, name=provider)
        return result, accepted

    async def check(self, provider: str) -> None:
        result, accepted = await self.deliver(provider)
        self.assertEqual(result.status, "sent", result.reply)
        self.assertRegex(result.reply, r"^HTTP 20\d \S+")
        self.assertEqual(len(accepted), 1, "the fake got one message over the socket")

    async def test_sendgrid(self) -> None:
        await self.check("sendgrid")

    async def test_mailgun(self) -> None:
        await self.check("mailgun")

    async def test_postmark(self) -> None:
        await self.check("postmark")

    async def test_resend(self) -> None:
        await self.check("resend")

    async def test_brevo(self) -> None:
        await self.check("brevo")

    async def test_mailjet(self) -> None:
        await self.check("mailjet")

    async def test_sparkpost(self) -> None:
        await self.check("sparkpost")

    async def test_ses_signed_for_a_host_with_a_port(self) -> None:
        await self.check("ses")


class RetiredPoolTests(TestCase):
    """A transport replaced by a reload closes its own connection pool, but only once the
    requests it has under way are answered."""

    timeout = 30

    async def until(self, condition: Any, what: str) -> None:
        import time

        from twisted.internet.task import deferLater

        deadline = time.monotonic() + 10
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await deferLater(reactor, 0.02)

    async def test_closed_after_the_request_under_way(self) -> None:
        from twisted.internet.defer import Deferred

        fake = FakeSendGrid()
        held: list[Deferred[None]] = []

        def answer_when_let(request: Any, timeout: float) -> Any:
            let: Deferred[None] = Deferred()
            held.append(let)
            return let.addCallback(lambda _: fake.answer(request))

        served = ServedOverHTTP(answer_when_let, reactor)
        self.addCleanup(served.close)
        relay = parse_config(
            f"[API:sg]\nprovider = sendgrid\napi_key = {SENDGRID_KEY}\nendpoint = {served.url}\n",
            "/etc/smtpmailer/smtpmailer.conf",
        ).relays[0]
        transport = APITransport(relay, TransportContext(reactor, "localhost"))
        session = await transport.open()
        lease = Lease(
            "7JSCQ0000ABCDE", "t", "zoe@example.com", ("ann@example.org",), MESSAGE, 5, 0, 0
        )
        sending = session.deliver(lease)
        await self.until(lambda: held, "the request to arrive")
        transport.retire()
        self.assertEqual(served.connections.lost, 0, "not while a request is under way")
        held[0].callback(None)
        (result,) = await sending
        self.assertEqual(result.status, "sent")
        await self.until(lambda: served.connections.lost == 1, "the idle connection to close")
        self.assertEqual(served.connections.made, 1)


class LargeBodiesTests(TestCase):
    """A large message's request is built on a thread, not on the reactor."""

    async def test_built_off_the_reactor_above_the_bound(self) -> None:
        from twisted.internet.defer import maybeDeferred

        from smtpmailer.delivery.api.transport import BUILT_ON_REACTOR

        fake = FakeSendGrid()
        threaded: list[int] = []

        def blocking(function: Any, *args: Any) -> Any:
            threaded.append(len(args[0].data))
            return maybeDeferred(function, *args)

        relay = parse_config(
            f"[API:sg]\nprovider = sendgrid\napi_key = {SENDGRID_KEY}\n",
            "/etc/smtpmailer/smtpmailer.conf",
        ).relays[0]
        context = TransportContext(reactor, "localhost", http=fake, blocking=blocking)
        session = await APITransport(relay, context).open()
        large = MESSAGE + b"x" * BUILT_ON_REACTOR
        for data in (MESSAGE, large):
            lease = Lease(
                "7JSCQ0000ABCDE", "t", "z@example.com", ("ann@example.org",), data, 5, 0, 0
            )
            (result,) = await session.deliver(lease)
            self.assertEqual(result.status, "sent")
        self.assertEqual(threaded, [len(large)])
        self.assertEqual(len(fake.accepted), 2)


class TLSTests(TestCase):
    """HTTPS to an API is verified: a certificate no trusted authority signed is refused,
    and the same server is used once its authority is trusted (SSL_CERT_FILE, as OpenSSL
    reads it for the platform's trust)."""

    timeout = 30

    def serve_tls(self) -> tuple[str, str]:
        import os

        from twisted.internet.ssl import PrivateCertificate

        from tests.certs import TestCA

        directory = self.mktemp()
        ca = TestCA(directory)
        cert, key = ca.issue("api", ips=("127.0.0.1",))
        with open(cert) as c, open(key) as k:
            pem = c.read() + k.read()
        options = PrivateCertificate.loadPEM(pem).options()
        served = ServedOverHTTP(FakeSendGrid(), reactor, tls=options)
        self.addCleanup(served.close)
        return served.url, os.path.abspath(ca.ca_file)

    async def send(self, url: str) -> Any:
        return await send_through(self, url)

    async def test_an_untrusted_certificate_is_refused(self) -> None:
        from smtpmailer.delivery.transport import OpenError

        url, _ = self.serve_tls()
        with self.assertRaises(OpenError) as caught:
            await self.send(url)
        self.assertRegex(str(caught.exception), r"^api:sg \(https://127\.0\.0\.1:\d+\): TLS: ")

    async def test_a_trusted_authority_is_accepted(self) -> None:
        import os

        url, ca_file = self.serve_tls()
        before = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = ca_file
        self.addCleanup(
            lambda: (
                os.environ.pop("SSL_CERT_FILE")
                if before is None
                else os.environ.__setitem__("SSL_CERT_FILE", before)
            )
        )
        (result,) = await self.send(url)
        self.assertEqual(result.status, "sent")


class DroppedTests(TestCase):
    """A connection dropped after the request went out and before any answer came: the
    relay cannot take mail now (OpenError, so the message is deferred or fails over)."""

    timeout = 30

    async def test_dropped_mid_request(self) -> None:
        from twisted.internet.endpoints import TCP4ServerEndpoint
        from twisted.internet.protocol import Factory, Protocol

        from smtpmailer.delivery.transport import OpenError

        received: list[bytes] = []

        class DropAfterTheRequest(Protocol):
            def dataReceived(self, data: bytes) -> None:  # noqa: N802 (Twisted's)
                received.append(data)
                if b"hello over http" in b"".join(received):  # the whole request is in
                    self.transport.abortConnection()

        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(DropAfterTheRequest)
        )
        self.addCleanup(port.stopListening)
        with self.assertRaises(OpenError) as caught:
            await send_through(self, f"http://127.0.0.1:{port.getHost().port}")
        self.assertRegex(
            str(caught.exception),
            r"^api:sg \(http://127\.0\.0\.1:\d+\): the connection closed before an answer$",
        )
        self.assertTrue(b"".join(received).startswith(b"POST /v3/mail/send HTTP/1.1\r\n"))
