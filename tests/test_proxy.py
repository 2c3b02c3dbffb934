"""[Daemon] http_proxy against a real proxy (Debian's tinyproxy, with Basic auth) on
127.0.0.1: HTTPS to a SendGrid-shaped server through the CONNECT tunnel, its certificate
checked end to end; the proxy's refusal in one line; and a real twistd delivering through
an [API] relay by way of the proxy, its password in no log line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from typing import Any

from twisted.internet import reactor, ssl
from twisted.trial.unittest import TestCase

from smtpmailer.httpclient import HTTPFailure, PooledClient, Request
from smtpmailer.proxy import parse_proxy
from tests.fake_http import ServedOverHTTP
from tests.fake_sendgrid import KEY, FakeSendGrid
from tools.ports import fixed_port

PASSWORD = "s3cret-proxy-pass"


class TinyProxy:
    """tinyproxy in the foreground on a port of its own, allowing CONNECT to any port."""

    def __init__(self, test: TestCase) -> None:
        binary = shutil.which("tinyproxy")
        if binary is None:
            test.fail("tinyproxy is missing: make test installs it")
        self.home = tempfile.mkdtemp(prefix="smtpm-proxy-")
        test.addCleanup(shutil.rmtree, self.home, True)
        self.port = fixed_port()
        self.log = os.path.join(self.home, "tinyproxy.log")
        config = os.path.join(self.home, "tinyproxy.conf")
        with open(config, "w") as handle:
            handle.write(
                f"Port {self.port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\n"
                f"Allow 127.0.0.1\nBasicAuth user {PASSWORD}\n"
                f'LogFile "{self.log}"\nLogLevel Info\nPidFile "{self.home}/tinyproxy.pid"\n'
            )
        self.process = subprocess.Popen(
            [binary, "-d", "-c", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        test.addCleanup(self.stop)
        from tests.daemon import wait_until

        wait_until(self._listening, what="tinyproxy to listen")

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"tinyproxy exited: {self.logged()}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def url(self, password: str = PASSWORD) -> str:
        return f"http://user:{password}@127.0.0.1:{self.port}"

    def logged(self) -> str:
        try:
            with open(self.log, errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class ClientThroughProxyTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        from tests.certs import TestCA

        self.proxy = TinyProxy(self)
        folder = tempfile.mkdtemp(prefix="smtpm-ca-")
        self.addCleanup(shutil.rmtree, folder, True)
        self.ca = TestCA(folder)
        # The client trusts the system's CAs (OpenSSL's default paths): here, ours.
        previous = os.environ.get("SSL_CERT_FILE")
        os.environ["SSL_CERT_FILE"] = self.ca.ca_file
        self.addCleanup(self._restore, previous)
        self.sendgrid = FakeSendGrid()

    def _restore(self, previous: str | None) -> None:
        if previous is None:
            os.environ.pop("SSL_CERT_FILE", None)
        else:
            os.environ["SSL_CERT_FILE"] = previous

    def serve_tls(self, *names: str) -> str:
        cert, key = self.ca.issue(names[0], dns=names, ips=("127.0.0.1",) if not names[1:] else ())
        served = ServedOverHTTP(
            self.sendgrid, reactor, tls=ssl.DefaultOpenSSLContextFactory(key, cert)
        )
        self.addCleanup(served.close)
        return served.url

    def client(self, password: str = PASSWORD) -> Any:
        client = PooledClient(reactor, 2, parse_proxy(self.proxy.url(password)), ())
        self.addCleanup(client.close)
        return client

    def send(self, client: Any, base: str) -> Any:
        body = (
            b'{"personalizations": [{"to": [{"email": "b@example.org"}]}], '
            b'"from": {"email": "a@example.com"}, "subject": "s", '
            b'"content": [{"type": "text/plain", "value": "hi"}]}'
        )
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        return client(Request("POST", base + "/v3/mail/send", headers, body), 10)

    async def test_https_through_the_proxy_checked_end_to_end(self) -> None:
        base = self.serve_tls("localhost")
        client = self.client()
        for _ in range(2):
            response = await self.send(client, base)
            self.assertEqual(response.status, 202, response.body)
        self.assertEqual(len(self.sendgrid.accepted), 2)
        port = base.rsplit(":", 1)[1]
        self.assertIn(f"CONNECT 127.0.0.1:{port} HTTP/1.1", self.proxy.logged())
        self.assertEqual(self.proxy.logged().count("): CONNECT "), 1, "one tunnel, kept")

    async def test_a_certificate_for_another_name_is_refused_through_the_tunnel(self) -> None:
        base = self.serve_tls("other.example", "other.example")
        with self.assertRaises(HTTPFailure) as caught:
            await self.send(self.client(), base)
        self.assertEqual(
            (caught.exception.kind, str(caught.exception)),
            ("unreachable", "TLS: the server's certificate is not for this host name"),
        )
        self.assertEqual(self.sendgrid.accepted, [])

    async def test_a_wrong_password_is_the_proxys_refusal_in_one_line(self) -> None:
        base = self.serve_tls("localhost")
        with self.assertRaises(HTTPFailure) as caught:
            await self.send(self.client("wrong"), base)
        self.assertEqual(
            (caught.exception.kind, str(caught.exception)),
            (
                "unreachable",  # tinyproxy's words for a CONNECT it will not authorize
                f"the proxy 127.0.0.1:{self.proxy.port} answered 'HTTP/1.0 401 Unauthorized'",
            ),
        )
        self.assertEqual(self.sendgrid.accepted, [])


class DaemonThroughProxyTests(TestCase):
    """Real twistd: an [API] relay reached through the proxy."""

    timeout = 120

    async def test_an_api_relay_through_the_proxy(self) -> None:
        from tests.daemon import Daemon, temporary_home
        from tests.test_api_sendgrid import EndToEndTests

        proxy = TinyProxy(self)
        fake = FakeSendGrid()
        base = fake.listen(reactor)
        self.addCleanup(fake.close)
        home = temporary_home(self)
        daemon = Daemon(
            os.path.join(home, "d"),
            f"[API:sendgrid]\nprovider = sendgrid\napi_key = {KEY}\nendpoint = {base}\n"
            "timeout = 5s\n",
        )
        with open(daemon.config_path) as handle:
            text = handle.read()
        with open(daemon.config_path, "w") as handle:  # 127.0.0.1 is not reached directly
            handle.write(
                text.replace(
                    "[Daemon]\n", f"[Daemon]\nhttp_proxy = {proxy.url()}\nno_proxy = localhost\n"
                )
            )
        os.chmod(daemon.config_path, 0o600)
        self.addCleanup(daemon.stop)
        daemon.start()
        sent = daemon.send("--from", "app@example.com", "--to", "ann@example.org", "--subject", "s")
        until = EndToEndTests.until
        await until(self, lambda: daemon.message(sent)["state"] == "sent", "the outcome")
        self.assertEqual(len(fake.accepted), 1)
        port = base.rsplit(":", 1)[1]
        self.assertIn(f"CONNECT 127.0.0.1:{port} HTTP/1.1", proxy.logged())
        self.assertNotIn(PASSWORD, daemon.log())
        shown = daemon.cli("config")
        self.assertIn("http_proxy = <redacted>", shown.stdout, shown.stderr)
        self.assertNotIn(PASSWORD, shown.stdout + shown.stderr)


class WiringTests(TestCase):
    """Each HTTP client of the daemon takes [Daemon] http_proxy: pointed at a proxy port
    where nothing listens, each says it could not reach the proxy (not the host)."""

    timeout = 30

    def setUp(self) -> None:
        from smtpmailer.config import parse_config

        self.port = fixed_port()
        self.config = parse_config(
            f"[Daemon]\nhttp_proxy = http://u:p@127.0.0.1:{self.port}\n"
            f"[API:sg]\nprovider = sendgrid\napi_key = {KEY}\n"
            "[Webhook:ops]\nurl = https://hooks.example.test/smtpmailer\nsecret = s\n",
            "/etc/smtpmailer/smtpmailer.conf",
        )
        self.refused = f"the proxy 127.0.0.1:{self.port}: connection refused"

    async def failure_of(self, client: Any, url: str) -> str:
        with self.assertRaises(HTTPFailure) as caught:
            await client(Request("POST", url, {}, b"{}"), 5)
        close = getattr(client, "close", None)
        if close is not None:
            await close()
        return str(caught.exception)

    async def test_api_relays(self) -> None:
        from smtpmailer.delivery.transport import TransportContext, make_transport
        from smtpmailer.proxy import proxy_settings

        proxy, no_proxy = proxy_settings(self.config.daemon)
        context = TransportContext(reactor, "h", proxy=proxy, no_proxy=no_proxy)
        transport: Any = make_transport(self.config.relays[0], context)
        said = await self.failure_of(transport.client, "https://api.sendgrid.com/v3/mail/send")
        self.assertEqual(said, self.refused)

    async def test_oauth2_token_endpoints(self) -> None:
        from smtpmailer.oauth2.endpoint import HTTPPoster
        from smtpmailer.oauth2.grants import TokenEndpointError

        poster = HTTPPoster(reactor, self.config.daemon)
        with self.assertRaises(TokenEndpointError) as caught:
            await poster("https://oauth2.googleapis.com/token", {"grant_type": "x"}, 5)
        await poster.close()
        self.assertIn(self.refused, str(caught.exception))

    async def test_webhooks(self) -> None:
        from smtpmailer.webhooks.service import WebhookService

        service = WebhookService(self.config, None, reactor)
        said = await self.failure_of(service.client, self.config.webhooks[0].url)
        self.assertEqual(said, self.refused)
