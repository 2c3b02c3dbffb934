"""``smtpmailer test-api``: each provider's steps against its fake (good and bad keys, a
sender the provider does not allow, nothing delivered without --send-to), and the command as
a user runs it, over HTTP on 127.0.0.1."""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmailer.cli.api import find_relay, run_steps
from smtpmailer.cli.common import CommandError
from smtpmailer.config import parse_config
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

KEYS = {
    "sendgrid": f"api_key = {SENDGRID_KEY}\n",
    "mailgun": f"api_key = {MAILGUN_KEY}\ndomain = mg.example.com\n",
    "postmark": f"api_key = {test_api_postmark.TOKEN}\n",
    "resend": f"api_key = {test_api_resend.KEY}\n",
    "brevo": f"api_key = {test_api_brevo.KEY}\n",
    "mailjet": f"api_key = {test_api_mailjet.KEY}\n",
    "sparkpost": f"api_key = {test_api_sparkpost.KEY}\n",
    "ses": (
        f"region = eu-west-1\naccess_key_id = {test_api_ses.ACCESS}\n"
        f"secret_access_key = {test_api_ses.SECRET}\n"
    ),
}
WRONG = {
    "sendgrid": "api_key = SG.wrong\n",
    "mailgun": "api_key = key-wrong\ndomain = mg.example.com\n",
    "postmark": "api_key = wrong\n",
    "resend": "api_key = re_wrong\n",
    "brevo": "api_key = xkeysib-wrong\n",
    "mailjet": "api_key = wrong:wrong\n",
    "sparkpost": "api_key = wrong\n",
    "ses": (
        f"region = eu-west-1\naccess_key_id = {test_api_ses.ACCESS}\nsecret_access_key = wrong\n"
    ),
}


def relay_for(provider: str, keys: str, extra: str = "") -> Any:
    text = f"[API:{provider}]\nprovider = {provider}\n{keys}{extra}"
    return parse_config(text, "/etc/smtpmailer/smtpmailer.conf").relays[0]


