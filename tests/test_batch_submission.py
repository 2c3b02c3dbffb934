"""Templates over HTTP: one message from a template, and batches (``template`` +
``recipients`` + ``merge_global``) committed in one transaction, each recipient getting a
message of its own, refused whole when anything in them is wrong."""

from __future__ import annotations

import email
import email.policy
import json
import os
from typing import Any

import attrs
from treq.testing import StubTreq

from tests.fake_relay import settle
from tests.support import DeliveryCase
from tests.test_http_submission import AUTH, TOKEN
from tests.test_templates import receipt


class TemplateCase(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.templates = os.path.join(self.dir, "templates")
        receipt(self.templates)

    def configure_templates(self, queue: str = "", templates: str = "") -> None:
        self.configure(
            queue=queue,
            relays="[Relay]\nhost = a.test\nsecurity = none\ntimeout = 30s\n"
            "max_messages_per_connection = 10000\n"
            f"[Templates]\npath = {self.templates}\n{templates}",
        )
        self.config = attrs.evolve(
            self.config, status=attrs.evolve(self.config.status, token=TOKEN)
        )

    def post(self, body: Any) -> tuple[int, dict[str, Any]]:
        return self.post_json("/v1/messages", body, AUTH)

    def delivered(self) -> list[tuple[str, list[str], email.message.EmailMessage]]:
        return [
            (sender, list(rcpts), email.message_from_bytes(data, policy=email.policy.default))
            for sender, rcpts, data in self.relay.messages
        ]

    def count_commits(self) -> list[int]:
        """How many new messages each commit of the queue thread carried."""
        sizes: list[int] = []
        original = self.store.record_and_enqueue

        def counted(outcomes: Any, policy: Any, items: Any, *rest: Any) -> Any:
            if items:
                sizes.append(len(items))
            return original(outcomes, policy, items, *rest)

        self.store.record_and_enqueue = counted  # type: ignore[method-assign]
        return sizes


class TemplateSubmissionTests(TemplateCase):
    def test_one_message_from_a_template(self) -> None:
        self.configure_templates()
        self.start()
        code, body = self.post(
            {
                "from": "Shop <shop@example.com>",
                "to": "ann@example.org",
                "template": "receipt",
                "vars": {"name": "Ann & Co", "amount": "5"},
                "merge_global": {"number": "R-1", "name": "overridden"},
            }
        )
        self.assertEqual(code, 202, body)
        ((_, rcpts, message),) = self.delivered()
        self.assertEqual(rcpts, ["ann@example.org"])
        self.assertEqual(message["Subject"], "Your receipt R-1")
        self.assertIn("<p>Hello Ann &amp; Co,</p>", message.get_body(("html",)).get_content())

    def test_a_batch_of_1000_in_one_transaction_then_delivered(self) -> None:
        self.configure_templates()
        commits = self.count_commits()
        self.start()
        recipients = [
            {"to": f"p{n}@example.org", "vars": {"name": f"Person {n}", "amount": str(n)}}
            for n in range(1000)
        ]
        code, body = self.post(
            {
                "from": "shop@example.com",
                "template": "receipt",
                "merge_global": {"number": "B-1"},
                "recipients": recipients,
            }
        )
        self.assertEqual(code, 202)
        self.assertEqual(len(set(body["ids"])), 1000)
        self.assertEqual(
            [m["recipients"] for m in body["messages"][:2]],
            [["p0@example.org"], ["p1@example.org"]],
        )
        self.assertIn(1000, commits, "the batch went into one commit")
        delivered = self.delivered()
        self.assertEqual(len(delivered), 1000)
        for _, rcpts, message in delivered[:50]:
            (address,) = rcpts
            self.assertEqual(str(message["To"]), address, "nobody sees another recipient")
            number = address[1 : address.index("@")]
            text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
            self.assertEqual(text, f"Hello Person {number},\nyou paid {number}.\n")

    def test_a_batch_is_refused_whole(self) -> None:
        self.configure_templates(queue="max_queue_size = 5\n", templates="max_batch = 10\n")
        self.start()
        self.relay.refuse = True  # nothing leaves: the queue fills
        good = {"from": "shop@example.com", "template": "receipt", "merge_global": {"number": "1"}}

        def people(count: int, short: int = -1) -> list[dict[str, Any]]:
            """``count`` recipients; the one at ``short`` lacks a variable."""
            return [
                {
                    "to": f"p{n}@example.org",
                    "vars": {"name": "x", **({} if n == short else {"amount": "1"})},
                }
                for n in range(count)
            ]

        cases = [
            (
                {**good, "recipients": people(11)},
                400,
                "11 recipients, over [Templates] max_batch (10)",
            ),
            ({**good, "recipients": people(6)}, 507, "a batch of 6 does not fit"),
            ({**good, "recipients": people(3, short=1)}, 400, "recipients[1]: template receipt:"),
            ({**good, "recipients": []}, 400, "'recipients' must be a list"),
            ({**good, "recipients": people(2), "to": "x@example.org"}, 400, "each recipient gives"),
            ({**good, "recipients": people(2), "subject": "s"}, 400, "no subject"),
            ({**good, "template": "nope", "to": "a@example.org"}, 400, "no template 'nope'"),
            (
                {"from": "a@example.com", "subject": "s", "vars": {}},
                400,
                "'vars' goes with 'template'",
            ),
        ]
        for request, status, words in cases:
            code, body = self.post(request)
            self.assertEqual(code, status, (request, body))
            self.assertIn(words, body["error"])
        self.assertEqual(self.store.counts()["accepted"], 0, "nothing was queued")

    def test_a_variable_cannot_inject_headers(self) -> None:
        self.configure_templates()
        self.start()
        code, body = self.post(
            {
                "from": "shop@example.com",
                "to": "ann@example.org",
                "template": "receipt",
                "vars": {"number": "1\r\nBcc: x@evil.example", "name": "a", "amount": "1"},
            }
        )
        self.assertEqual(code, 400)
        self.assertEqual(self.store.counts()["accepted"], 0)

    def test_without_templates_configured(self) -> None:
        self.configure()
        self.config = attrs.evolve(
            self.config, status=attrs.evolve(self.config.status, token=TOKEN)
        )
        self.start()
        code, body = self.post({"from": "a@example.com", "to": "b@example.org", "template": "x"})
        self.assertEqual(
            (code, body["error"]), (400, "no templates: set [Templates] path in the config")
        )


class OriginTests(TemplateCase):
    """What built a message is kept with it, secrets redacted, and shown."""

    def get(self, path: str) -> tuple[int, str]:
        stub = StubTreq(self.service.status.site.resource)
        response = stub.get(f"http://status.test{path}", headers=AUTH)
        stub.flush()
        settle(self.clock)
        stub.flush()
        result = self.successResultOf(response)
        return result.code, self.successResultOf(result.content()).decode()

    def test_the_template_and_its_variables_secrets_redacted(self) -> None:
        self.configure_templates()
        self.relay.refuse = True  # it stays queued, its headers still kept
        self.start()
        token = "Zx81kq0PLmnb77aa01TTyu"
        code, body = self.post(
            {
                "from": "shop@example.com",
                "to": "ann@example.org",
                "template": "receipt",
                "vars": {
                    "name": "Ann",
                    "amount": "5",
                    "number": "R-9",
                    "reset_link": f"https://shop.example.com/reset?token={token}",
                    "api_key": "k",
                    "coupon": token,
                },
            }
        )
        self.assertEqual(code, 202, body)
        (message_id,) = [body["id"]]
        code, page = self.get(f"/v1/queue/{message_id}")
        shown = json.loads(page)
        self.assertEqual(
            shown["origin"],
            {
                "template": "receipt",
                "vars": {
                    "name": "Ann",
                    "amount": "5",
                    "number": "R-9",
                    "reset_link": "<redacted>",
                    "api_key": "<redacted>",
                    "coupon": "<redacted>",
                },
            },
        )
        code, page = self.get(f"/messages/{message_id}")
        self.assertEqual(code, 200)
        self.assertIn("Built from template receipt; vars: name=Ann, amount=5", page)
        self.assertIn('<td id="state">deferred</td>', page)
        self.assertIn("Subject: Your receipt R-9", page)
        self.assertIn("connection refused", page)
        raw = self.store._db.execute("SELECT meta FROM messages").fetchone()[0]
        self.assertNotIn(token, raw, "a secret is never stored")
        self.assertEqual(self.get("/messages/NOPE")[0], 404)
