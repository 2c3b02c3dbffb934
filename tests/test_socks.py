"""[Relay] proxy: the SOCKS5 client's handshake byte by byte (StringTransport), and a real
twistd relaying through Debian's microsocks, with its user name and password, to a relay
that speaks STARTTLS and AUTH; a wrong password is one deferral line and in no log line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import Any

from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.config import parse_config
from smtpmailer.delivery.smtp.socks import SocksFailed, SocksHandshake, connect_request
from smtpmailer.ini import ConfigError
from smtpmailer.proxy import parse_socks_proxy
from smtpmailer.queue.sqlite import SQLiteQueue
from tests.daemon import fill_queue, wait_until
from tests.support import EndToEndCase
from tools.ports import fixed_port

PASSWORD = "s0cks-pass"


class _Heard(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.lost = True


class HandshakeTests(SynchronousTestCase):
    def handshake(self, url: str, host: str = "smtp.example.com", port: int = 587) -> None:
        self.heard = _Heard()
        factory = Factory.forProtocol(lambda: self.heard)
        self.protocol = SocksHandshake(parse_socks_proxy(url), host, port, factory)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)

    def sent(self) -> bytes:
        value = bytes(self.transport.value())
        self.transport.clear()
        return value

    def answer(self, data: bytes, one_byte_at_a_time: bool = False) -> None:
        if one_byte_at_a_time:
            for i in range(len(data)):
                self.protocol.dataReceived(data[i : i + 1])
        else:
            self.protocol.dataReceived(data)

    def test_without_a_password_then_the_relays_bytes_are_the_wrapped_protocols(self) -> None:
        self.handshake("socks5://127.0.0.1:1080")
        self.assertEqual(self.sent(), b"\x05\x01\x00")  # one way to sign in: none
        self.answer(b"\x05\x00")
        # CONNECT by name: the proxy resolves it.
        self.assertEqual(self.sent(), b"\x05\x01\x00\x03\x10smtp.example.com\x02\x4b")
        self.assertNoResult(self.protocol.ready)
        # The reply and the relay's greeting in one read.
        self.answer(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x9c\x40220 relay.test ESMTP\r\n")
        self.assertIs(self.successResultOf(self.protocol.ready), self.heard)
        self.assertEqual(self.heard.data, b"220 relay.test ESMTP\r\n")
        self.answer(b"250 OK\r\n")
        self.assertEqual(self.heard.data, b"220 relay.test ESMTP\r\n250 OK\r\n")
        self.protocol.connectionLost(None)
        self.assertTrue(self.heard.lost)

    def test_user_and_password_when_the_proxy_asks_a_byte_at_a_time(self) -> None:
        self.handshake("socks5h://mailer:p%40ss@proxy.test:1080", host="2001:db8::25", port=25)
        self.assertEqual(self.sent(), b"\x05\x02\x00\x02")
        self.answer(b"\x05\x02", one_byte_at_a_time=True)
        self.assertEqual(self.sent(), b"\x01\x06mailer\x04p@ss")  # RFC 1929
        self.answer(b"\x01\x00", one_byte_at_a_time=True)
        address = socket.inet_pton(socket.AF_INET6, "2001:db8::25")
        self.assertEqual(self.sent(), b"\x05\x01\x00\x04" + address + b"\x00\x19")
        reply = b"\x05\x00\x00\x03\x09relay.bnd\x00\x19"  # bound to a name: 1 + 9 bytes
        self.answer(reply, one_byte_at_a_time=True)
        self.successResultOf(self.protocol.ready)
        self.assertEqual(self.heard.data, b"")

    def failure(self) -> str:
        error = self.failureResultOf(self.protocol.ready, SocksFailed).value
        self.assertTrue(self.transport.disconnecting or self.transport.disconnected)
        return str(error)

    def test_a_refused_password_is_one_line(self) -> None:
        self.handshake(f"socks5://mailer:{PASSWORD}@127.0.0.1:1080")
        self.sent()
        self.answer(b"\x05\x02\x01\x01")
        self.assertEqual(
            self.failure(), "the SOCKS proxy 127.0.0.1:1080 refused the user name or password"
        )

    def test_every_reply_code_in_words(self) -> None:
        for code, words in (
            (1, "general SOCKS server failure"),
            (2, "connection not allowed by ruleset"),
            (4, "host unreachable"),
            (5, "connection refused"),
            (9, "error 9"),
        ):
            self.handshake("socks5://127.0.0.1:1080")
            self.sent()
            self.answer(b"\x05\x00" + bytes((5, code, 0, 1)) + b"\x00" * 6)
            self.assertEqual(self.failure(), f"the SOCKS proxy 127.0.0.1:1080 answered: {words}")
            self.assertEqual(self.heard.data, b"")

    def test_a_proxy_that_wants_a_password_we_do_not_have(self) -> None:
        self.handshake("socks5://127.0.0.1:1080")
        self.answer(b"\x05\xff")
        self.assertEqual(
            self.failure(),
            "the SOCKS proxy 127.0.0.1:1080 asks for a user name and password (give them in proxy)",
        )

    def test_not_a_socks_proxy(self) -> None:
        self.handshake("socks5://127.0.0.1:8080")
        self.answer(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.assertEqual(
            self.failure(), "the SOCKS proxy 127.0.0.1:8080 did not answer as a SOCKS5 proxy"
        )

    def test_closed_before_it_answered(self) -> None:
        self.handshake("socks5://127.0.0.1:1080")
        self.protocol.connectionLost(None)
        error = self.failureResultOf(self.protocol.ready, SocksFailed).value
        self.assertEqual(str(error), "the SOCKS proxy 127.0.0.1:1080 closed the connection")

    def test_addresses_as_addresses(self) -> None:
        self.assertEqual(
            connect_request("192.0.2.25", 465), b"\x05\x01\x00\x01\xc0\x00\x02\x19\x01\xd1"
        )
        with self.assertRaises(ValueError):
            connect_request("a" * 256, 25)


class EndpointTests(SynchronousTestCase):
    def connect(self) -> tuple[Any, Any, Any, StringTransport]:
        from twisted.internet.testing import MemoryReactorClock

        from smtpmailer.delivery.smtp.socks import SocksEndpoint

        reactor = MemoryReactorClock()
        endpoint = SocksEndpoint(
            reactor, parse_socks_proxy("socks5://127.0.0.1:1080"), "smtp.example.com", 587, 10
        )
        heard = _Heard()
        result = endpoint.connect(Factory.forProtocol(lambda: heard))
        host, port, factory, _, _ = reactor.tcpClients[0]
        self.assertEqual((host, port), ("127.0.0.1", 1080))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return reactor, result, protocol, transport

    def test_a_proxy_that_never_answers_gives_up_after_the_timeout(self) -> None:
        reactor, result, _, transport = self.connect()
        self.assertEqual(transport.value(), b"\x05\x01\x00")
        reactor.advance(9.9)
        self.assertNoResult(result)
        reactor.advance(0.1)
        error = self.failureResultOf(result, SocksFailed).value
        self.assertEqual(str(error), "the SOCKS proxy 127.0.0.1:1080 did not answer within 10s")
        self.assertTrue(transport.disconnecting or transport.disconnected)

    def test_a_tunnel_made_in_time_leaves_no_timer(self) -> None:
        reactor, result, protocol, _ = self.connect()
        protocol.dataReceived(b"\x05\x00\x05\x00\x00\x01\x7f\x00\x00\x01\x02\x4b")
        self.successResultOf(result)
        self.assertEqual(reactor.getDelayedCalls(), [])


class ConfigTests(SynchronousTestCase):
    def test_the_proxy_is_checked_and_never_shown(self) -> None:
        from smtpmailer.config.render import render_config

        text = f"[Relay]\nhost = smtp.example.com\nproxy = socks5://u:{PASSWORD}@127.0.0.1:1080\n"
        config = parse_config(text, "/nonexistent/smtpmailer.conf")
        self.assertNotIn(PASSWORD, repr(config))
        self.assertNotIn(PASSWORD, render_config(config))
        for wrong, said in (
            ("http://127.0.0.1:3128", "must be socks5://[user:password@]host:port"),
            ("socks5://127.0.0.1", "must be socks5://[user:password@]host:port"),
            ("socks5://:x@127.0.0.1:1080", "the user name must be 1 to 255 bytes (RFC 1929)"),
        ):
            with self.assertRaises(ConfigError) as raised:
                parse_config(
                    f"[Relay]\nhost = smtp.example.com\nproxy = {wrong}\n",
                    "/nonexistent/smtpmailer.conf",
                )
            self.assertEqual(
                str(raised.exception), f"/nonexistent/smtpmailer.conf:3: proxy: {said}"
            )


class MicroSocks:
    """Debian's microsocks on a port of its own, with a user name and password."""

    def __init__(self, test: Any) -> None:
        binary = shutil.which("microsocks")
        if binary is None:
            test.fail("microsocks is missing: make test installs it")
        self.port = fixed_port()
        self.process = subprocess.Popen(
            [binary, "-i", "127.0.0.1", "-p", str(self.port), "-u", "mailer", "-P", PASSWORD],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        test.addCleanup(self.stop)
        wait_until(self._listening, what="microsocks to listen")

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"microsocks exited with {self.process.returncode}")
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) == 0

    def url(self, password: str = PASSWORD) -> str:
        return f"socks5://mailer:{password}@127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class DaemonThroughSocksTests(EndToEndCase):
    def test_starttls_and_auth_through_the_proxy(self) -> None:
        """The relay is named as its certificate names it; the proxy resolves the name
        and carries the session, STARTTLS and AUTH included."""
        proxy = MicroSocks(self)
        peer = self.start_peer()
        daemon = self.start_daemon(peer.port, host="localhost", proxy=proxy.url())
        fill_queue(daemon, 5)
        daemon.start()
        wait_until(lambda: daemon.states() == {"sent": 5}, what="5 sent")
        received = peer.messages()
        self.assertEqual(len(received), 5)
        self.assertTrue(all(m.tls and m.authenticated_as == "app" for m in received))
        self.assertNotIn(PASSWORD, daemon.log())
        # smtpmailer test goes the same way, and says so.
        probe = daemon.cli("test")
        self.assertEqual(probe.returncode, 0, probe.stdout + probe.stderr)
        self.assertIn(f"connect: ok (through the SOCKS proxy 127.0.0.1:{proxy.port})", probe.stdout)
        self.assertIn("STARTTLS: ok, certificate verified", probe.stdout)
        self.assertNotIn(PASSWORD, probe.stdout + probe.stderr)

    def test_implicit_tls_inside_the_tunnel(self) -> None:
        proxy = MicroSocks(self)
        peer = self.start_peer(implicit_tls=True)
        daemon = self.start_daemon(peer.port, host="localhost", security="tls", proxy=proxy.url())
        fill_queue(daemon, 3)
        daemon.start()
        # The peer speaks only TLS on this port: a message through means TLS through.
        wait_until(lambda: daemon.states() == {"sent": 3}, what="3 sent")
        self.assertEqual([m.authenticated_as for m in peer.messages()], ["app"] * 3)

    def test_a_wrong_password_defers_in_one_line(self) -> None:
        proxy = MicroSocks(self)
        peer = self.start_peer()
        wrong = "not-the-" + PASSWORD
        daemon = self.start_daemon(peer.port, proxy=proxy.url(wrong))
        os.makedirs(daemon.state_dir)
        store = SQLiteQueue(os.path.join(daemon.state_dir, "queue.sqlite3"))
        message_id = store.enqueue(
            "app@example.com", ["a@example.org"], b"Subject: x\r\n\r\nhi\r\n", 5, time.time(), 10**6
        )
        store.close()
        daemon.start()
        wait_until(lambda: daemon.states() == {"deferred": 1}, what="a deferral")
        self.assertEqual(peer.messages(), [])
        said = (
            f"localhost:{peer.port}: the SOCKS proxy 127.0.0.1:{proxy.port} refused the user"
            " name or password"
        )
        self.assertEqual(daemon.message(message_id)["last_error"], said)
        log = daemon.log()
        self.assertIn(f"status=deferred ({said})", log)
        self.assertNotIn(wrong, log)
        self.assertNotIn("Traceback", log)
