"""Delivery through a relay that takes XOAUTH2/OAUTHBEARER: the whole service tree in
memory (task.Clock, the fake relay, the fake token endpoint), checked as an operator would:
the queue's states and reasons, /health, /metrics."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.defer import Deferred

from tests.fake_oauth2 import GOOGLE_INVALID_GRANT, TokenServer
from tests.fake_relay import settle
from tests.support import DeliveryCase

USER = "mailer@example.com"


class OAuth2DeliveryTests(DeliveryCase):
    mechanism = "xoauth2"

    def setUp(self) -> None:
        super().setUp()
        self.tokens = TokenServer(self.clock, lifetime=3600)
        self.refresh_file = os.path.join(self.dir, "refresh-token")
        self.authorize()
        self.relay.bearer = self.tokens.valid

    def authorize(self) -> None:
        """What ``smtpmailer oauth2 authorize`` leaves behind: a refresh token on disk."""
        with open(self.refresh_file, "w") as handle:
            handle.write(self.tokens.grant(USER) + "\n")
        os.chmod(self.refresh_file, 0o600)

    def configure_oauth2(self, relay: str = "") -> None:
        self.configure(
            f"[OAuth2:gmail]\nclient_id = client-1\nclient_secret = client-secret-1\n"
            f"refresh_token_file = {self.refresh_file}\ntoken_url = http://127.0.0.1/token\n"
            f"[Relay]\nhost = a.test\nsecurity = none\ntimeout = 30s\nauth = {self.mechanism}\n"
            f"oauth2 = gmail\nusername = {USER}\n{relay}"
        )

    def start_oauth2(self) -> None:
        self.start(token_poster=self.tokens.post)

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self.successResultOf(
            Deferred.fromCoroutine(self.service.status.health())
        )
        return result

    def metrics(self) -> str:
        return generate_latest(self.service.metrics.registry).decode()

    def test_delivers_with_a_fetched_token(self) -> None:
        self.configure_oauth2()
        message = self.enqueue()
        self.start_oauth2()
        self.assertEqual(self.state(message), "sent")
        self.assertEqual(self.relay.authenticated, [USER])
        (line,) = self.relay.auth_lines
        sent = base64.b64decode(line.split()[2]).decode()
        token = next(iter(self.tokens.access_tokens))
        if self.mechanism == "xoauth2":
            self.assertEqual(sent, f"user={USER}\x01auth=Bearer {token}\x01\x01")
        else:
            self.assertEqual(
                sent, f"n,a={USER},\x01host=a.test\x01port=25\x01auth=Bearer {token}\x01\x01"
            )
        self.assertIn(
            'smtpmailer_oauth2_refreshes_total{oauth2="gmail",result="ok"} 1.0', self.metrics()
        )

    def test_many_connections_one_refresh(self) -> None:
        self.configure_oauth2("max_connections = 4\nmax_messages_per_connection = 1\n")
        ids = [self.enqueue() for _ in range(12)]
        self.start_oauth2()
        self.assertEqual({self.state(i) for i in ids}, {"sent"})
        self.assertEqual(self.relay.connections, 12)
        self.assertEqual(self.tokens.grants_of("refresh_token"), 1)

    def test_a_revoked_token_is_refreshed_and_the_mail_sent_without_a_deferral(self) -> None:
        self.configure_oauth2()
        self.enqueue()
        self.start_oauth2()
        self.tokens.revoke_access()  # e.g. the user changed the account's password
        self.clock.advance(10)
        message = self.enqueue()
        self.service.poller.wake()
        settle(self.clock)
        info = self.store.show(message)
        self.assertEqual((info.state, info.attempts), ("sent", 1))
        self.assertEqual(self.tokens.grants_of("refresh_token"), 2)
        self.assertEqual(len(self.relay.authenticated), 2)
        # The refused exchange ended as the mechanism says: the JSON challenge, then 535.
        refused = self.relay.auth_lines[2]
        self.assertEqual(refused, "" if self.mechanism == "xoauth2" else "AQ==")

    def test_a_token_refused_twice_defers_with_the_servers_reason(self) -> None:
        self.relay.bearer = lambda user, token: False
        self.configure_oauth2()
        message = self.enqueue()
        self.start_oauth2()
        info = self.store.show(message)
        self.assertEqual(info.state, "deferred")
        self.assertEqual(
            info.recipients[0].last_error,
            f"a.test:25: authentication failed ({self.mechanism.upper()}): "
            "535 5.7.8 Username and Password not accepted.",
        )
        self.assertEqual(self.relay.connections, 2, "one retry on a new connection, no more")
        self.assertEqual(self.tokens.grants_of("refresh_token"), 2, "refreshed once between")

    def test_invalid_grant_defers_names_itself_on_health_and_resumes_after_authorize(
        self,
    ) -> None:
        self.tokens.revoke_refresh(open(self.refresh_file).read().strip())
        self.configure_oauth2()
        message = self.enqueue()
        self.start_oauth2()
        info = self.store.show(message)
        reason = (
            f"oauth2 gmail: invalid_grant: {GOOGLE_INVALID_GRANT}; "
            "run: smtpmailer oauth2 authorize gmail"
        )
        self.assertEqual(info.state, "deferred", "never failed for a token")
        self.assertEqual(info.recipients[0].last_error, f"a.test:25: {reason}")
        self.assertEqual(self.relay.connections, 0, "no connection without a token")
        self.assertIn("relay=a.test[none]", "\n".join(self.lines))
        self.assertTrue(any(reason in line for line in self.lines), "the log line says it")
        health = self.health()
        self.assertEqual(health["status"], "fail")
        self.assertIn(reason, health["reasons"])  # type: ignore[operator]
        self.assertEqual(health["oauth2"]["gmail"]["ok"], False)  # type: ignore[index]
        metrics = self.metrics()
        self.assertIn(
            'smtpmailer_oauth2_refreshes_total{oauth2="gmail",result="invalid_grant"} 1.0', metrics
        )
        self.assertIn('smtpmailer_oauth2_ok{oauth2="gmail"} 0.0', metrics)
        self.assertIn('smtpmailer_relay_auth_failures_total{relay="a.test"} 1.0', metrics)
        self.authorize()
        self.clock.advance(61)  # retry_delay
        settle(self.clock)
        self.assertEqual(self.state(message), "sent")
        self.assertEqual(self.health()["status"], "ok")
        self.assertIn('smtpmailer_oauth2_ok{oauth2="gmail"} 1.0', self.metrics())

    def test_token_endpoint_down_defers(self) -> None:
        self.tokens.broken = (503, b"<html><body>Service Unavailable</body></html>")
        self.configure_oauth2()
        message = self.enqueue()
        self.start_oauth2()
        info = self.store.show(message)
        self.assertEqual(info.state, "deferred")
        self.assertEqual(
            info.recipients[0].last_error,
            "a.test:25: oauth2 gmail: HTTP 503: the token endpoint gave no OAuth error",
        )

    def test_secrets_stay_out_of_the_queue_the_log_and_config_output(self) -> None:
        from smtpmailer.config import render_config

        self.configure_oauth2()
        first = self.enqueue()
        self.start_oauth2()
        # A revoked access token, then a revoked grant: every path that reports a token.
        self.tokens.revoke_access()
        self.tokens.revoke_refresh(open(self.refresh_file).read().strip())
        self.clock.advance(10)
        second = self.enqueue()
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual(self.state(second), "deferred")
        now = self.clock.seconds()
        shown = [json.dumps(self.store.show(m).as_json(now)) for m in (first, second)]
        text = "\n".join(
            [*self.lines, *shown, render_config(self.config), json.dumps(self.health())]
        )
        text += self.metrics()
        from smtpmailer.web.dashboard import render_dashboard

        view = self.successResultOf(Deferred.fromCoroutine(self.service.status.dashboard_view()))
        page = render_dashboard(view)
        self.assertIn("invalid_grant", page, "the dashboard shows the reason")
        text += page
        secrets = ["client-secret-1", *self.tokens.every_access_token]
        secrets += [form["refresh_token"] for form in self.tokens.requests]
        self.assertEqual(len(secrets), 4)  # the client secret, a token, two refreshes
        for secret in secrets:
            self.assertNotIn(secret, text)

    def test_reload_keeps_an_unchanged_section_and_its_token(self) -> None:
        self.configure_oauth2()
        self.enqueue()
        self.start_oauth2()
        before = self.service.delivery.tokens.get("gmail")
        self.successResultOf(self.service.reload.request())
        self.assertIs(self.service.delivery.tokens.get("gmail"), before)
        self.clock.advance(10)
        self.enqueue()
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual(self.tokens.grants_of("refresh_token"), 1, "the token was kept")

    def test_reload_with_a_new_client_secret_uses_it_at_the_next_refresh(self) -> None:
        self.configure_oauth2()
        self.enqueue()
        self.start_oauth2()
        path = self.config.path
        with open(path) as handle:
            text = handle.read()
        self.tokens.clients["client-1"] = "client-secret-2"  # rotated in the console
        with open(path, "w") as handle:
            handle.write(text.replace("client-secret-1", "client-secret-2"))
        self.successResultOf(self.service.reload.request())
        status = json.load(open(os.path.join(self.dir, "reload.json")))
        self.assertIn("[OAuth2:gmail] client_secret", json.dumps(status))
        self.assertNotIn("client-secret-2", json.dumps(status) + "\n".join(self.lines))
        # The access token in hand stays good (a new secret does not revoke it); the next
        # refresh goes out with the new secret.
        self.clock.advance(3600)
        message = self.enqueue()
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual(self.state(message), "sent")
        self.assertEqual(self.tokens.requests[-1]["client_secret"], "client-secret-2")


class OAuthBearerDeliveryTests(OAuth2DeliveryTests):
    mechanism = "oauthbearer"
