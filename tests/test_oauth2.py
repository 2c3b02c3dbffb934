"""OAuth2: the XOAUTH2 and OAUTHBEARER wire formats, the token source (refresh timing,
single flight, rotation, the cache, invalid_grant) with task.Clock, and the token endpoint
over real HTTP on 127.0.0.1."""

from __future__ import annotations

import base64
import json
import os
import stat
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmailer.config import parse_config
from smtpmailer.delivery.smtp import auth
from smtpmailer.delivery.smtp.protocol import SMTPClientProtocol
from smtpmailer.oauth2.endpoint import HTTPPoster
from smtpmailer.oauth2.source import RETRY_AFTER, TokenError, TokenSource
from tests.fake_oauth2 import GOOGLE_INVALID_GRANT, TokenServer


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class WireFormatTests(SynchronousTestCase):
    """Byte for byte what goes to the server, and the refused-token exchange."""

    def setUp(self) -> None:
        self.protocol = SMTPClientProtocol(Clock(), timeout=10)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.reply("220 relay.test ESMTP")
        self.refused: list[str] = []
        self.credentials = auth.Credentials(
            "mailer@example.com", lambda: succeed("ya29.TOKEN"), self.refused.append
        )

    def sent(self) -> bytes:
        value = bytes(self.transport.value())
        self.transport.clear()
        return value

    def reply(self, line: str) -> None:
        self.protocol.dataReceived(line.encode() + b"\r\n")

    def test_xoauth2(self) -> None:
        result = Deferred.fromCoroutine(
            auth.xoauth2(self.protocol, self.credentials, ("smtp.gmail.com", 587))
        )
        initial = b64("user=mailer@example.com\x01auth=Bearer ya29.TOKEN\x01\x01")
        self.assertEqual(self.sent(), f"AUTH XOAUTH2 {initial}\r\n".encode())
        self.reply("235 2.7.0 Accepted")
        self.assertEqual(self.successResultOf(result).code, 235)
        self.assertEqual(self.refused, [])

    def test_oauthbearer(self) -> None:
        result = Deferred.fromCoroutine(
            auth.oauthbearer(self.protocol, self.credentials, ("smtp.example.com", 587))
        )
        initial = b64(
            "n,a=mailer@example.com,\x01host=smtp.example.com\x01port=587\x01"
            "auth=Bearer ya29.TOKEN\x01\x01"
        )
        self.assertEqual(self.sent(), f"AUTH OAUTHBEARER {initial}\r\n".encode())
        self.reply("235 2.7.0 Accepted")
        self.assertEqual(self.successResultOf(result).code, 235)

    def test_refused_token_gets_the_json_challenge_then_535(self) -> None:
        result = Deferred.fromCoroutine(
            auth.xoauth2(self.protocol, self.credentials, ("smtp.gmail.com", 587))
        )
        self.sent()
        challenge = b64('{"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}')
        self.reply(f"334 {challenge}")
        self.assertEqual(self.sent(), b"\r\n", "XOAUTH2 answers the challenge with an empty line")
        self.reply("535 5.7.8 Username and Password not accepted.")
        reply = self.successResultOf(result)
        self.assertEqual(reply.code, 535)
        self.assertEqual(self.refused, ["ya29.TOKEN"])

    def test_oauthbearer_ends_a_refusal_with_ctrl_a(self) -> None:
        result = Deferred.fromCoroutine(
            auth.oauthbearer(self.protocol, self.credentials, ("smtp.example.com", 587))
        )
        self.sent()
        self.reply("334 " + b64('{"status":"invalid_token"}'))
        self.assertEqual(self.sent(), b"AQ==\r\n")  # base64 of ^A, RFC 7628 3.2.3
        self.reply("535 5.7.8 Authentication unsuccessful")
        self.assertEqual(self.successResultOf(result).code, 535)
        self.assertEqual(self.refused, ["ya29.TOKEN"])

    def test_auto_prefers_xoauth2_for_a_token(self) -> None:
        self.assertEqual(
            auth.choose("auto", "PLAIN LOGIN XOAUTH2 OAUTHBEARER", True, True), "XOAUTH2"
        )
        self.assertEqual(auth.choose("auto", "PLAIN OAUTHBEARER", True, True), "OAUTHBEARER")
        self.assertEqual(
            auth.choose("oauthbearer", "XOAUTH2 OAUTHBEARER", True, True), "OAUTHBEARER"
        )


