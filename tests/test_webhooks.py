"""Webhooks: every event told, signed, in order per message; a webhook that is down is told
later with nothing lost, and never slows delivery; /health says when one falls behind; a
kill -9 of the daemon loses nothing either (real twistd, a real HTTP receiver)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmailer.config import parse_config
from smtpmailer.httpclient import Request, Response
from smtpmailer.ini import ConfigError
from tests.fake_relay import settle
from tests.support import DeliveryCase

SECRET = "whsec-0123456789abcdef"
URL = "http://127.0.0.1:8999/hooks/mail"


def verified(request: Request, secret: str = SECRET) -> dict[str, Any]:
    """The event, once its signature is checked as a receiver would."""
    expected = hmac.new(secret.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Smtpmailer-Signature"] == expected, "bad signature"
    event: dict[str, Any] = json.loads(request.body)
    assert str(event["timestamp"]) == request.headers["X-Smtpmailer-Timestamp"]
    return event


class FakeReceiver:
    """The application's endpoint: answers ``down`` requests with 503 first."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.down = 0
        self.tries = 0

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        self.tries += 1
        if self.down:
            self.down -= 1
            return succeed(Response(503, {}, b"down"))
        self.events.append(verified(request))
        return succeed(Response(204, {}, b""))


class WebhookTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.receiver = FakeReceiver()
        self.relay.rcpt_replies = {"bad@example.org": "550 5.1.1 no such user"}

    def configure_webhook(self, extra: str = "", bounce: str = "") -> None:
        self.configure(
            relays="[Relay]\nhost = a.test\nsecurity = none\ntimeout = 30s\n"
            f"[Webhook:app]\nurl = {URL}\nsecret = {SECRET}\n{extra}",
            bounce=bounce,
        )

    def send(self, *recipients: str) -> str:
        data = b"From: app@example.com\r\nMessage-ID: <m1@example.com>\r\nSubject: s\r\n\r\nhi\r\n"
        return self.store.enqueue(
            "app@example.com", list(recipients), data, 5, self.clock.seconds(), 100
        )

    def elapse(self, seconds: float = 5) -> None:
        for _ in range(int(seconds)):
            self.clock.advance(1)
            settle(self.clock)

    def test_every_event_signed_and_in_order(self) -> None:
        self.configure_webhook()
        self.start(http_client=self.receiver)
        good = self.send("ok@example.org")
        mixed = self.send("ok@example.org", "bad@example.org")
        self.service.poller.wake()
        settle(self.clock)
        self.elapse()
        told = [(e["event"], e["id"], e.get("recipient")) for e in self.receiver.events]
        self.assertIn(("sent", good, "ok@example.org"), told)
        about_mixed = [t for t in told if t[1] == mixed]
        self.assertEqual(
            about_mixed,
            [("sent", mixed, "ok@example.org"), ("failed", mixed, "bad@example.org"),
             ("bounced", mixed, None)],
        )  # fmt: skip
        failed = next(e for e in self.receiver.events if e["event"] == "failed")
        self.assertEqual(failed["reply"], "550 5.1.1 no such user")
        self.assertEqual(failed["message_id"], "m1@example.com")
        self.assertEqual((failed["attempt"], failed["relay"]), (1, "a.test"))
        bounced = next(e for e in self.receiver.events if e["event"] == "bounced")
        self.assertEqual(bounced["recipients"], ["bad@example.org"])
        self.assertTrue(bounced["dsn"])

    def test_a_webhook_that_is_down_is_told_later_and_never_slows_mail(self) -> None:
        self.configure_webhook(bounce="enabled = false\n")
        self.receiver.down = 6
        self.start(http_client=self.receiver)
        ids = [self.send("ok@example.org") for _ in range(5)]
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual(
            {self.state(i) for i in ids}, {"sent"}, "delivered while the webhook is down"
        )
        self.assertEqual(self.receiver.events, [])
        self.elapse(120)  # backoff 1, 2, 4, 8, 16, 32 s, then it answers
        self.assertEqual([e["id"] for e in self.receiver.events], ids, "all of them, in order")
        self.assertEqual(self.receiver.tries, 6 + 5)
        registry = self.service.metrics.registry
        self.assertEqual(
            registry.get_sample_value(
                "smtpmailer_webhook_events_total", {"webhook": "app", "result": "failed"}
            ),
            6,
        )

    def test_only_the_events_asked_for(self) -> None:
        self.configure_webhook("events = failed, bounced\n")
        self.start(http_client=self.receiver)
        self.send("ok@example.org")
        self.send("bad@example.org")
        self.service.poller.wake()
        settle(self.clock)
        self.elapse()
        self.assertEqual(sorted(e["event"] for e in self.receiver.events), ["bounced", "failed"])

    def test_health_says_when_a_webhook_falls_behind(self) -> None:
        self.configure_webhook("max_backlog = 2\n", bounce="enabled = false\n")
        self.receiver.down = 10**6
        self.start(http_client=self.receiver)
        for _ in range(4):
            self.send("ok@example.org")
        self.service.poller.wake()
        settle(self.clock)
        self.elapse(61)  # the backlog is measured once a minute
        report = self.successResultOf(Deferred.fromCoroutine(self.service.status.health()))
        self.assertIn("webhook app is 4 events behind (max_backlog 2)", report["reasons"])
        self.receiver.down = 0
        self.elapse(400)
        report = self.successResultOf(Deferred.fromCoroutine(self.service.status.health()))
        self.assertEqual(report["reasons"], [])
        self.assertEqual(len(self.receiver.events), 4)


