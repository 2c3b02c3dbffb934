"""``smtpmailer oauth2 authorize`` and ``oauth2 token`` as a user runs them: real processes
against the token endpoint on 127.0.0.1, the test playing the user's browser."""

from __future__ import annotations

import os
import queue
import re
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from urllib.parse import parse_qs, urlencode, urlsplit

from twisted.trial.unittest import SynchronousTestCase

from tests.daemon import environment, temporary_home
from tests.fake_oauth2 import ThreadedTokenEndpoint, TokenServer, WallClock

USER = "mailer@example.com"


class Running:
    """A CLI process whose output is read line by line as it comes, with a deadline."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "smtpmailer.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=environment(),
            text=True,
        )
        self.lines: list[str] = []
        self._arriving: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._arriving.put(line)
        self._arriving.put(None)

    def line_matching(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._arriving.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r}: {''.join(self.lines)}")

    def finish(self) -> tuple[int, str, str]:
        assert self.process.stderr is not None
        code = self.process.wait(timeout=60)
        self._reader.join(10)
        while not self._arriving.empty():
            line = self._arriving.get()
            if line is not None:
                self.lines.append(line)
        return code, "".join(self.lines), self.process.stderr.read()


class OAuth2CommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.home = temporary_home(self)
        self.server = TokenServer(WallClock(), lifetime=3600)
        self.endpoint = ThreadedTokenEndpoint(self.server)
        self.endpoint.start()
        self.addCleanup(self.endpoint.stop)
        self.refresh_file = os.path.join(self.home, "refresh-token")
        self.write_config()

    def write_config(self, oauth2: str = "") -> None:
        self.config = os.path.join(self.home, "smtpmailer.conf")
        with open(self.config, "w") as handle:
            handle.write(
                f"[Daemon]\nstate_dir = {self.home}/state\n"
                f"[OAuth2:gmail]\nclient_id = client-1\nclient_secret = client-secret-1\n"
                f"refresh_token_file = {self.refresh_file}\ntoken_url = {self.server.token_url}\n"
                f"authorize_url = https://accounts.example.com/o/oauth2/auth\n{oauth2}"
                f"[Relay]\nhost = smtp.example.com\nauth = xoauth2\noauth2 = gmail\n"
                f"username = {USER}\n"
            )
        os.chmod(self.config, 0o600)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "smtpmailer.cli", "--config", self.config, *args],
            capture_output=True,
            text=True,
            env=environment(),
            timeout=60,
        )

    def give_refresh_token(self) -> str:
        token = self.server.grant(USER)
        with open(self.refresh_file, "w") as handle:
            handle.write(token + "\n")
        os.chmod(self.refresh_file, 0o600)
        return token

    def test_token_reports_its_expiry_never_the_token(self) -> None:
        self.give_refresh_token()
        result = self.cli("oauth2", "token", "gmail")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertRegex(
            result.stdout,
            r"^oauth2 gmail: got an access token; it expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC "
            r"\(in (59m \d+s|1h)\)\n$",
        )
        (token,) = self.server.every_access_token
        self.assertNotIn(token, result.stdout + result.stderr)

    def test_token_with_a_revoked_grant_says_what_to_run(self) -> None:
        self.server.revoke_refresh(self.give_refresh_token())
        result = self.cli("oauth2", "token", "gmail")
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr,
            "smtpmailer: oauth2 gmail: invalid_grant: Token has been expired or revoked.; "
            "run: smtpmailer oauth2 authorize gmail\n",
        )

    def test_token_when_the_endpoint_stalls(self) -> None:
        self.give_refresh_token()
        self.write_config("timeout = 1s\n")
        self.server.stall = True
        result = self.cli("oauth2", "token", "gmail")
        self.assertEqual(result.returncode, 1)
        self.assertIn(
            "oauth2 gmail: timeout: no answer from the token endpoint in 1s", result.stderr
        )

    def browser(self, url: str) -> tuple[int, str]:
        """What the user's browser does after consent: follow the redirect to us."""
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def test_authorize_with_pkce_and_a_loopback_redirect(self) -> None:
        running = Running("--config", self.config, "oauth2", "authorize", "gmail")
        found = running.line_matching(r"^(https://accounts\.example\.com/\S+)$")
        query = {k: v[0] for k, v in parse_qs(urlsplit(found.group(1)).query).items()}
        self.assertEqual(query["client_id"], "client-1")
        self.assertEqual(query["response_type"], "code")
        self.assertEqual(query["code_challenge_method"], "S256")
        self.assertEqual(query["login_hint"], USER)
        self.assertEqual(query["scope"], "https://mail.google.com/")
        self.assertEqual((query["access_type"], query["prompt"]), ("offline", "consent"))
        redirect = query["redirect_uri"]
        self.assertRegex(redirect, r"^http://127\.0\.0\.1:\d+/$")
        # A redirect that is not ours (wrong state) is turned away; the real one completes.
        status, _ = self.browser(redirect + "?" + urlencode({"code": "x", "state": "forged"}))
        self.assertEqual(status, 400)
        self.server.codes["code-1"] = (USER, query["code_challenge"], redirect)
        status, page = self.browser(
            redirect + "?" + urlencode({"code": "code-1", "state": query["state"]})
        )
        self.assertEqual((status, "authorized" in page), (200, True))
        code, out, err = running.finish()
        self.assertEqual(code, 0, err)
        self.assertIn(f"refresh token written to {self.refresh_file} (mode 0600)", out)
        written = open(self.refresh_file).read().strip()
        self.assertEqual(self.server.refresh_tokens.get(written), USER)
        self.assertEqual(stat.S_IMODE(os.stat(self.refresh_file).st_mode), 0o600)
        self.assertNotIn(written, out + err)
        # And the section now works.
        self.assertEqual(self.cli("oauth2", "token", "gmail").returncode, 0)

    def test_authorize_refused_by_the_user(self) -> None:
        running = Running("--config", self.config, "oauth2", "authorize", "gmail")
        found = running.line_matching(r"^(https://accounts\.example\.com/\S+)$")
        query = {k: v[0] for k, v in parse_qs(urlsplit(found.group(1)).query).items()}
        self.browser(
            query["redirect_uri"]
            + "?"
            + urlencode({"error": "access_denied", "state": query["state"]})
        )
        code, _, err = running.finish()
        self.assertEqual(code, 1)
        self.assertEqual(err, "smtpmailer: oauth2 gmail: the provider refused: access_denied\n")
        self.assertFalse(os.path.exists(self.refresh_file))

    def test_authorize_with_the_device_flow(self) -> None:
        self.write_config(
            "provider = microsoft\ntenant = consumers\n"
            f"device_url = {self.endpoint.base}/devicecode\n"
        )
        running = Running("--config", self.config, "oauth2", "authorize", "gmail", "--device")
        running.line_matching(
            r"Open https://microsoft\.com/devicelogin and enter the code ABCD-EFGH"
        )
        self.server.approve_device(USER)
        code, out, err = running.finish()
        self.assertEqual(code, 0, err)
        written = open(self.refresh_file).read().strip()
        self.assertEqual(self.server.refresh_tokens.get(written), USER)

    def test_device_flow_where_the_provider_has_none(self) -> None:
        result = self.cli("oauth2", "authorize", "gmail", "--device")
        self.assertEqual(result.returncode, 1)
        self.assertIn("google has no device flow for this scope", result.stderr)

    def test_unknown_section(self) -> None:
        result = self.cli("oauth2", "token", "gmial")
        self.assertEqual(result.returncode, 1)
        self.assertTrue(
            result.stderr.endswith("smtpmailer: no [OAuth2:gmial] section (sections: gmail)\n")
        )