def section(folder: str, extra: str = "", name: str = "gmail") -> str:
    return (
        f"[OAuth2:{name}]\nprovider = google\nclient_id = client-1\n"
        f"client_secret = client-secret-1\nrefresh_token_file = {folder}/refresh-token\n"
        f"token_url = http://127.0.0.1/token\n{extra}"
    )


def oauth2_config(folder: str, extra: str = "", relay: str = "") -> Any:
    text = (
        f"[Daemon]\nstate_dir = {folder}/state\n" + section(folder, extra) + "[Relay]\n"
        "host = smtp.gmail.com\nauth = xoauth2\noauth2 = gmail\nusername = mailer@example.com\n"
        + relay
    )
    return parse_config(text, os.path.join(folder, "c.conf"))


class Logged:
    """Every log line smtpmailer writes during a test, as text."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def text(self) -> str:
        from twisted.logger import formatEvent

        return "\n".join(formatEvent(e) for e in self.events)


class TokenSourceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "state"))
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = TokenServer(self.clock, lifetime=3600)
        self.refresh_file = os.path.join(self.dir, "refresh-token")
        self.write_refresh(self.server.grant("mailer@example.com"))
        self.log = Logged(self)

    def write_refresh(self, token: str) -> None:
        with open(self.refresh_file, "w") as handle:
            handle.write(token + "\n")
        os.chmod(self.refresh_file, 0o600)

    def source(self, extra: str = "") -> TokenSource:
        config = oauth2_config(self.dir, extra)
        self.counted: list[tuple[str, str]] = []
        return TokenSource(
            config.oauth2[0],
            config.daemon.state_dir,
            self.clock,
            self.server.post,
            counted=lambda section, result: self.counted.append((section, result)),
        )

    def refreshes(self) -> int:
        return self.server.grants_of("refresh_token")

    def test_token_is_reused_until_refresh_before_its_expiry(self) -> None:
        source = self.source()  # refresh_before = 10m by default
        first = self.successResultOf(source.token())
        self.assertTrue(self.server.valid("mailer@example.com", first))
        self.clock.advance(3600 - 600 - 1)
        self.assertEqual(self.successResultOf(source.token()), first)
        self.assertEqual(self.refreshes(), 1)
        self.clock.advance(2)
        second = self.successResultOf(source.token())
        self.assertNotEqual(second, first)
        self.assertEqual(self.refreshes(), 2)

    def test_short_lived_tokens_are_renewed_at_half_their_life(self) -> None:
        self.server.lifetime = 4
        source = self.source()
        first = self.successResultOf(source.token())
        self.clock.advance(1.9)
        self.assertEqual(self.successResultOf(source.token()), first)
        self.clock.advance(0.2)
        self.assertNotEqual(self.successResultOf(source.token()), first)
        self.assertEqual(self.refreshes(), 2)

    def test_one_refresh_however_many_connections_wait(self) -> None:
        self.server.stall = True
        source = self.source()
        waiting = [source.token() for _ in range(20)]
        self.assertEqual(len(self.server.stalled), 1, "one request for twenty waiters")
        for waiter in waiting:
            self.assertNoResult(waiter)
        self.server.stalled[0].callback(self.server.answer(self.server.requests[-1]))
        tokens = {self.successResultOf(waiter) for waiter in waiting}
        self.assertEqual(len(tokens), 1)
        self.assertEqual(self.server.issued, 1)

    def test_a_waiter_that_gives_up_leaves_the_refresh_to_the_others(self) -> None:
        self.server.stall = True
        source = self.source()
        impatient, patient = source.token(), source.token()
        impatient.cancel()
        self.failureResultOf(impatient)
        self.server.stalled[0].callback(self.server.answer(self.server.requests[-1]))
        self.assertTrue(self.successResultOf(patient).startswith("ya29."))

    def test_a_rotated_refresh_token_is_on_disk_before_its_access_token_is_used(self) -> None:
        self.server.rotate = True
        source = self.source()
        before = open(self.refresh_file).read().strip()
        seen_on_disk: list[str] = []
        got = source.token()
        got.addCallback(lambda token: seen_on_disk.append(open(self.refresh_file).read().strip()))
        self.successResultOf(got)
        (rotated,) = seen_on_disk
        self.assertNotEqual(rotated, before)
        self.assertIn(rotated, self.server.refresh_tokens, "the file holds the new token")
        self.assertNotIn(before, self.server.refresh_tokens)
        self.assertEqual(stat.S_IMODE(os.stat(self.refresh_file).st_mode), 0o600)
        # No temporary file left behind, and the next refresh uses the rotated token.
        self.assertEqual(sorted(os.listdir(self.dir)), ["refresh-token", "state"])
        self.clock.advance(3600)
        self.successResultOf(source.token())
        self.assertEqual(self.server.requests[-1]["refresh_token"], rotated)

    def test_the_cache_spares_a_restart_a_refresh(self) -> None:
        token = self.successResultOf(self.source().token())
        cache = os.path.join(self.dir, "state", "oauth2", "gmail.json")
        self.assertEqual(stat.S_IMODE(os.stat(cache).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(cache)).st_mode), 0o700)
        after_restart = self.source()
        self.assertEqual(self.successResultOf(after_restart.token()), token)
        self.assertEqual(self.refreshes(), 1)

    def test_the_cache_is_not_used_for_another_client_or_account(self) -> None:
        self.successResultOf(self.source().token())
        self.server.clients["client-2"] = None
        other = self.source().config
        moved = TokenSource(
            attrs.evolve(other, client_id="client-2", client_secret=None),
            os.path.join(self.dir, "state"),
            self.clock,
            self.server.post,
        )
        self.successResultOf(moved.token())
        self.assertEqual(self.refreshes(), 2)
        # A new consent (oauth2 authorize) is another grant: its own token too.
        self.write_refresh(self.server.grant("other@example.com"))
        self.successResultOf(self.source().token())
        self.assertEqual(self.refreshes(), 3)

    def test_a_damaged_cache_costs_one_refresh(self) -> None:
        self.successResultOf(self.source().token())
        with open(os.path.join(self.dir, "state", "oauth2", "gmail.json"), "w") as handle:
            handle.write("{not json")
        self.successResultOf(self.source().token())
        self.assertEqual(self.refreshes(), 2)

    def test_invalid_grant_says_what_to_run_and_waits_for_a_new_refresh_token(self) -> None:
        source = self.source()
        self.server.revoke_refresh(open(self.refresh_file).read().strip())
        error = self.failureResultOf(source.token(), TokenError).value
        self.assertEqual(
            str(error),
            f"oauth2 gmail: invalid_grant: {GOOGLE_INVALID_GRANT}; "
            "run: smtpmailer oauth2 authorize gmail",
        )
        self.assertEqual(source.problem, str(error))
        self.assertEqual(self.log.text().count("run: smtpmailer oauth2 authorize gmail"), 1)
        asked = len(self.server.requests)
        for _ in range(5):
            self.clock.advance(RETRY_AFTER * 10)
            self.failureResultOf(source.token(), TokenError)
        self.assertEqual(len(self.server.requests), asked, "the refused token is not sent again")
        self.assertEqual(self.counted, [("gmail", "invalid_grant")], "one request, counted once")
        self.assertEqual(self.log.text().count("invalid_grant"), 1, "logged once, not per try")
        self.write_refresh(self.server.grant("mailer@example.com"))  # oauth2 authorize
        self.assertTrue(self.successResultOf(source.token()).startswith("ya29."))
        self.assertIsNone(source.problem)
        self.assertIn("oauth2 gmail: tokens again", self.log.text())

    def test_no_refresh_token_yet(self) -> None:
        os.unlink(self.refresh_file)
        error = self.failureResultOf(self.source().token(), TokenError).value
        self.assertIn(f"no refresh token in {self.refresh_file}", str(error))
        self.assertIn("run: smtpmailer oauth2 authorize gmail", str(error))

    def test_endpoint_down_is_asked_again_after_a_while_not_per_connection(self) -> None:
        self.server.broken = (503, b"<html>Service Unavailable</html>")
        source = self.source()
        error = self.failureResultOf(source.token(), TokenError).value
        self.assertEqual(
            str(error), "oauth2 gmail: HTTP 503: the token endpoint gave no OAuth error"
        )
        self.failureResultOf(source.token(), TokenError)
        self.assertEqual(len(self.server.requests), 1)
        self.server.broken = None
        self.clock.advance(RETRY_AFTER)
        self.successResultOf(source.token())
        self.assertIsNone(source.problem)

    def test_a_token_still_good_is_used_while_the_endpoint_is_down(self) -> None:
        source = self.source()
        token = self.successResultOf(source.token())
        self.clock.advance(3600 - 300)  # within refresh_before: a refresh is due
        self.server.broken = (500, b"")
        self.assertEqual(self.successResultOf(source.token()), token)
        self.assertIsNotNone(source.problem, "/health still says refreshes fail")
        self.clock.advance(300)  # expired now: nothing left to hand out
        self.failureResultOf(source.token(), TokenError)

    def test_a_refused_token_is_dropped_and_the_next_ask_refreshes(self) -> None:
        source = self.source()
        token = self.successResultOf(source.token())
        source.rejected("ya29.some-older-token")  # a stale report changes nothing
        self.assertEqual(self.successResultOf(source.token()), token)
        source.rejected(token)
        self.assertNotEqual(self.successResultOf(source.token()), token)
        self.assertEqual(self.refreshes(), 2)

    def test_secrets_never_reach_the_log(self) -> None:
        source = self.source()
        refresh = open(self.refresh_file).read().strip()
        token = self.successResultOf(source.token())
        self.server.revoke_refresh(refresh)
        source.rejected(token)
        self.failureResultOf(source.token())
        text = self.log.text() + repr(source.config) + str(source.problem)
        for secret in (token, refresh, "client-secret-1"):
            self.assertNotIn(secret, text)


class FlowTests(SynchronousTestCase):
    """What each flow sends, checked by the fake endpoint as the real one would."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = TokenServer(self.clock)

    def load(self, text: str) -> Any:
        relay = "[Relay]\nhost = smtp.test\nauth = xoauth2\noauth2 = o\nusername = u@example.com\n"
        return parse_config(text + relay, os.path.join(self.dir, "c.conf")).oauth2[0]

    def test_client_credentials_for_microsoft_365(self) -> None:
        config = self.load(
            "[OAuth2:o]\nprovider = microsoft\nflow = client_credentials\n"
            "tenant = 2f5e0a1c-0000-4000-8000-000000000001\nclient_id = client-1\n"
            "client_secret = client-secret-1\n"
        )
        self.assertEqual(
            config.token_url,
            "https://login.microsoftonline.com/2f5e0a1c-0000-4000-8000-000000000001"
            "/oauth2/v2.0/token",
        )
        self.assertEqual(config.scope, "https://outlook.office365.com/.default")
        source = TokenSource(config, None, self.clock, self.server.post)
        self.successResultOf(source.token())
        (form,) = self.server.requests
        self.assertEqual(form["grant_type"], "client_credentials")
        self.assertEqual(form["scope"], "https://outlook.office365.com/.default")

    def test_wrong_client_secret(self) -> None:
        config = self.load(
            "[OAuth2:o]\nprovider = microsoft\nflow = client_credentials\ntenant = contoso.com\n"
            "client_id = client-1\nclient_secret = wrong\n"
        )
        source = TokenSource(config, None, self.clock, self.server.post)
        error = self.failureResultOf(source.token(), TokenError).value
        self.assertEqual(
            str(error),
            "oauth2 o: invalid_client: The OAuth client was not found.; "
            "check client_id and the client secret",
        )

    def test_service_account_signs_a_jwt_for_the_mailbox(self) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        email = "mailer@project.iam.gserviceaccount.com"
        key_file = os.path.join(self.dir, "sa.json")
        with open(key_file, "w") as handle:
            json.dump(
                {
                    "type": "service_account",
                    "client_email": email,
                    "private_key": pem,
                    "private_key_id": "kid-1",
                    "token_uri": "https://oauth2.googleapis.com/token",
                },
                handle,
            )
        os.chmod(key_file, 0o600)
        self.server.public_keys[email] = key.public_key()
        config = self.load(
            f"[OAuth2:o]\nprovider = google\nflow = service_account\n"
            f"service_account_file = {key_file}\nsubject = boss@example.com\n"
            f"token_url = {self.server.token_url}\n"
        )
        self.assertNotIn("PRIVATE KEY", repr(config))
        source = TokenSource(config, None, self.clock, self.server.post)
        token = self.successResultOf(source.token())
        self.assertTrue(self.server.valid("boss@example.com", token), "issued for the subject")
        import jwt

        assertion = self.server.requests[0]["assertion"]
        self.assertEqual(jwt.get_unverified_header(assertion)["kid"], "kid-1")
        claims = jwt.decode(assertion, options={"verify_signature": False})
        self.assertEqual(claims["exp"] - claims["iat"], 3600)
        self.assertEqual(claims["iss"], email)


