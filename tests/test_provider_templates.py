"""Provider templates: a submission naming the API provider's own template and its
variables reaches each provider that has templates in the provider's own form (at its fake),
is refused at intake when its sender's mail may go to a relay without templates, and fails
clearly (never a blank message) if it reaches one anyway."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import attrs

from smtpmailer.cli import main
from smtpmailer.message import build_message
from tests import test_api_brevo, test_api_mailjet, test_api_postmark, test_api_resend
from tests.fake_mailgun import KEY as MAILGUN_KEY
from tests.fake_mailgun import FakeMailgun
from tests.fake_sendgrid import KEY as SENDGRID_KEY
from tests.fake_sendgrid import FakeSendGrid
from tests.support import DeliveryCase
from tests.test_http_submission import AUTH, TOKEN

VARIABLES = {"name": "Ann", "order": {"number": 42, "items": ["tea", "cake"]}}


class ProviderTemplateDeliveryTests(DeliveryCase):
    def deliver(self, provider: str, keys: str, fake: Any, template: str) -> Any:
        self.configure(f"[API:{provider}]\nprovider = {provider}\n{keys}")
        envelope = build_message(
            sender="Shop <shop@example.com>",
            to=["Ann <ann@example.org>"],
            bcc=["audit@example.org"],
            subject="",
            now=self.clock.seconds(),
            provider_template=(template, VARIABLES),
        )
        message_id = self.store.enqueue(
            envelope.sender, list(envelope.recipients), envelope.data, 5, self.clock.seconds(), 100
        )
        self.start(http_client=fake)
        return self.store.show(message_id)

    def test_sendgrid_dynamic_template(self) -> None:
        fake = FakeSendGrid(self.clock)
        info = self.deliver("sendgrid", f"api_key = {SENDGRID_KEY}\n", fake, "d-1a2b3c")
        self.assertEqual(info.state, "sent")
        (sent,) = fake.accepted
        self.assertEqual(sent["template_id"], "d-1a2b3c")
        (personalization,) = sent["personalizations"]
        self.assertEqual(personalization["dynamic_template_data"], VARIABLES)
        self.assertEqual(personalization["to"], [{"email": "ann@example.org", "name": "Ann"}])
        self.assertEqual(personalization["bcc"], [{"email": "audit@example.org"}])
        self.assertNotIn("content", sent)
        self.assertNotIn("subject", sent)

    def test_postmark_with_template_by_id_and_by_alias(self) -> None:
        fake = test_api_postmark.FakePostmark()
        info = self.deliver("postmark", f"api_key = {test_api_postmark.TOKEN}\n", fake, "123456")
        self.assertEqual(info.state, "sent")
        (sent,) = fake.accepted
        self.assertEqual(sent["_path"], "email/withTemplate")
        self.assertEqual((sent["TemplateId"], sent["TemplateModel"]), (123456, VARIABLES))
        self.assertNotIn("TextBody", sent)
        self.assertNotIn("Subject", sent)

    def test_postmark_alias(self) -> None:
        fake = test_api_postmark.FakePostmark()
        self.deliver("postmark", f"api_key = {test_api_postmark.TOKEN}\n", fake, "welcome-v2")
        (sent,) = fake.accepted
        self.assertEqual(sent["TemplateAlias"], "welcome-v2")

    def test_mailgun_stored_template(self) -> None:
        fake = FakeMailgun()
        keys = f"api_key = {MAILGUN_KEY}\ndomain = mg.example.com\n"
        info = self.deliver("mailgun", keys, fake, "order-shipped")
        self.assertEqual(info.state, "sent")
        (sent,) = fake.accepted
        self.assertEqual(sent["template"], ["order-shipped"])
        self.assertEqual(json.loads(sent["t:variables"][0]), VARIABLES)
        self.assertEqual(sent["to"], ["ann@example.org", "audit@example.org"])
        self.assertEqual(sent["from"], ["Shop <shop@example.com>"])
        self.assertEqual(sent["v:smtpmailer_id"], [info.id])

    def test_brevo_template(self) -> None:
        fake = test_api_brevo.FakeBrevo()
        info = self.deliver("brevo", f"api_key = {test_api_brevo.KEY}\n", fake, "17")
        self.assertEqual(info.state, "sent")
        (sent,) = fake.accepted
        self.assertEqual((sent["templateId"], sent["params"]), (17, VARIABLES))
        self.assertNotIn("htmlContent", sent)

    def test_mailjet_template(self) -> None:
        fake = test_api_mailjet.FakeMailjet()
        info = self.deliver("mailjet", f"api_key = {test_api_mailjet.KEY}\n", fake, "4815162")
        self.assertEqual(info.state, "sent")
        (sent,) = fake.accepted
        self.assertEqual(
            (sent["TemplateID"], sent["TemplateLanguage"], sent["Variables"]),
            (4815162, True, VARIABLES),
        )
        self.assertNotIn("TextPart", sent)

    def test_a_number_where_the_provider_wants_one(self) -> None:
        fake = test_api_brevo.FakeBrevo()
        info = self.deliver("brevo", f"api_key = {test_api_brevo.KEY}\n", fake, "welcome")
        self.assertEqual(info.state, "failed")
        self.assertIn("Brevo template ids are numbers: 'welcome'", info.recipients[0].last_error)
        self.assertEqual(fake.accepted, [])

    def test_a_provider_without_templates_fails_it_clearly(self) -> None:
        fake = test_api_resend.FakeResend()
        info = self.deliver("resend", f"api_key = {test_api_resend.KEY}\n", fake, "x")
        self.assertEqual(info.state, "failed")
        self.assertIn("Resend relays send no provider templates", info.recipients[0].last_error)
        self.assertEqual(fake.accepted, [])

    def test_an_smtp_relay_fails_it_rather_than_send_a_blank_message(self) -> None:
        self.configure()
        envelope = build_message(
            sender="shop@example.com", to=["ann@example.org"], subject="",
            now=self.clock.seconds(), provider_template=("d-1", {}),
        )  # fmt: skip
        message_id = self.store.enqueue(
            envelope.sender, list(envelope.recipients), envelope.data, 5, self.clock.seconds(), 100
        )
        self.start()
        info = self.store.show(message_id)
        self.assertEqual(info.state, "failed")
        self.assertIn("names provider template d-1: only an API relay", info.last_error or "")
        self.assertEqual(self.relay.messages, [])


class ProviderTemplateIntakeTests(DeliveryCase):
    def configure_routes(self) -> None:
        self.configure(
            f"[API:sg]\nprovider = sendgrid\napi_key = {SENDGRID_KEY}\npriority = 1\n"
            "[Relay:smtp]\nhost = a.test\nsecurity = none\npriority = 2\n"
            "[Route:billing]\nsender = *@billing.example.com\nvia = sg\n"
        )
        self.config = attrs.evolve(
            self.config, status=attrs.evolve(self.config.status, token=TOKEN)
        )

    def post(self, body: Any) -> tuple[int, dict[str, Any]]:
        return self.post_json("/v1/messages", body, AUTH)

    def test_over_http_only_where_every_relay_on_the_path_has_templates(self) -> None:
        self.configure_routes()
        fake = FakeSendGrid(self.clock)
        self.start(http_client=fake)
        code, body = self.post(
            {
                "from": "invoices@billing.example.com",
                "to": "ann@example.org",
                "provider_template": "d-77",
                "vars": {"total": "9.00"},
            }
        )
        self.assertEqual(code, 202, body)
        (sent,) = fake.accepted
        self.assertEqual(sent["template_id"], "d-77")
        self.assertEqual(sent["personalizations"][0]["dynamic_template_data"], {"total": "9.00"})
        code, body = self.post(
            {"from": "news@example.com", "to": "ann@example.org", "provider_template": "d-77"}
        )
        self.assertEqual(code, 400)
        self.assertEqual(
            body["error"],
            "provider_template needs an API relay with templates (sendgrid, postmark, mailgun, "
            "brevo, mailjet): mail from news@example.com may go to relay smtp (smtp), which "
            "has none",
        )

    def test_a_batch_of_provider_templates(self) -> None:
        self.configure_routes()
        fake = FakeSendGrid(self.clock)
        self.start(http_client=fake)
        code, body = self.post(
            {
                "from": "invoices@billing.example.com",
                "provider_template": "d-77",
                "merge_global": {"shop": "Tea & Co"},
                "recipients": [
                    {"to": "a@example.org", "vars": {"total": "1"}},
                    {"to": "b@example.org", "vars": {"total": "2"}},
                ],
            }
        )
        self.assertEqual(code, 202, body)
        data = sorted(
            (
                s["personalizations"][0]["to"][0]["email"],
                s["personalizations"][0]["dynamic_template_data"],
            )
            for s in fake.accepted
        )
        self.assertEqual(
            data,
            [
                ("a@example.org", {"shop": "Tea & Co", "total": "1"}),
                ("b@example.org", {"shop": "Tea & Co", "total": "2"}),
            ],
        )

    def test_from_the_command_line(self) -> None:
        self.configure_routes()
        os.chmod(self.config.path, 0o600)

        def cli(*args: str) -> tuple[int, str]:
            out, err = io.StringIO(), io.StringIO()
            code = main(["--config", self.config.path, "send", *args], out=out, err=err)
            return code, out.getvalue() + err.getvalue()

        code, said = cli(
            "--from", "invoices@billing.example.com", "--to", "ann@example.org",
            "--provider-template", "d-9", "--var", "total=3",
        )  # fmt: skip
        self.assertEqual(code, 0, said)
        code, said = cli(
            "--from", "news@example.com", "--to", "ann@example.org",
            "--provider-template", "d-9",
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("may go to relay smtp (smtp), which has none", said)
        self.assertEqual(self.store.counts()["accepted"], 1)
