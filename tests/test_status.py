"""The status service's resources in memory (treq's StubTreq) over a Clock-driven daemon:
health rules, Prometheus exposition, the queue API, the token, the dashboard."""

from __future__ import annotations

import os
from typing import Any

import attrs
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq

from smtpmailer.config import parse_config
from smtpmailer.delivery.service import IDLE_TIMEOUT
from smtpmailer.queue.sqlite import SQLiteQueue
from tests.fake_relay import settle
from tests.support import DeliveryCase


class StatusCase(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.configure()
        self.config = attrs.evolve(
            self.config,
            status=attrs.evolve(self.config.status, stuck_after=600.0),
            queue=attrs.evolve(self.config.queue, retry_delay=600.0, max_retry_delay=3600.0),
        )

    def http(self) -> StubTreq:
        return StubTreq(self.service.status.site.resource)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        stub = self.http()
        response = stub.get(f"http://status.test{path}", headers=headers or {})
        stub.flush()
        settle(self.clock)
        stub.flush()
        result = self.successResultOf(response)
        body = self.successResultOf(result.content())
        kind = result.headers.getRawHeaders("content-type", [""])[0]
        if kind.startswith("application/json"):
            import json

            return result.code, json.loads(body)
        return result.code, body.decode()


class HealthTests(StatusCase):
    def test_ok(self) -> None:
        self.enqueue()
        self.start()
        code, report = self.get("/health")
        self.assertEqual((code, report["status"], report["reasons"]), (200, "ok", []))
        self.assertEqual(report["queue"]["sent"], 1)
        self.assertIsNotNone(report["last_success_age"])

    def test_stuck_when_mail_waits_and_nothing_is_delivered(self) -> None:
        self.relay.refuse = True
        self.enqueue()
        self.start()
        self.assertEqual(self.get("/health")[0], 200)  # deferred, but not for long yet
        self.clock.advance(601)
        settle(self.clock)
        code, report = self.get("/health")
        self.assertEqual((code, report["status"]), (503, "fail"))
        (reason,) = report["reasons"]
        self.assertIn("delivery is stuck: the oldest message has waited 601s", reason)

    def test_paused_and_stopped_poller_fail(self) -> None:
        service = self.start()
        service.poller.paused = True
        code, report = self.get("/health")
        self.assertEqual(code, 503)
        self.assertEqual(report["reasons"], ["delivery is paused (manhole: resume())"])
        service.poller.paused = False
        self.successResultOf(service.poller.stopService())
        code, report = self.get("/health")
        self.assertEqual(report["reasons"], ["the queue poller is not running"])

    def test_store_that_does_not_answer(self) -> None:
        self.start()

        def broken() -> Any:
            raise OSError("disk I/O error")

        self.store.counts = broken  # type: ignore[method-assign]
        code, report = self.get("/health")
        self.assertEqual(code, 503)
        self.assertIn("the queue store does not answer: disk I/O error", report["reasons"])


class MetricsTests(StatusCase):
    def test_exposition(self) -> None:
        self.relay.rcpt_replies = {"bad@example.org": "550 no"}
        self.enqueue("ok@example.org", "bad@example.org")
        self.enqueue("ok@example.org")
        self.start()
        code, text = self.get("/metrics")
        self.assertEqual(code, 200)
        samples = {}
        for family in text_string_to_metric_families(text):
            self.assertTrue(family.name.startswith("smtpmailer_"), family.name)
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        relay = ("relay", "a.test")
        self.assertEqual(samples[("smtpmailer_recipients_total", (relay, ("status", "sent")))], 2)
        self.assertEqual(samples[("smtpmailer_recipients_total", (relay, ("status", "failed")))], 1)
        self.assertEqual(samples[("smtpmailer_queue_messages", (("state", "sent"),))], 1)
        self.assertEqual(samples[("smtpmailer_queue_messages", (("state", "failed"),))], 1)
        self.assertEqual(samples[("smtpmailer_messages_accepted_total", ())], 2)
        self.assertEqual(samples[("smtpmailer_delivery_duration_seconds_count", (relay,))], 2)
        self.assertEqual(samples[("smtpmailer_queue_residence_seconds_count", ())], 1)
        # One connection per message in parallel, both kept open while idle...
        self.assertEqual(samples[("smtpmailer_relay_connections", (relay,))], 2)
        self.assertEqual(samples[("smtpmailer_reloads_total", ())], 0)
        self.assertIn(("smtpmailer_poller_lag_seconds", ()), samples)
        # ...and closed after the idle timeout.
        self.clock.advance(IDLE_TIMEOUT)
        settle(self.clock)
        self.assertIn('smtpmailer_relay_connections{relay="a.test"} 0.0', self.get("/metrics")[1])

    def test_connection_failures_are_counted(self) -> None:
        self.relay.refuse = True
        self.enqueue()
        self.start()
        _, text = self.get("/metrics")
        self.assertIn('smtpmailer_relay_connection_failures_total{relay="a.test"} 1.0', text)


class QueueAPITests(StatusCase):
    def test_pages_and_one_message(self) -> None:
        self.relay.refuse = True
        ids = []
        for _ in range(5):
            ids.append(self.enqueue())
            self.clock.advance(1)
        self.start()
        code, page = self.get("/v1/queue?limit=2")
        self.assertEqual(code, 200)
        self.assertEqual(page["counts"]["deferred"], 5)
        self.assertEqual([m["id"] for m in page["messages"]], ids[:2])
        code, second = self.get(f"/v1/queue?limit=2&after={page['next']}")
        self.assertEqual([m["id"] for m in second["messages"]], ids[2:4])
        code, last = self.get(f"/v1/queue?limit=2&after={second['next']}")
        self.assertEqual(([m["id"] for m in last["messages"]], last["next"]), (ids[4:], None))
        code, one = self.get(f"/v1/queue/{ids[0]}")
        self.assertEqual((code, one["id"], one["state"]), (200, ids[0], "deferred"))
        self.assertEqual(one["recipients"][0]["last_error"], "a.test:25: connection refused")
        self.assertEqual(self.get("/v1/queue?state=sent")[1]["messages"], [])

    def test_errors(self) -> None:
        self.start()
        self.assertEqual(self.get("/v1/queue/NOPE")[0], 404)
        self.assertEqual(self.get("/v1/queue?state=lost")[0], 400)
        self.assertEqual(self.get("/v1/queue?limit=many")[0], 400)
        self.assertEqual(self.get("/v1/queue?after=garbage")[0], 400)
        self.assertEqual(self.get("/nothing-here")[0], 404)


class TokenTests(StatusCase):
    def test_v1_and_dashboard_need_the_token_when_one_is_set(self) -> None:
        token = "s3cret-token-0123456789"
        self.config = attrs.evolve(
            self.config, status=attrs.evolve(self.config.status, token=token)
        )
        self.start()
        for path in ("/v1/queue", "/"):
            self.assertEqual(self.get(path)[0], 401, path)
            self.assertEqual(self.get(path, {"Authorization": "Bearer wrong"})[0], 401)
            self.assertEqual(self.get(path, {"Authorization": f"Bearer {token}"})[0], 200)
        # Monitoring stays open: /health and /metrics carry no messages.
        self.assertEqual(self.get("/health")[0], 200)
        self.assertEqual(self.get("/metrics")[0], 200)

    def test_off_loopback_without_a_token_is_refused(self) -> None:
        from smtpmailer.ini import ConfigError

        text = "[Relay]\nhost = h\n[Status]\nlisten = tcp:8025:interface=0.0.0.0\n"
        with self.assertRaises(ConfigError) as caught:
            parse_config(text, "c.conf")
        self.assertIn(
            "c.conf:4: listen = tcp:8025:interface=0.0.0.0 is reachable from other "
            "hosts: set token_file",
            str(caught.exception),
        )
        self.assertRaises(
            ConfigError, parse_config, "[Relay]\nhost = h\n[Status]\nlisten = tcp:80", "c.conf"
        )  # no interface: all of them


class DashboardTests(StatusCase):
    def test_page_has_charts_counts_failures_and_relays(self) -> None:
        self.relay.rcpt_replies = {"bad@example.org": "550 5.1.1 unknown user"}
        self.enqueue("bad@example.org")
        self.enqueue("ok@example.org")
        self.start()
        for _ in range(4):  # a few history samples
            self.clock.advance(30)
            settle(self.clock)
        code, page = self.get("/")
        self.assertEqual(code, 200)
        self.assertIn('<svg class="chart" id="queue-depth"', page)
        self.assertIn('<svg class="chart" id="delivery-rate"', page)
        self.assertEqual(page.count('class="series"'), 5 + 3)
        self.assertIn('data-state="failed">1<', page)
        self.assertIn("550 5.1.1 unknown user", page)
        self.assertIn('<tr class="relay"><td>a.test</td>', page)
        self.assertIn('id="health" class="status-ok"', page)

    def test_hostile_text_is_escaped(self) -> None:
        self.relay.rcpt_replies = {"x@example.org": "550 <script>alert(1)</script>"}
        self.enqueue("x@example.org")
        self.start()
        _, page = self.get("/")
        self.assertNotIn("<script>alert", page)
        self.assertEqual(page.count("<script>"), 1, "only the page's own live update")
        self.assertIn("&lt;script&gt;", page)
        _, part = self.get("/?part=live")
        self.assertNotIn("<script>", part)
        self.assertIn("&lt;script&gt;alert(1)", part)


class ShippedDefaultsTests(StatusCase):
    def test_status_on_by_default_on_loopback(self) -> None:
        config = parse_config("[Relay]\nhost = h\n", os.path.join(self.dir, "c.conf"))
        self.assertEqual(config.status.listen, "tcp:8025:interface=127.0.0.1")
        config = parse_config("[Relay]\nhost = h\n[Status]\nlisten =\n", "c.conf")
        self.assertEqual(config.status.listen, "")
        self.assertIsInstance(SQLiteQueue, type)
