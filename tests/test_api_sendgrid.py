"""[API:NAME] with provider = sendgrid: the message mapped field by field, the answers
classified (sent, failed over, paused, deferred for a bad key, failed with SendGrid's words),
and the real HTTP client against a SendGrid-shaped server on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
from email.message import EmailMessage
from typing import Any

import attrs
from prometheus_client import generate_latest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmailer.config import parse_config
from smtpmailer.delivery.api import sendgrid
from smtpmailer.httpclient import PooledClient
from smtpmailer.ini import ConfigError
from smtpmailer.queue import Lease
from tests.fake_relay import settle
from tests.fake_sendgrid import KEY, FakeSendGrid
from tests.support import DeliveryCase

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def rich_message() -> bytes:
    message = EmailMessage()
    message["From"] = "Zoë Sender <zoe@example.com>"
    message["To"] = "Ann Example <ann@example.org>, bob@example.org"
    message["Cc"] = "Carl <carl@example.org>"
    message["Reply-To"] = "replies@example.com"
    message["Subject"] = "Grüße — the report"
    message["X-Campaign"] = "weekly-7"
    message.set_content("Hello in text.\n")
    message.add_alternative('<p>Hello <img src="cid:logo@example.com"></p>\n', subtype="html")
    html = message.get_payload()[1]
    html.add_related(PNG, maintype="image", subtype="png", cid="<logo@example.com>")
    message.add_attachment(b"a,b\n1,2\n", maintype="text", subtype="csv", filename="report.csv")
    return bytes(message)


def lease_of(data: bytes, *recipients: str) -> Lease:
    return Lease("7JSCQ0000ABCDE", "t", "zoe@example.com", recipients, data, 5, 0, 100.0)


class MappingTests(SynchronousTestCase):
    def relay(self) -> Any:
        text = (
            f"[API:sendgrid]\nprovider = sendgrid\napi_key = {KEY}\n"
            "endpoint = https://api.sendgrid.test\n"
        )
        return parse_config(text, "/etc/smtpmailer/smtpmailer.conf").relays[0]

    def test_every_field(self) -> None:
        lease = lease_of(
            rich_message(),
            "ann@example.org",
            "bob@example.org",
            "carl@example.org",
            "dan@example.net",
        )
        request = sendgrid.build(lease, self.relay())
        self.assertEqual(
            (request.method, request.url), ("POST", "https://api.sendgrid.test/v3/mail/send")
        )
        self.assertEqual(request.headers["Authorization"], f"Bearer {KEY}")
        body = json.loads(request.body)
        (personal,) = body["personalizations"]
        self.assertEqual(
            personal["to"],
            [{"email": "ann@example.org", "name": "Ann Example"}, {"email": "bob@example.org"}],
        )
        self.assertEqual(personal["cc"], [{"email": "carl@example.org", "name": "Carl"}])
        self.assertEqual(personal["bcc"], [{"email": "dan@example.net"}], "envelope, not header")
        self.assertEqual(personal["custom_args"], {"smtpmailer_id": lease.id})
        self.assertEqual(body["from"], {"email": "zoe@example.com", "name": "Zoë Sender"})
        self.assertEqual(body["reply_to"], {"email": "replies@example.com"})
        self.assertEqual(body["subject"], "Grüße — the report")
        self.assertEqual(
            [(c["type"], c["value"]) for c in body["content"]],
            [
                ("text/plain", "Hello in text.\n"),
                ("text/html", '<p>Hello <img src="cid:logo@example.com"></p>\n'),
            ],
        )
        by_name = {a["filename"]: a for a in body["attachments"]}
        self.assertEqual(base64.b64decode(by_name["report.csv"]["content"]), b"a,b\n1,2\n")
        self.assertEqual(by_name["report.csv"]["disposition"], "attachment")
        inline = by_name["logo@example.com"]
        self.assertEqual(
            (inline["disposition"], inline["content_id"], inline["type"]),
            ("inline", "logo@example.com", "image/png"),
        )
        self.assertEqual(base64.b64decode(inline["content"]), PNG)
        self.assertEqual(body["headers"], {"X-Campaign": "weekly-7"})

    def test_what_sendgrid_cannot_carry_is_said(self) -> None:
        signed = (
            b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";'
            b' boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n'
        )
        with self.assertRaises(sendgrid.Uncarried) as caught:
            sendgrid.build(lease_of(signed, "b@example.org"), self.relay())
        self.assertIn("not a multipart/signed message", str(caught.exception))
        only_bcc = b"From: a@example.com\r\nTo: list@example.org\r\nSubject: s\r\n\r\nhi\r\n"
        with self.assertRaises(sendgrid.Uncarried) as caught:
            sendgrid.build(lease_of(only_bcc, "hidden@example.net"), self.relay())
        self.assertIn("needs a To: recipient", str(caught.exception))


class ConfigTests(SynchronousTestCase):
    def error(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            parse_config(text, "/etc/smtpmailer/smtpmailer.conf")
        return str(caught.exception)

    def test_mistakes(self) -> None:
        self.assertIn(
            ":2: provider: 'sendmail' is not one of: sendgrid, mailgun, postmark, ses,",
            self.error("[API:x]\nprovider = sendmail\napi_key = k\n"),
        )
        self.assertIn("needs api_key_file", self.error("[API:sg]\nprovider = sendgrid\n"))
        self.assertIn("name each API relay", self.error("[API]\nprovider = sendgrid\n"))
        self.assertIn(
            "endpoint: 'http://api.example.com' is not an https:// URL",
            self.error(
                "[API:sg]\nprovider = sendgrid\napi_key = k\nendpoint = http://api.example.com\n"
            ),
        )

    def test_shown_with_the_key_redacted(self) -> None:
        from smtpmailer.config import render_config

        config = parse_config(
            f"[API:sg]\nprovider = sendgrid\napi_key = {KEY}\n", "/etc/smtpmailer/smtpmailer.conf"
        )
        shown = render_config(config)
        self.assertIn("[API:sg]\nprovider = sendgrid\napi_key = <redacted>\n", shown)
        self.assertIn("endpoint = https://api.sendgrid.com\n", shown)
        self.assertNotIn(KEY, shown + repr(config))


class APIDeliveryTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.sendgrid = FakeSendGrid(self.clock)

    def configure_api(self, backup: bool = False, api_priority: int = 1) -> None:
        relays = (
            f"[API:sendgrid]\nprovider = sendgrid\napi_key = {KEY}\n"
            f"endpoint = https://api.sendgrid.test\npriority = {api_priority}\ntimeout = 30s\n"
        )
        if backup:
            relays += "[Relay:backup]\nhost = b.test\nport = 26\nsecurity = none\npriority = 2\n"
        self.configure(relays)

    def enqueue_mail(self, to: str = "ann@example.org") -> str:
        data = f"From: App <app@example.com>\r\nTo: {to}\r\nSubject: s\r\n\r\nhello\r\n".encode()
        return self.store.enqueue("app@example.com", [to], data, 5, self.clock.seconds(), 1000)

    def start_api(self) -> None:
        self.start(http_client=self.sendgrid)

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.successResultOf(
            Deferred.fromCoroutine(self.service.status.health())
        )
        return result

    def test_sent_with_the_providers_message_id(self) -> None:
        self.configure_api()
        message = self.enqueue_mail()
        self.start_api()
        info = self.store.show(message)
        self.assertEqual(info.state, "sent")
        self.assertEqual(info.recipients[0].last_error, None)
        self.assertEqual((info.relay, info.relay_address), ("api:sendgrid", "api:sendgrid"))
        self.assertEqual(len(self.sendgrid.accepted), 1)
        self.assertRegex(
            self.lines[0], r"relay=api:sendgrid delay=\S+ attempts=1 status=sent \(HTTP 202 sg-1\)$"
        )

    def test_429_pauses_the_api_until_its_reset_and_fails_over_meanwhile(self) -> None:
        self.configure_api(backup=True)
        reset = self.clock.seconds() + 120
        self.sendgrid.next = [
            (
                429,
                {"x-ratelimit-reset": str(int(reset))},
                b'{"errors":[{"message":"too many requests"}]}',
            )
        ]
        first = self.enqueue_mail()
        self.start_api()
        self.assertEqual(self.state(first), "sent")
        self.assertEqual(len(self.relays["b.test"].messages), 1, "the SMTP backup took it")
        self.clock.advance(60)
        second = self.enqueue_mail()
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual(len(self.relays["b.test"].messages), 2, "still paused: the backup again")
        self.clock.advance(61)
        third = self.enqueue_mail()
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual({self.state(m) for m in (first, second, third)}, {"sent"})
        self.assertEqual(len(self.sendgrid.accepted), 1, "after the reset, SendGrid again")

    def test_requests_counted_by_answer_with_their_time_and_the_pause(self) -> None:
        self.configure_api(backup=True)
        self.sendgrid.next = [
            (429, {"x-ratelimit-reset": str(int(self.clock.seconds() + 120))}, b"{}"),
            (400, {}, b'{"errors":[{"message":"bad"}]}'),
        ]
        self.enqueue_mail()
        self.start_api()  # 429: paused for 120 s, the backup takes it
        self.clock.advance(121)
        self.enqueue_mail()  # 400
        self.enqueue_mail()  # 202
        self.service.poller.wake()
        settle(self.clock)
        registry = self.service.metrics.registry

        def sample(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, {"relay": "api:sendgrid", **labels})

        self.assertEqual(sample("smtpmailer_api_requests_total", status="4xx"), 2)
        self.assertEqual(sample("smtpmailer_api_requests_total", status="2xx"), 1)
        self.assertEqual(sample("smtpmailer_api_requests_total", status="none"), None)
        self.assertEqual(sample("smtpmailer_api_request_duration_seconds_count"), 3)
        self.assertEqual(sample("smtpmailer_relay_paused_seconds_total"), 120)

    def test_a_reload_that_changes_the_api_retires_its_old_connection_pool(self) -> None:
        self.configure_api()
        self.start_api()
        old = self.service.delivery.pools["sendgrid"].transport
        changed = self.config.relays[0].__class__
        relay = attrs.evolve(self.config.relays[0], timeout=10.0)
        self.assertIsInstance(relay, changed)
        self.service.delivery.reconfigure(attrs.evolve(self.config, relays=(relay,)))
        self.assertTrue(old.retired)
        self.assertIsNot(self.service.delivery.pools["sendgrid"].transport, old)

    def test_a_lone_paused_api_holds_the_mail_until_its_reset_without_an_attempt(self) -> None:
        self.configure_api()
        reset = self.clock.seconds() + 120
        self.sendgrid.next = [(429, {"x-ratelimit-reset": str(int(reset))}, b"{}")]
        message = self.enqueue_mail()
        self.start_api()
        self.assertEqual(self.state(message), "active", "held for the reset, not deferred")
        self.clock.advance(119)
        settle(self.clock)
        self.assertEqual(self.sendgrid.accepted, [])
        self.clock.advance(2)
        settle(self.clock)
        info = self.store.show(message)
        self.assertEqual((info.state, info.attempts), ("sent", 1), "the pause cost no attempt")

    def test_a_message_held_for_a_reset_goes_back_to_the_queue_at_a_stop(self) -> None:
        self.configure_api()
        self.sendgrid.next = [(429, {"retry-after": "120"}, b"{}")]
        message = self.enqueue_mail()
        self.start_api()
        self.stop()
        from smtpmailer.queue.sqlite import SQLiteQueue

        reader = SQLiteQueue(self.config.queue.path)  # the service closed its own
        self.addCleanup(reader.close)
        info = reader.show(message)
        self.assertEqual((info.state, info.attempts), ("queued", 0), "given back untouched")

    def test_a_server_error_defers_when_no_other_relay_is_left(self) -> None:
        self.configure_api()
        self.sendgrid.next = [(503, {}, b"<html>Service Unavailable</html>")]
        message = self.enqueue_mail()
        self.start_api()
        info = self.store.show(message)
        self.assertEqual(info.state, "deferred")
        self.assertEqual(
            info.recipients[0].last_error,
            "api:sendgrid (https://api.sendgrid.test): HTTP 503: <html>Service Unavailable</html>",
        )

    def test_a_refused_key_defers_and_shows_on_health(self) -> None:
        self.sendgrid.key = "SG.another-key"
        self.configure_api()
        message = self.enqueue_mail()
        self.start_api()
        info = self.store.show(message)
        self.assertEqual(info.state, "deferred", "a key mistake never fails the queue")
        self.assertIn(
            "HTTP 401: The provided authorization grant is invalid", info.last_error or ""
        )
        health = self.health()
        self.assertEqual(health["status"], "fail")
        self.assertTrue(
            any("relay api:sendgrid refuses our credentials" in r for r in health["reasons"])
        )
        metrics = generate_latest(self.service.metrics.registry).decode()
        self.assertIn('smtpmailer_relay_auth_failures_total{relay="api:sendgrid"} 1.0', metrics)
        self.assertNotIn(KEY, "\n".join(self.lines) + json.dumps(health))

    def test_a_message_sendgrid_refuses_fails_with_its_words(self) -> None:
        self.configure_api()
        self.sendgrid.next = [
            (
                400,
                {},
                json.dumps(
                    {
                        "errors": [
                            {
                                "message": "Does not contain a valid address.",
                                "field": "personalizations.0.to.0.email",
                                "help": None,
                            }
                        ]
                    }
                ).encode(),
            )
        ]
        message = self.enqueue_mail()
        self.start_api()
        info = self.store.show(message)
        self.assertEqual(info.state, "failed")
        self.assertEqual(
            info.recipients[0].last_error,
            "HTTP 400: Does not contain a valid address. (personalizations.0.to.0.email)",
        )

    def test_smtp_fails_over_to_the_api(self) -> None:
        self.configure_api(backup=True, api_priority=3)  # SMTP first, the API behind it
        self.relays["b.test"].refuse = True
        message = self.enqueue_mail()
        self.start_api()
        self.assertEqual(self.state(message), "sent")
        self.assertEqual(len(self.sendgrid.accepted), 1)


class RealHTTPTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.sendgrid = FakeSendGrid()
        self.base = self.sendgrid.listen(reactor)
        self.addCleanup(self.sendgrid.close)
        self.client = PooledClient(reactor, 2)
        self.addCleanup(self.client.close)

    async def test_a_request_over_http(self) -> None:
        relay = parse_config(
            f"[API:sg]\nprovider = sendgrid\napi_key = {KEY}\nendpoint = {self.base}\n",
            os.path.join("/etc", "smtpmailer.conf"),
        ).relays[0]
        data = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\nhi\r\n"
        response = await self.client(sendgrid.build(lease_of(data, "b@example.org"), relay), 5)
        self.assertEqual((response.status, response.headers["x-message-id"]), (202, "sg-1"))
        self.assertEqual(self.sendgrid.accepted[0]["subject"], "s")

    async def test_nothing_listening(self) -> None:
        from smtpmailer.httpclient import HTTPFailure, Request

        await self.sendgrid.close()
        with self.assertRaises(HTTPFailure) as caught:
            await self.client(Request("POST", self.base + "/v3/mail/send", {}, b"{}"), 5)
        self.assertEqual(
            (caught.exception.kind, str(caught.exception)), ("unreachable", "connection refused")
        )


class EndToEndTests(TestCase):
    """Real twistd, SendGrid-shaped over HTTP on 127.0.0.1, an SMTP relay behind it."""

    timeout = 120

    async def until(self, condition: Any, what: str, timeout: float = 30) -> None:
        """Wait for a condition while this process's reactor keeps serving the fake API."""
        import time

        from twisted.internet.task import deferLater

        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await deferLater(reactor, 0.05)

    async def test_sent_through_sendgrid_then_failed_over_while_it_is_down(self) -> None:
        from tests.daemon import Daemon, temporary_home
        from tests.smtp_peer import SMTPPeer

        home = temporary_home(self)
        fake = FakeSendGrid()
        base = fake.listen(reactor)
        self.addCleanup(fake.close)
        peer = SMTPPeer()
        peer.start()
        self.addCleanup(peer.stop)
        relays = (
            f"[API:sendgrid]\nprovider = sendgrid\napi_key = {KEY}\nendpoint = {base}\n"
            "priority = 1\ntimeout = 5s\n"
            f"[Relay:backup]\nhost = 127.0.0.1\nport = {peer.port}\nsecurity = none\n"
            "priority = 2\n"
        )
        daemon = Daemon(os.path.join(home, "d"), relays)
        os.chmod(daemon.config_path, 0o600)
        self.addCleanup(daemon.stop)
        daemon.start()
        first = daemon.send(
            "--from", "App <app@example.com>", "--to", "ann@example.org", "--subject", "s"
        )
        await self.until(lambda: len(fake.accepted) == 1, "SendGrid to take it")
        await self.until(lambda: daemon.message(first)["state"] == "sent", "the outcome")
        self.assertEqual(daemon.message(first)["relay"], "api:sendgrid")
        self.assertEqual(
            fake.accepted[0]["personalizations"][0]["custom_args"]["smtpmailer_id"], first
        )
        fake.next = [(503, {}, b"down")]
        second = daemon.send(
            "--from", "app@example.com", "--to", "bob@example.org", "--subject", "t"
        )
        await self.until(lambda: len(peer.messages()) == 1, "the SMTP backup to take it")
        await self.until(lambda: daemon.message(second)["state"] == "sent", "the outcome")
        self.assertEqual(daemon.message(second)["relay"], "backup")
        self.assertIn("relay=api:sendgrid", daemon.log())
        self.assertNotIn(KEY, daemon.log())