class StepsTests(SynchronousTestCase):
    def fakes(self) -> dict[str, Any]:
        return {
            "sendgrid": FakeSendGrid(),
            "mailgun": FakeMailgun(),
            "postmark": test_api_postmark.FakePostmark(),
            "resend": test_api_resend.FakeResend(),
            "brevo": test_api_brevo.FakeBrevo(),
            "mailjet": test_api_mailjet.FakeMailjet(),
            "sparkpost": test_api_sparkpost.FakeSparkPost(),
            "ses": test_api_ses.FakeSES(),
        }

    def run_steps(
        self,
        provider: str,
        fake: Any,
        sender: str | None = "zoe@example.com",
        keys: str | None = None,
        send_to: str | None = None,
    ) -> tuple[str | None, list[str]]:
        lines: list[str] = []
        relay = relay_for(provider, KEYS[provider] if keys is None else keys)
        failed = self.successResultOf(
            Deferred.fromCoroutine(run_steps(relay, fake, lines.append, sender, send_to))
        )
        return failed, lines

    def test_every_provider_passes_with_a_good_key_and_delivers_nothing(self) -> None:
        for provider, fake in self.fakes().items():
            failed, lines = self.run_steps(provider, fake)
            self.assertIsNone(failed, f"{provider}: {lines}")
            self.assertTrue(lines[0].startswith(f"[API:{provider}] provider={provider}"))
            self.assertGreaterEqual(len(lines), 2)
            for line in lines[1:]:
                self.assertRegex(line, r"^  [a-z -]+: (ok|skipped) \(.+\)$", provider)
            self.assertEqual(fake.accepted, [], f"{provider} delivered something")
            self.assertNotIn(KEYS[provider].split("= ")[1].strip(), "\n".join(lines))

    def test_every_provider_fails_a_wrong_key_at_its_first_step(self) -> None:
        for provider, fake in self.fakes().items():
            failed, lines = self.run_steps(provider, fake, keys=WRONG[provider])
            self.assertIsNotNone(failed, provider)
            self.assertEqual(lines[1].split(":")[0].strip(), failed)
            self.assertIn("FAILED: credentials refused: HTTP 40", lines[1], provider)
            self.assertEqual(len(lines), 2, f"{provider}: stops at the failed step")

    def test_what_each_provider_says_of_a_sender_it_does_not_allow(self) -> None:
        fakes = self.fakes()
        fakes["sendgrid"].senders = {"zoe@example.com"}
        fakes["mailgun"].state = "unverified"
        expected = {
            "sendgrid": ("sandbox send", "does not match a verified Sender Identity"),
            "mailgun": ("domain", "domain mg.example.com is unverified, not active"),
            "resend": ("credentials and domain", "domain example.net is pending, not verified"),
            "brevo": ("sender", "old@example.com is inactive in Brevo"),
            "mailjet": ("sender", "new@example.com is Inactive in Mailjet, not Active"),
            "sparkpost": ("sending domain", "example.org: ownership not verified"),
            "ses": ("identity", "identity example.org is not verified for sending"),
        }
        senders = {
            "sendgrid": "other@example.com",
            "mailgun": None,
            "resend": "zoe@example.net",
            "brevo": "old@example.com",
            "mailjet": "new@example.com",
            "sparkpost": "zoe@example.org",
            "ses": "zoe@example.org",
        }
        for provider, (step, words) in expected.items():
            failed, lines = self.run_steps(provider, fakes[provider], sender=senders[provider])
            self.assertEqual(failed, step, f"{provider}: {lines}")
            self.assertIn(words, lines[-1], provider)

    def test_domains_the_provider_does_not_know(self) -> None:
        fakes = self.fakes()
        failed, lines = self.run_steps("sparkpost", fakes["sparkpost"], sender="a@nowhere.test")
        self.assertEqual(failed, "sending domain")
        self.assertIn("nowhere.test is not a sending domain of this account", lines[-1])
        failed, lines = self.run_steps("ses", fakes["ses"], sender="a@nowhere.test")
        self.assertEqual(failed, "identity")
        self.assertIn("nowhere.test is not an identity of this account in eu-west-1", lines[-1])

    def test_what_each_step_reports(self) -> None:
        fakes = self.fakes()
        _, lines = self.run_steps("ses", fakes["ses"])
        self.assertEqual(
            lines[1:],
            [
                "  account and quota: ok (sandbox; sent 3 of 200 in 24 h, at most 1/s)",
                "  identity: ok (domain verified for sending)",
            ],
        )
        _, lines = self.run_steps("brevo", fakes["brevo"])
        self.assertEqual(
            lines[1], "  credentials and quota: ok (ops@example.com: 287 credits (free, sendLimit))"
        )
        self.assertEqual(len(fakes["brevo"].dropped), 1, "the sandbox send was dropped")
        _, lines = self.run_steps("sendgrid", fakes["sendgrid"])
        self.assertEqual(lines[1], "  credentials: ok (2 scopes, mail.send among them)")
        (sandboxed,) = fakes["sendgrid"].sandboxed
        self.assertEqual(sandboxed["mail_settings"], {"sandbox_mode": {"enable": True}})
        _, lines = self.run_steps("mailgun", fakes["mailgun"], sender=None)
        self.assertIn("from postmaster@mg.example.com accepted in test mode", lines[2])
        self.assertEqual(fakes["mailgun"].test_mode[0]["o:testmode"], ["yes"])
        _, lines = self.run_steps("mailjet", fakes["mailjet"])
        self.assertEqual(len(fakes["mailjet"].sandboxed), 1)
        _, lines = self.run_steps("postmark", fakes["postmark"])
        self.assertEqual(lines[1], "  credentials: ok (server Production)")

    def test_a_key_that_may_only_send_still_passes_at_resend(self) -> None:
        fake = test_api_resend.FakeResend()
        fake.sending_only = True
        failed, lines = self.run_steps("resend", fake)
        self.assertIsNone(failed)
        self.assertIn("a sending-only key", lines[1])

    def test_without_a_sender_the_sender_steps_say_so(self) -> None:
        fakes = self.fakes()
        for provider in ("sendgrid", "brevo", "mailjet", "sparkpost", "ses"):
            failed, lines = self.run_steps(provider, fakes[provider], sender=None)
            self.assertIsNone(failed, provider)
            self.assertRegex(lines[-1], r": skipped \(give --from ADDRESS to check a sender")

    def test_a_real_send_only_with_send_to(self) -> None:
        fake = FakeSendGrid()
        failed, lines = self.run_steps("sendgrid", fake, send_to="ann@example.org")
        self.assertIsNone(failed)
        self.assertEqual(lines[-1], "  send to ann@example.org: ok (sent (HTTP 202 sg-1))")
        (sent,) = fake.accepted
        self.assertEqual(sent["personalizations"][0]["to"], [{"email": "ann@example.org"}])
        self.assertEqual(sent["subject"], "smtpmailer test-api")

    def test_the_relay_by_section_or_by_provider(self) -> None:
        config = parse_config(
            f"[API:eu]\nprovider = sendgrid\n{KEYS['sendgrid']}"
            f"[API:mg]\nprovider = mailgun\n{KEYS['mailgun']}"
            f"[API:mg2]\nprovider = mailgun\n{KEYS['mailgun']}",
            "/etc/smtpmailer/smtpmailer.conf",
        )
        self.assertEqual(find_relay(config, "eu").name, "eu")
        self.assertEqual(find_relay(config, "sendgrid").name, "eu")
        with self.assertRaises(CommandError) as caught:
            find_relay(config, "mailgun")
        self.assertIn(
            "2 sections use provider mailgun: name one ([API:mg], [API:mg2])", str(caught.exception)
        )
        with self.assertRaises(CommandError) as caught:
            find_relay(config, "postmark")
        self.assertIn("no [API:postmark] section", str(caught.exception))


