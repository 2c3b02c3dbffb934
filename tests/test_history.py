"""Every attempt on record, as a user looks for it: a message deferred with 451 and then
sent shows both attempts (time, relay, each recipient's reply) in ``queue show``, its JSON,
``/v1/queue/ID`` and the console's ``show()``; an API relay's message id is among them."""

from __future__ import annotations

import io
import json
import os
from typing import Any

from smtpmailer.cli import main
from tests.fake_relay import settle
from tests.fake_sendgrid import KEY, FakeSendGrid
from tests.test_status import StatusCase


class HistoryTests(StatusCase):
    def deliver_451_then_250(self) -> str:
        self.relay.data_replies = ["451 4.7.1 greylisted, try again in 5 minutes"]
        message_id = self.enqueue("ann@example.org")
        self.start()
        self.assertEqual(self.state(message_id), "deferred")
        self.clock.advance(601)
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual(self.state(message_id), "sent")
        return message_id

    def cli(self, *args: str) -> str:
        out, err = io.StringIO(), io.StringIO()
        code = main(["--config", self.config.path, *args], out=out, err=err)
        self.assertEqual((code, err.getvalue()), (0, ""))
        return out.getvalue()

    def test_queue_show_prints_the_timeline(self) -> None:
        message_id = self.deliver_451_then_250()
        shown = self.cli("queue", "show", message_id)
        timeline = shown.split("attempts:\n", 1)[1].splitlines()
        self.assertRegex(
            timeline[0], r"^  #1 \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC a\.test \(a\.test\["
        )
        self.assertEqual(
            timeline[1],
            "      <ann@example.org> deferred: 451 4.7.1 greylisted, try again in 5 minutes",
        )
        self.assertRegex(timeline[2], r"^  #2 .* UTC a\.test .* in \d+\.\d\ds$")
        self.assertEqual(timeline[3], "      <ann@example.org> sent: 250 2.0.0 OK")

    def test_queue_show_json_and_the_http_api_list_the_attempts(self) -> None:
        message_id = self.deliver_451_then_250()
        shown = json.loads(self.cli("queue", "show", message_id, "--json"))
        code, served = self.get(f"/v1/queue/{message_id}")
        self.assertEqual(code, 200)
        for record in (shown, served):
            self.assertEqual(record["attempt_count"], 2)
            first, second = record["attempts"]
            self.assertEqual([first["number"], second["number"]], [1, 2])
            self.assertLess(first["time"], second["time"])
            self.assertEqual(first["relay"], "a.test")
            self.assertEqual(
                [(r["recipient"], r["status"], r["code"]) for r in first["replies"]],
                [("ann@example.org", "deferred", 451)],
            )
            self.assertEqual(second["replies"][0]["code"], 250)
            self.assertRegex(second["at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")

    def test_the_console_shows_the_attempts(self) -> None:
        message_id = self.deliver_451_then_250()
        report: Any = self.successResultOf(self.service.manhole.helpers.show(message_id))
        self.assertIn("<ann@example.org> deferred: 451 4.7.1 greylisted", str(report))
        self.assertIn("<ann@example.org> sent: 250 2.0.0 OK", str(report))

    def test_an_api_relays_message_id_is_recorded(self) -> None:
        self.configure(
            f"[API:sendgrid]\nprovider = sendgrid\napi_key = {KEY}\n"
            "endpoint = https://api.sendgrid.test\n"
        )
        os.chmod(self.config.path, 0o600)  # it holds the key
        message_id = self.enqueue("ann@example.org")
        data = b"From: app@example.com\r\nTo: ann@example.org\r\nSubject: s\r\n\r\nhello\r\n"
        self.store._db.execute(
            "UPDATE bodies SET data = ? WHERE message_id = ?", (data, message_id)
        )
        self.start(http_client=FakeSendGrid(self.clock))
        shown = json.loads(self.cli("queue", "show", message_id, "--json"))
        (attempt,) = shown["attempts"]
        self.assertEqual(attempt["relay"], "api:sendgrid")
        (reply,) = attempt["replies"]
        self.assertEqual((reply["code"], reply["remote_id"]), (202, "sg-1"))
        self.assertIn(
            "<ann@example.org> sent: HTTP 202 sg-1", self.cli("queue", "show", message_id)
        )
