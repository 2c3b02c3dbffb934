"""XOAUTH2 and OAUTHBEARER end to end: ``twistd -n smtpmailer`` delivering to aiosmtpd over
STARTTLS, with access tokens from the token endpoint on 127.0.0.1 that expire every few
seconds and a refresh token the endpoint rotates on every use."""

from __future__ import annotations

import json
import os
import stat
import time
import urllib.error
import urllib.request

from tests.daemon import Daemon, fill_queue, wait_until
from tests.fake_oauth2 import ThreadedTokenEndpoint, TokenServer, WallClock
from tests.smtp_peer import SMTPPeer
from tests.support import EndToEndCase

USER = "mailer@example.com"
LIFETIME = 4.0  # seconds: renewed at half of it, so a refresh every 2 s of the run


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class OAuth2EndToEndTests(EndToEndCase):
    timeout = 180

    def setUp(self) -> None:
        super().setUp()
        self.tokens = TokenServer(WallClock(), lifetime=LIFETIME, rotate=True)
        self.endpoint = ThreadedTokenEndpoint(self.tokens)
        self.endpoint.start()
        self.addCleanup(self.endpoint.stop)
        self.refresh_file = os.path.join(self.home, "refresh-token")
        self.authorize()

    def authorize(self) -> None:
        """What ``oauth2 authorize`` leaves: a fresh grant in refresh_token_file."""
        path = self.refresh_file + ".new"
        with open(path, "w") as handle:
            handle.write(self.tokens.grant(USER) + "\n")
        os.chmod(path, 0o600)
        os.replace(path, self.refresh_file)

    def start_oauth2(self, mechanism: str, relay: str = "") -> tuple[SMTPPeer, Daemon]:
        peer = SMTPPeer(tls_cert=self.server_cert, bearer=self.tokens.valid)
        port = peer.start()
        self.addCleanup(peer.stop)
        section = (
            self.relay_section(
                port,
                auth=mechanism,
                username=USER,
                password_file="",
                max_connections="8",
            )
            + f"oauth2 = gmail\n{relay}"
        )
        oauth2 = (
            f"[OAuth2:gmail]\nclient_id = client-1\nclient_secret = client-secret-1\n"
            f"refresh_token_file = {self.refresh_file}\ntoken_url = {self.tokens.token_url}\n"
            "timeout = 5s\n"
        )
        daemon = Daemon(os.path.join(self.home, "d"), section, extra=oauth2)
        os.chmod(daemon.config_path, 0o600)
        self.addCleanup(daemon.stop)
        return peer, daemon

    def refresh_times(self) -> list[float]:
        return [
            t
            for t, form in zip(self.tokens.times, self.tokens.requests, strict=True)
            if form.get("grant_type") == "refresh_token"
        ]

    def test_200_messages_over_8_connections_with_tokens_expiring_every_few_seconds(self) -> None:
        peer, daemon = self.start_oauth2(
            "xoauth2", "max_messages_per_connection = 5\nrate_limit = 25/s\n"
        )
        fill_queue(daemon, 200)
        began = time.time()
        daemon.start()
        wait_until(lambda: daemon.states() == {"sent": 200}, timeout=90, what="200 sent")
        ran = time.time() - began
        self.assertEqual(len({m.header("X-Seq") for m in peer.messages()}), 200)
        self.assertEqual({m.authenticated_as for m in peer.messages()}, {USER})
        # Every AUTH on those connections (40 and more) got a token still good; one refresh
        # per half-life of a token at most, never two at once for the 8 connections.
        times = self.refresh_times()
        self.assertGreaterEqual(len(peer.auth_attempts), 40)
        self.assertGreaterEqual(len(times), int(ran / LIFETIME), "tokens expired during the run")
        self.assertLessEqual(len(times), int(ran / (LIFETIME / 2)) + 2)
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        self.assertGreater(min(gaps), LIFETIME / 2 - 0.5, f"two refreshes at once: {gaps}")
        self.assertEqual({accepted for _, _, accepted in peer.auth_attempts}, {True})
        self.assertNotIn("authentication failed", daemon.log())
        # The rotated refresh token is on disk, private, and the one the endpoint honours.
        on_disk = open(self.refresh_file).read().strip()
        self.assertEqual(self.tokens.refresh_tokens, {on_disk: USER})
        self.assertEqual(stat.S_IMODE(os.stat(self.refresh_file).st_mode), 0o600)
        cache = os.path.join(daemon.state_dir, "oauth2", "gmail.json")
        self.assertEqual(stat.S_IMODE(os.stat(cache).st_mode), 0o600)
        # After a restart (and without the cache) it is the rotated token that is used.
        daemon.stop()
        os.unlink(cache)
        asked = len(self.refresh_times())
        daemon.start()
        daemon.send("--from", "app@example.com", "--to", "a@example.org", "--subject", "after")
        wait_until(lambda: daemon.states() == {"sent": 201}, what="the message after a restart")
        self.assertEqual(len(self.refresh_times()), asked + 1)
        refresh_forms = [f for f in self.tokens.requests if f["grant_type"] == "refresh_token"]
        self.assertEqual(refresh_forms[asked]["refresh_token"], on_disk)
        log = daemon.log()
        for secret in [*self.tokens.every_access_token, on_disk, "client-secret-1"]:
            self.assertNotIn(secret, log)

    def test_a_token_revoked_mid_run_is_refreshed_without_a_deferral(self) -> None:
        self.tokens.lifetime = 3600  # only the revocation makes a new token needed
        peer, daemon = self.start_oauth2(
            "xoauth2", "max_messages_per_connection = 5\nrate_limit = 20/s\n"
        )
        fill_queue(daemon, 60)
        daemon.start()
        wait_until(lambda: len(peer.messages()) >= 20, what="20 delivered")
        self.tokens.revoke_access()  # e.g. the account's password was changed
        wait_until(lambda: daemon.states() == {"sent": 60}, what="60 sent")
        refused = [attempt for attempt in peer.auth_attempts if not attempt[2]]
        self.assertGreaterEqual(len(refused), 1, "the revoked token was offered and refused")
        self.assertEqual(self.tokens.grants_of("refresh_token"), 2, "one refresh for it")
        with daemon.db() as db:
            self.assertEqual(db.execute("SELECT max(attempts) FROM messages").fetchone(), (1,))
        self.assertNotIn("status=deferred", daemon.log())

    def test_invalid_grant_defers_shows_on_health_and_resumes_after_authorize(self) -> None:
        self.tokens.revoke_refresh(open(self.refresh_file).read().strip())
        peer, daemon = self.start_oauth2("oauthbearer")
        daemon.start()
        message = daemon.send(
            "--from", "app@example.com", "--to", "a@example.org", "--subject", "s"
        )
        reason = (
            "oauth2 gmail: invalid_grant: Token has been expired or revoked.; "
            "run: smtpmailer oauth2 authorize gmail"
        )
        wait_until(lambda: reason in daemon.log(), what="the invalid_grant line")
        shown = daemon.message(message)
        self.assertEqual(shown["state"], "deferred")
        self.assertIn(reason, shown["recipients"][0]["last_error"])
        health = daemon.cli("health")
        self.assertEqual(health.returncode, 1)
        self.assertIn("invalid_grant", health.stdout)
        url = open(os.path.join(daemon.state_dir, "status.url")).read().strip()
        code, body = fetch(url + "/health")
        self.assertEqual(code, 503)
        self.assertIn(reason, json.loads(body)["reasons"])
        asked = len(self.tokens.requests)
        self.authorize()
        wait_until(lambda: daemon.states() == {"sent": 1}, what="delivery after authorize")
        self.assertEqual(peer.messages()[0].authenticated_as, USER)
        self.assertEqual(daemon.cli("health").returncode, 0)
        # While the grant was refused, the endpoint was not asked again and again.
        self.assertLessEqual(asked, 2)

    def test_smtpmailer_test_shows_the_oauth2_steps(self) -> None:
        peer, daemon = self.start_oauth2("xoauth2")
        result = daemon.cli("test")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertRegex(
            result.stdout,
            r"\n  oauth2 gmail: token ok, expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(in \ds\)\n"
            r"  connect: ok",
        )
        self.assertIn("AUTH(OAUTHBEARER XOAUTH2)", result.stdout)
        self.assertIn("AUTH XOAUTH2: ok", result.stdout)
        for secret in self.tokens.every_access_token:
            self.assertNotIn(secret, result.stdout)
        self.tokens.revoke_refresh(open(self.refresh_file).read().strip())
        failed = daemon.cli("test")
        self.assertEqual(failed.returncode, 1)
        self.assertIn("FAILED: oauth2 gmail: invalid_grant", failed.stdout)