class WebhookConfigTests(SynchronousTestCase):
    def error(self, section: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            parse_config(f"[Relay]\nhost = x\n{section}", "/e/c.conf")
        return str(caught.exception)

    def test_mistakes(self) -> None:
        self.assertIn("needs url", self.error(f"[Webhook:a]\nsecret = {SECRET}\n"))
        self.assertIn(
            "is not an https:// URL",
            self.error(f"[Webhook:a]\nurl = http://app.example.com/h\nsecret = {SECRET}\n"),
        )
        self.assertIn("needs secret_file", self.error(f"[Webhook:a]\nurl = {URL}\n"))
        self.assertIn(
            "events: opened: use sent, deferred, failed, bounced, delayed",
            self.error(f"[Webhook:a]\nurl = {URL}\nsecret = {SECRET}\nevents = sent, opened\n"),
        )
        self.assertIn("name each webhook", self.error(f"[Webhook]\nurl = {URL}\n"))


class KillTests(TestCase):
    """Real twistd, aiosmtpd, and the application's webhook over HTTP on 127.0.0.1: the
    webhook is down while mail goes out, the daemon is killed with -9 and started again,
    the webhook comes back: every event arrives, signed, in order per message."""

    timeout = 180

    async def test_nothing_lost_across_a_kill_9(self) -> None:
        import signal

        from twisted.internet import reactor
        from twisted.internet.task import deferLater

        from tests.daemon import Daemon, started_peer, temporary_home
        from tests.fake_http import ServedOverHTTP

        receiver = FakeReceiver()
        receiver.down = 10**6
        served = ServedOverHTTP(receiver, reactor)
        self.addCleanup(served.close)
        home = temporary_home(self)
        peer = started_peer(self)
        peer.set(reject_rcpt={"bad@example.org": "550 5.1.1 no such user"})
        secret_file = os.path.join(home, "webhook-secret")
        with open(secret_file, "w") as handle:
            handle.write(SECRET + "\n")
        os.chmod(secret_file, 0o600)
        daemon = Daemon(
            os.path.join(home, "d"),
            f"[Relay]\nhost = 127.0.0.1\nport = {peer.port}\nsecurity = none\n"
            f"[Webhook:app]\nurl = {served.url}/hooks\nsecret_file = {secret_file}\n",
            extra="[Bounce]\nenabled = false\n",
        )
        self.addCleanup(daemon.stop)

        async def until(condition: Any, what: str, timeout: float = 60) -> None:
            import time

            deadline = time.monotonic() + timeout
            while not condition():
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out waiting for {what}")
                await deferLater(reactor, 0.05)

        daemon.start()
        ids = []
        for n in range(6):
            to = "bad@example.org" if n % 3 == 2 else "ok@example.org"
            ids.append(daemon.send("--from", "a@example.com", "--to", to, "--subject", f"n{n}"))
        await until(
            lambda: (
                sum(daemon.states().values()) == 6
                and not daemon.states().get("queued")
                and not daemon.states().get("active")
            ),
            "every outcome",
        )
        await until(lambda: receiver.tries >= 2, "the webhook to be tried")
        daemon.kill(signal.SIGKILL)
        receiver.down = 0
        daemon.start()
        await until(lambda: len({e["id"] for e in receiver.events}) == 6, "every event", 90)
        told = {e["id"]: e["event"] for e in receiver.events}
        self.assertEqual(
            [told[i] for i in ids], ["sent", "sent", "failed", "sent", "sent", "failed"]
        )
        self.assertNotIn("Traceback", daemon.log())
