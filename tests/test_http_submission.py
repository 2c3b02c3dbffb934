"""POST /v1/messages: in memory for every answer it can give, then against a live twistd
with schemathesis (driven by docs/openapi.yaml) and real delivery, checked byte for byte."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from typing import Any

import attrs
from treq.testing import StubTreq
from twisted.trial.unittest import TestCase

from tests.daemon import REPO, Daemon, started_peer, temporary_home, wait_until
from tests.fake_relay import settle
from tests.support import DeliveryCase

TOKEN = "t0ken-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class InMemoryTests(DeliveryCase):
    def setUp(self) -> None:
        super().setUp()
        self.configure(queue="max_message_size = 8KB\nmax_queue_size = 3\n")
        self.config = attrs.evolve(
            self.config, status=attrs.evolve(self.config.status, token=TOKEN)
        )

    def post(
        self,
        body: Any,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        stub = StubTreq(self.service.status.site.resource)
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        response = stub.post(
            "http://status.test/v1/messages",
            data=data,
            headers={"Content-Type": content_type, **(AUTH if headers is None else headers)},
        )
        stub.flush()
        settle(self.clock)
        stub.flush()
        result = self.successResultOf(response)
        return result.code, json.loads(self.successResultOf(result.content()))

    def test_json_is_queued_then_delivered(self) -> None:
        self.start()
        code, body = self.post(
            {
                "from": "Shop <shop@example.com>",
                "to": ["a@example.org"],
                "cc": [],
                "bcc": ["audit@example.org"],
                "subject": "Your order",
                "text": "Thanks",
                "html": "<p>Thanks</p>",
                "headers": {"X-Order": "42"},
                "priority": "high",
                "attachments": [
                    {"filename": "invoice.pdf", "content": base64.b64encode(b"%PDF fake").decode()}
                ],
            }
        )
        self.assertEqual(code, 202)
        self.assertEqual(body["recipients"], ["a@example.org", "audit@example.org"])
        (sent,) = self.relay.messages
        self.assertEqual(sent[0], "shop@example.com")
        self.assertIn(b"X-Order: 42", sent[2])
        self.assertIn(b"invoice.pdf", sent[2])
        self.assertNotIn(b"audit@", sent[2])

    def test_raw_message(self) -> None:
        self.start()
        raw = b"From: a@example.com\r\nTo: b@example.org\r\nBcc: c@example.org\r\n\r\nhi\r\n"
        code, body = self.post(raw, "message/rfc822")
        self.assertEqual((code, body["recipients"]), (202, ["b@example.org", "c@example.org"]))

    def test_refusals(self) -> None:
        self.start()
        good = {"from": "a@example.com", "to": "b@example.org", "subject": "s"}
        cases = [
            (b"{not json", 400, "not JSON"),
            (b"[" * 20_000, 400, "nested too deeply"),
            ([1, 2], 400, "JSON object"),
            ({"to": "b@example.org", "subject": "s"}, 400, "'from' and 'subject' are required"),
            ({**good, "subject": "s\r\nBcc: v@example.org"}, 400, "CR/LF"),
            ({**good, "to": "not an address"}, 400, "not an email address"),
            ({**good, "headers": {"X-A": "1\nBcc: v@x.org"}}, 400, "CR/LF"),
            ({**good, "attachments": [{"filename": "a", "content": "%%%"}]}, 400, "base64"),
            ({**good, "surprise": 1}, 400, "unknown field(s): surprise"),
            ({**good, "priority": True}, 400, "priority"),
            ({**good, "html": None}, 400, "'html' must be a string"),
            ({**good, "text": "x" * 9000}, 413, "over max_message_size (8KB)"),
        ]
        for body, code, reason in cases:
            got, answer = self.post(body)
            self.assertEqual(got, code, (body, answer))
            self.assertIn(reason, answer["error"])
        self.assertEqual(self.post(b"hello", "text/plain")[0], 415)
        self.assertEqual(self.post(good, headers={})[0], 401)
        self.assertEqual(self.post(good, headers={"Authorization": "Bearer nope"})[0], 401)
        self.assertEqual(self.store.counts()["accepted"], 0, "nothing was queued")

    def test_full_queue_is_507(self) -> None:
        self.relay.refuse = True  # keep the queue full
        self.start()
        good = {"from": "a@example.com", "to": "b@example.org", "subject": "s"}
        for _ in range(3):
            self.assertEqual(self.post(good)[0], 202)
        code, body = self.post(good)
        self.assertEqual(code, 507)
        self.assertIn("queue is full", body["error"])

    def test_off_without_a_token(self) -> None:
        self.config = attrs.evolve(self.config, status=attrs.evolve(self.config.status, token=None))
        self.start()
        code, body = self.post(
            {"from": "a@example.com", "to": "b@example.org", "subject": "s"}, headers={}
        )
        self.assertEqual(code, 403)
        self.assertIn("set [Status] token_file", body["error"])


class LiveTests(TestCase):
    timeout = 300

    def setUp(self) -> None:
        self.home = temporary_home(self)
        self.relay = started_peer(self)
        token = os.path.join(self.home, "token")
        with open(token, "w") as handle:
            handle.write(TOKEN + "\n")
        os.chmod(token, 0o600)
        self.daemon = Daemon(
            os.path.join(self.home, "d"),
            f"[Relay]\nhost = 127.0.0.1\nport = {self.relay.port}\nsecurity = none\n",
            status=f"token_file = {token}",
        )
        self.addCleanup(self.daemon.stop)
        self.daemon.start()
        path = os.path.join(self.daemon.state_dir, "status.url")
        wait_until(lambda: os.path.exists(path), what="status.url")
        self.url = open(path).read().strip()

    def post(self, data: bytes, content_type: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            self.url + "/v1/messages",
            data=data,
            method="POST",
            headers={"Content-Type": content_type, **AUTH},
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            return response.status, json.loads(response.read())

    def test_raw_message_arrives_byte_for_byte(self) -> None:
        raw = (
            b"From: App <app@example.com>\r\nTo: b@example.org\r\nBcc: c@example.org\r\n"
            b"Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\nDate: Sun, 22 Nov 2026 05:00:00 +0000\r\n"
            b"Message-ID: <1@example.com>\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"\r\n\xc3\xbcber 8-bit\r\n.dot\r\n"
        )
        code, body = self.post(raw, "message/rfc822")
        self.assertEqual(code, 202)
        wait_until(lambda: len(self.relay.messages()) == 1, what="delivery")
        (arrived,) = self.relay.messages()
        self.assertEqual(arrived.recipients, ["b@example.org", "c@example.org"])
        self.assertEqual(arrived.data, raw.replace(b"Bcc: c@example.org\r\n", b""))
        self.assertEqual(self.daemon.message(body["id"])["state"], "sent")

    def test_schemathesis_against_the_live_endpoint(self) -> None:
        """Every answer matches docs/openapi.yaml; invalid input is refused; nothing 5xx.
        (Positive-data acceptance is left out: a schema cannot say 'a deliverable address'.)"""
        binary = os.path.join(os.path.dirname(sys.executable), "schemathesis")
        result = subprocess.run(
            [
                binary,
                "run",
                os.path.join(REPO, "docs", "openapi.yaml"),
                "--url",
                self.url,
                "-H",
                f"Authorization: Bearer {TOKEN}",
                "--max-examples",
                "40",
                "--seed",
                "1",
                "--exclude-checks",
                "positive_data_acceptance",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=280,
            cwd=self.home,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-4000:] + result.stderr[-2000:])
        self.assertRegex(result.stdout, r"\d+ generated, \d+ passed")

    def chunked_post(self, chunks: int, chunk: bytes) -> tuple[int, dict[str, Any]]:
        """POST a body in HTTP chunks, with no Content-Length, over a raw socket."""
        import http.client
        import urllib.parse

        address = urllib.parse.urlsplit(self.url)
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        self.addCleanup(connection.close)
        connection.putrequest("POST", "/v1/messages")
        connection.putheader("Content-Type", "message/rfc822")
        connection.putheader("Authorization", AUTH["Authorization"])
        connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        try:
            for _ in range(chunks):
                connection.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            connection.send(b"0\r\n\r\n")
        except OSError:
            pass  # the daemon may answer and close before the client has sent it all
        response = connection.getresponse()
        return response.status, json.loads(response.read())

    def rss(self) -> int:
        assert self.daemon.process is not None
        with open(f"/proc/{self.daemon.process.pid}/status") as handle:
            line = next(line for line in handle if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def test_a_chunked_body_is_counted_as_it_arrives(self) -> None:
        """The size limit held only for Content-Length: a chunked body was read whole into
        memory (RSS +2x the body), then refused. Now it is counted and dropped unread."""
        head = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: s\r\n\r\n"
        code, body = self.chunked_post(1, head + b"small\r\n")
        self.assertEqual(code, 202, body)
        before = self.rss()
        code, body = self.chunked_post(1024, head + b"x" * 65536)  # 64 MB: over the 33 MB limit
        self.assertEqual(code, 413, body)
        self.assertIn("over max_message_size", body["error"])
        self.assertLess(self.rss() - before, 16 << 20, "the refused body was kept in memory")