class CommandTests(TestCase):
    """The command as a user runs it, against SendGrid's fake over HTTP."""

    timeout = 60

    async def run_command(self, key: str, *args: str) -> tuple[int, str, str]:
        from tests.daemon import environment, temporary_home

        fake = FakeSendGrid()
        served = ServedOverHTTP(fake, reactor)
        self.addCleanup(served.close)
        home = temporary_home(self)
        path = os.path.join(home, "smtpmailer.conf")
        with open(path, "w") as handle:
            handle.write(
                f"[Daemon]\nstate_dir = {home}\n[API:mail]\nprovider = sendgrid\n"
                f"api_key = {key}\nendpoint = {served.url}\n"
            )
        os.chmod(path, 0o600)
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            ["-m", "smtpmailer.cli", "--config", path, "test-api", *args],
            env=environment(),
        )
        self.assertEqual(fake.accepted, [], "nothing delivered")
        return code, out.decode(), err.decode()

    async def test_a_good_key(self) -> None:
        code, out, err = await self.run_command(
            SENDGRID_KEY, "--provider", "sendgrid", "--from", "zoe@example.com"
        )
        self.assertEqual((code, err), (0, ""))
        self.assertEqual(
            out.splitlines()[1:],
            [
                "  credentials: ok (2 scopes, mail.send among them)",
                "  sandbox send: ok (zoe@example.com accepted in sandbox mode (HTTP 200), "
                "nothing delivered)",
            ],
        )
        self.assertNotIn(SENDGRID_KEY, out)

    async def test_a_bad_key_names_the_step(self) -> None:
        code, out, err = await self.run_command("SG.revoked-key", "--provider", "mail")
        self.assertEqual(code, 1)
        self.assertIn("  credentials: FAILED: credentials refused: HTTP 401", out)
        self.assertEqual(err, "test-api: [API:mail] failed at step: credentials\n")
        self.assertNotIn("SG.revoked-key", out + err)