class HTTPEndpointTests(TestCase):
    """The token endpoint over real HTTP on 127.0.0.1, through httpclient."""

    timeout = 30

    def setUp(self) -> None:
        self.server = TokenServer(reactor, lifetime=3600)
        self.url = self.server.listen(reactor)
        self.addCleanup(self.server.close)
        self.post = HTTPPoster(reactor)
        self.addCleanup(self.post.close)

    def form(self, refresh: str) -> dict[str, str]:
        return {
            "grant_type": "refresh_token",
            "refresh_token": refresh,
            "client_id": "client-1",
            "client_secret": "client-secret-1",
        }

    async def test_a_token_over_http(self) -> None:
        status, body = await self.post(self.url, self.form(self.server.grant("u")), 5)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(body)["token_type"], "Bearer")

    async def test_invalid_grant_over_http(self) -> None:
        from smtpmailer.oauth2.grants import TokenEndpointError, read_answer

        status, body = await self.post(self.url, self.form("1//revoked"), 5)
        self.assertEqual(status, 400)
        with self.assertRaises(TokenEndpointError) as caught:
            read_answer(status, body)
        self.assertEqual(caught.exception.error, "invalid_grant")
        self.assertTrue(caught.exception.lasting)

    async def test_a_stalled_endpoint_times_out(self) -> None:
        from smtpmailer.oauth2.grants import TokenEndpointError

        self.server.stall = True
        with self.assertRaises(TokenEndpointError) as caught:
            await self.post(self.url, self.form("x"), 0.3)
        self.assertEqual(
            str(caught.exception), "timeout: no answer from the token endpoint in 0.3s"
        )

    async def test_nothing_listening(self) -> None:
        from smtpmailer.oauth2.grants import TokenEndpointError

        await self.server.close()
        with self.assertRaises(TokenEndpointError) as caught:
            await self.post(self.url, self.form("x"), 5)
        self.assertEqual(str(caught.exception), "unreachable: connection refused")
