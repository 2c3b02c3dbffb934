"""The HTTP client's connections, byte by byte: the request it writes, the answers it reads
(lengths, chunks, an answer ended by the close, 100 Continue, garbage), which connections it
keeps, and every way an exchange can end without an answer. The server side is a
StringTransport on a MemoryReactorClock, so time moves only when a test says."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.httpclient import (
    IDLE_SECONDS,
    MAX_ANSWER,
    HTTPFailure,
    PooledClient,
    Request,
    Response,
)
from smtpmailer.proxy import Proxy, bypasses, parse_proxy

URL = "http://127.0.0.1:8025/v3/mail/send"
OK = b"HTTP/1.1 202 Accepted\r\nX-Message-Id: m-1\r\nContent-Length: 0\r\n\r\n"


class Wire:
    """The client on a memory reactor, and the server's end of each connection it opens."""

    def __init__(self, keep: int = 2) -> None:
        self.reactor = MemoryReactorClock()
        self.client = PooledClient(self.reactor, keep)
        self.served = 0  # connections answered by accept()

    def send(self, body: bytes = b"{}", url: str = URL, **headers: str) -> Any:
        return self.client(Request("POST", url, headers, body), 5)

    def accept(self) -> tuple[Any, StringTransport]:
        """The next connection the client asked for, made."""
        _, _, factory, _, _ = self.reactor.tcpClients[self.served]
        self.served += 1
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport


class Outcome:
    """What a request's Deferred gave: a Response or an HTTPFailure, or nothing yet."""

    def __init__(self, sending: Any) -> None:
        self.response: Response | None = None
        self.failure: HTTPFailure | None = None
        sending.addCallbacks(self._answered, self._failed)

    def _answered(self, response: Response) -> None:
        self.response = response

    def _failed(self, failure: Failure) -> None:
        failure.trap(HTTPFailure)
        self.failure = failure.value

    @property
    def failed(self) -> tuple[str, str] | None:
        return None if self.failure is None else (self.failure.kind, str(self.failure))


class RequestTests(SynchronousTestCase):
    def test_the_request_on_the_wire(self) -> None:
        wire = Wire()
        wire.send(b'{"a":1}', URL + "?x=1", Authorization="Bearer k")
        _, transport = wire.accept()
        self.assertEqual(
            transport.value(),
            b"POST /v3/mail/send?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8025\r\n"
            b"Authorization: Bearer k\r\nContent-Length: 7\r\n\r\n"
            b'{"a":1}',
        )

    def test_the_length_is_the_bodys_and_said_once(self) -> None:
        wire = Wire()
        wire.send(b"{}", **{"Content-Length": "99", "Host": "api.example"})
        _, transport = wire.accept()
        head = transport.value().split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertEqual(
            head, [b"POST /v3/mail/send HTTP/1.1", b"Host: api.example", b"Content-Length: 2"]
        )

    def test_a_get_has_no_length_and_a_default_port_no_port_in_host(self) -> None:
        wire = Wire()
        wire.client(Request("GET", "http://127.0.0.1/v3/scopes", {}, b""), 5)
        _, transport = wire.accept()
        self.assertEqual(transport.value(), b"GET /v3/scopes HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertEqual(wire.reactor.tcpClients[0][:2], ("127.0.0.1", 80))

    def test_a_line_break_in_a_header_cannot_add_a_header(self) -> None:
        wire = Wire()
        wire.send(Authorization="Bearer k\r\nX-Injected: 1")
        _, transport = wire.accept()
        head = transport.value().split(b"\r\n\r\n")[0].split(b"\r\n")
        self.assertIn(b"Authorization: Bearer k X-Injected: 1", head)
        self.assertFalse([line for line in head if line.startswith(b"X-Injected")])

    def test_not_an_http_url(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send(url="ftp://127.0.0.1/x"))
        self.assertEqual(outcome.failed, ("unreachable", "not an http or https URL"))
        self.assertEqual(wire.reactor.tcpClients, [])
        self.assertEqual(wire.reactor.getDelayedCalls(), [], "no deadline for it")

    def test_a_path_with_a_space_or_a_line_break_is_refused(self) -> None:
        wire = Wire()
        for url in ("http://127.0.0.1/v3/a b", "http://127.0.0.1/v3/\u00e9"):
            outcome = Outcome(wire.send(url=url))
            self.assertEqual(outcome.failed, ("unreachable", "a URL path that is not quoted"))
        self.assertEqual(wire.reactor.tcpClients, [])

    def test_an_international_host_name_goes_as_idna(self) -> None:
        wire = Wire()
        wire.send(url="http://b\u00fccher.example:8025/v3/mail/send")
        _, transport = wire.accept()
        self.assertIn(b"\r\nHost: xn--bcher-kva.example:8025\r\n", transport.value())

    def test_a_header_that_is_not_latin_1(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send(Authorization="Bearer \u2603"))
        self.assertEqual(outcome.failed, ("unreachable", "a request header that is not Latin-1"))
        self.assertEqual(wire.reactor.tcpClients, [])


class AnswerTests(SynchronousTestCase):
    def test_an_answer_with_a_length(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, _ = wire.accept()
        protocol.dataReceived(
            b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
            b'Content-Length: 13\r\n\r\n{"errors":[]}'
        )
        assert outcome.response is not None
        self.assertEqual(outcome.response.status, 400)
        self.assertEqual(outcome.response.body, b'{"errors":[]}')
        self.assertEqual(outcome.response.headers["content-type"], "application/json")

    def test_a_chunked_answer_in_pieces(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, _ = wire.accept()
        answer = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Message-Id: m-7\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        for start in range(0, len(answer), 7):  # as TCP may cut it
            self.assertIsNone(outcome.response)
            protocol.dataReceived(answer[start : start + 7])
        assert outcome.response is not None
        self.assertEqual((outcome.response.status, outcome.response.body), (200, b"hello world"))
        self.assertEqual(outcome.response.headers["x-message-id"], "m-7")

    def test_an_answer_that_ends_with_the_connection(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, _ = wire.accept()
        protocol.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nall of it")
        self.assertIsNone(outcome.response, "not before the close says it is whole")
        protocol.connectionLost(Failure(ConnectionDone()))
        assert outcome.response is not None
        self.assertEqual(outcome.response.body, b"all of it")
        wire.send()
        self.assertEqual(len(wire.reactor.tcpClients), 2, "a closed connection is not reused")

    def test_100_continue_then_the_answer(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, _ = wire.accept()
        protocol.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertIsNone(outcome.response)
        protocol.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
        assert outcome.response is not None
        self.assertEqual((outcome.response.status, outcome.response.body), (201, b"ok"))

    def test_100_continue_and_the_answer_in_one_read(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, _ = wire.accept()
        protocol.dataReceived(
            b"HTTP/1.1 100 Continue\r\nX-Early: 1\r\n\r\n"
            b"HTTP/1.1 202 Accepted\r\nX-Message-Id: m-2\r\nContent-Length: 0\r\n\r\n"
        )
        assert outcome.response is not None
        self.assertEqual(outcome.response.status, 202)
        self.assertEqual(outcome.response.headers, {"x-message-id": "m-2", "content-length": "0"})

    def test_a_switch_of_protocols_is_not_an_answer(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, transport = wire.accept()
        protocol.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
        assert outcome.failed is not None
        self.assertTrue(outcome.failed[1].startswith("a malformed HTTP answer"), outcome.failed)
        self.assertTrue(transport.disconnected)

    def test_a_large_answer_is_kept_to_the_bound(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, _ = wire.accept()
        piece = b"x" * 65536
        size = 2 * MAX_ANSWER
        protocol.dataReceived(b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(piece)):
            protocol.dataReceived(piece)
        assert outcome.response is not None
        self.assertEqual(outcome.response.status, 500)
        self.assertLessEqual(len(outcome.response.body), MAX_ANSWER + len(piece))
        self.assertGreaterEqual(len(outcome.response.body), MAX_ANSWER)


class KeptConnectionTests(SynchronousTestCase):
    def test_a_connection_is_kept_and_reused(self) -> None:
        wire = Wire()
        first = Outcome(wire.send())
        protocol, transport = wire.accept()
        protocol.dataReceived(OK)
        self.assertIsNotNone(first.response)
        transport.clear()
        second = Outcome(wire.send(b"[2]"))
        self.assertEqual(len(wire.reactor.tcpClients), 1, "no new connection")
        self.assertTrue(transport.value().endswith(b"\r\n\r\n[2]"))
        protocol.dataReceived(OK)
        self.assertIsNotNone(second.response)
        self.assertFalse(transport.disconnecting)

    def test_connection_close_is_honoured(self) -> None:
        wire = Wire()
        Outcome(wire.send())
        protocol, transport = wire.accept()
        protocol.dataReceived(
            b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertTrue(transport.disconnecting)
        wire.send()
        self.assertEqual(len(wire.reactor.tcpClients), 2)

    def test_an_idle_connection_the_server_closed_is_not_used(self) -> None:
        wire = Wire()
        Outcome(wire.send())
        protocol, _ = wire.accept()
        protocol.dataReceived(OK)
        protocol.connectionLost(Failure(ConnectionDone()))
        wire.send()
        self.assertEqual(len(wire.reactor.tcpClients), 2)

    def kept_then_closed_unanswered(self, method: str) -> tuple[Wire, Outcome]:
        """A first request answered; the second, on the kept connection, sees it close
        before a byte of its answer (the server had closed it as the request went out)."""
        wire = Wire()
        Outcome(wire.send())
        protocol, transport = wire.accept()
        protocol.dataReceived(OK)
        transport.clear()
        outcome = Outcome(
            wire.client(Request(method, URL, {}, b"{}" if method == "POST" else b""), 5)
        )
        self.assertTrue(transport.value().startswith(method.encode()), "sent on the kept one")
        protocol.connectionLost(Failure(ConnectionLost()))
        return wire, outcome

    def test_a_get_is_asked_again_once_on_a_new_connection(self) -> None:
        wire, outcome = self.kept_then_closed_unanswered("GET")
        self.assertIsNone(outcome.failure)
        self.assertEqual(len(wire.reactor.tcpClients), 2, "a new connection")
        protocol, transport = wire.accept()
        self.assertTrue(transport.value().startswith(b"GET /v3/mail/send HTTP/1.1\r\n"))
        protocol.dataReceived(OK)
        assert outcome.response is not None
        self.assertEqual(outcome.response.status, 202)

    def test_a_get_is_not_asked_a_third_time(self) -> None:
        wire, outcome = self.kept_then_closed_unanswered("GET")
        protocol, _ = wire.accept()
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(outcome.failed, ("unreachable", "the connection closed before an answer"))
        self.assertEqual(len(wire.reactor.tcpClients), 2)

    def test_a_post_is_not_asked_again(self) -> None:
        wire, outcome = self.kept_then_closed_unanswered("POST")
        self.assertEqual(outcome.failed, ("unreachable", "the connection closed before an answer"))
        self.assertEqual(len(wire.reactor.tcpClients), 1, "the queue decides about a retry")

    def test_a_get_cut_in_its_answer_is_not_asked_again(self) -> None:
        wire = Wire()
        Outcome(wire.send())
        protocol, _ = wire.accept()
        protocol.dataReceived(OK)
        outcome = Outcome(wire.client(Request("GET", URL, {}, b""), 5))
        protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{")
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(outcome.failed, ("unreachable", "the connection closed before an answer"))
        self.assertEqual(len(wire.reactor.tcpClients), 1)

    def test_a_connection_idle_too_long_is_closed_by_us(self) -> None:
        wire = Wire()
        Outcome(wire.send())
        protocol, transport = wire.accept()
        protocol.dataReceived(OK)
        wire.reactor.advance(IDLE_SECONDS - 1)
        self.assertFalse(transport.disconnecting)
        wire.reactor.advance(2)
        self.assertTrue(transport.disconnecting)
        protocol.connectionLost(Failure(ConnectionDone()))
        wire.send()
        self.assertEqual(len(wire.reactor.tcpClients), 2)

    def test_a_connection_in_use_again_is_not_closed_as_idle(self) -> None:
        wire = Wire()
        Outcome(wire.send())
        protocol, transport = wire.accept()
        protocol.dataReceived(OK)
        wire.reactor.advance(IDLE_SECONDS - 1)
        second = Outcome(wire.client(Request("POST", URL, {}, b"{}"), 10))
        wire.reactor.advance(2)
        self.assertFalse(transport.disconnecting, "busy, not idle")
        protocol.dataReceived(OK)
        self.assertIsNotNone(second.response)
        self.assertEqual(len(wire.reactor.getDelayedCalls()), 1, "only its new idle timer")

    def test_no_more_idle_connections_are_kept_than_asked(self) -> None:
        wire = Wire(keep=2)
        outcomes = [Outcome(wire.send()) for _ in range(3)]
        ends = [wire.accept() for _ in range(3)]
        self.assertEqual(len(wire.reactor.tcpClients), 3, "busy connections are not waited for")
        for protocol, _ in ends:
            protocol.dataReceived(OK)
        self.assertTrue(all(o.response is not None for o in outcomes))
        self.assertEqual([t.disconnecting for _, t in ends], [False, False, True])

    def test_close_closes_the_idle_and_fires_once_they_are_gone(self) -> None:
        wire = Wire()
        Outcome(wire.send())
        busy = Outcome(wire.send())
        (idle, idle_transport), (working, working_transport) = wire.accept(), wire.accept()
        idle.dataReceived(OK)
        closed = wire.client.close()
        self.assertTrue(idle_transport.disconnecting)
        self.assertFalse(working_transport.disconnecting, "not while it is answering")
        self.assertNoResult(closed)
        idle.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)
        working.dataReceived(OK)
        self.assertIsNotNone(busy.response)
        self.assertTrue(working_transport.disconnecting, "closed after its answer")


class NoAnswerTests(SynchronousTestCase):
    def test_nothing_listening(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        _, _, factory, _, _ = wire.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        wire.reactor.advance(1)  # the endpoint gives up on its next turn
        self.assertEqual(outcome.failed, ("unreachable", "connection refused"))

    def test_closed_before_the_answer(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, _ = wire.accept()
        protocol.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(outcome.failed, ("unreachable", "the connection closed before an answer"))

    def test_closed_in_the_middle_of_the_answer(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, _ = wire.accept()
        protocol.dataReceived(b"HTTP/1.1 202 Accepted\r\nContent-Length: 10\r\n\r\nabc")
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(outcome.failed, ("unreachable", "the connection closed before an answer"))

    def test_a_malformed_answer(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, transport = wire.accept()
        protocol.dataReceived(b"SMTP ready\r\n\r\n")
        assert outcome.failed is not None
        self.assertEqual(outcome.failed[0], "unreachable")
        self.assertTrue(outcome.failed[1].startswith("a malformed HTTP answer"), outcome.failed)
        self.assertTrue(transport.disconnecting)

    def test_no_answer_in_time(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        protocol, transport = wire.accept()
        wire.reactor.advance(4.9)
        self.assertIsNone(outcome.failure)
        wire.reactor.advance(0.2)
        self.assertEqual(outcome.failed, ("timeout", "no answer in 5s"))
        self.assertTrue(transport.disconnected, "the connection is dropped, not reused")
        protocol.dataReceived(OK)  # too late: nothing happens
        protocol.connectionLost(Failure(ConnectionDone()))
        wire.send()
        self.assertEqual(len(wire.reactor.tcpClients), 2)

    def test_no_connection_in_time(self) -> None:
        wire = Wire()
        outcome = Outcome(wire.send())
        wire.reactor.advance(5.1)
        self.assertEqual(outcome.failed, ("timeout", "no answer in 5s"))

    def test_cancelled(self) -> None:
        wire = Wire()
        sending = wire.send()
        outcome = Outcome(sending)
        _, transport = wire.accept()
        sending.cancel()
        self.assertEqual(outcome.failed, ("unreachable", "the request was cancelled"))
        self.assertTrue(transport.disconnected)
        self.assertEqual(wire.reactor.getDelayedCalls(), [], "no deadline left behind")


PROXIED = "http://api.example.test:8025/v3/mail/send"
AUTH = "Basic dXNlcjpwYXNz"  # user:pass
CONNECT = (
    b"CONNECT api.example.test:8025 HTTP/1.1\r\nHost: api.example.test:8025\r\n"
    b"Proxy-Authorization: " + AUTH.encode() + b"\r\n\r\n"
)


class ProxyTests(SynchronousTestCase):
    """[Daemon] http_proxy: every connection is a CONNECT tunnel through the proxy, and the
    request goes inside it once the proxy answers 200."""

    def wire(self, no_proxy: tuple[str, ...] = ()) -> Wire:
        wire = Wire()
        wire.client = PooledClient(wire.reactor, 2, Proxy("127.0.0.1", 3128, AUTH), no_proxy)
        return wire

    def test_a_request_goes_through_the_tunnel_which_is_kept(self) -> None:
        wire = self.wire()
        outcome = Outcome(wire.send(url=PROXIED))
        host, port = wire.reactor.tcpClients[0][:2]
        self.assertEqual((host, port), ("127.0.0.1", 3128))
        proxy, transport = wire.accept()
        self.assertEqual(transport.value(), CONNECT, "the request waits for the tunnel")
        transport.clear()
        proxy.dataReceived(b"HTTP/1.1 200 Connection established\r\n")
        self.assertEqual(transport.value(), b"", "not before the whole answer")
        proxy.dataReceived(b"Proxy-Agent: tinyproxy/1.11.1\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"POST /v3/mail/send HTTP/1.1\r\n"))
        self.assertIn(b"\r\nHost: api.example.test:8025\r\n", transport.value())
        self.assertNotIn(b"Proxy-Authorization", transport.value(), "only the proxy sees it")
        proxy.dataReceived(OK)
        assert outcome.response is not None
        self.assertEqual(outcome.response.status, 202)
        transport.clear()
        again = Outcome(wire.send(url=PROXIED))
        self.assertEqual(len(wire.reactor.tcpClients), 1, "the tunnel is kept and reused")
        self.assertTrue(transport.value().startswith(b"POST /v3/mail/send HTTP/1.1\r\n"))
        proxy.dataReceived(OK)
        self.assertIsNotNone(again.response)

    def test_the_answer_may_come_with_the_proxys(self) -> None:
        wire = self.wire()
        outcome = Outcome(wire.send(url=PROXIED))
        proxy, transport = wire.accept()
        proxy.dataReceived(b"HTTP/1.0 200 OK\r\n\r\n")
        self.assertIn(b"POST /v3/mail/send", transport.value())
        proxy.dataReceived(OK)
        self.assertIsNotNone(outcome.response)

    def test_the_proxy_refuses(self) -> None:
        for answer, said in (
            (b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n",
             "'HTTP/1.0 407 Proxy Authentication Required'"),
            (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", "'HTTP/1.1 403 Forbidden'"),
            (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "'SSH-2.0-OpenSSH_9.2'"),
        ):  # fmt: skip
            wire = self.wire()
            outcome = Outcome(wire.send(url=PROXIED))
            proxy, transport = wire.accept()
            proxy.dataReceived(answer)
            self.assertEqual(
                outcome.failed, ("unreachable", f"the proxy 127.0.0.1:3128 answered {said}")
            )
            self.assertTrue(transport.disconnected)
            self.assertNotIn("dXNlcjpwYXNz", str(outcome.failure))

    def test_the_proxy_closes_or_babbles(self) -> None:
        wire = self.wire()
        outcome = Outcome(wire.send(url=PROXIED))
        proxy, _ = wire.accept()
        proxy.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(
            outcome.failed, ("unreachable", "the proxy 127.0.0.1:3128 closed the connection")
        )
        wire = self.wire()
        outcome = Outcome(wire.send(url=PROXIED))
        proxy, transport = wire.accept()
        proxy.dataReceived(b"x" * 20_000)
        self.assertEqual(
            outcome.failed,
            ("unreachable", "the proxy 127.0.0.1:3128 an answer too long to be HTTP"),
        )
        self.assertTrue(transport.disconnected)

    def test_the_proxy_is_down(self) -> None:
        wire = self.wire()
        outcome = Outcome(wire.send(url=PROXIED))
        _, _, factory, _, _ = wire.reactor.tcpClients[0]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        wire.reactor.advance(1)  # the endpoint gives up on its next turn
        self.assertEqual(
            outcome.failed, ("unreachable", "the proxy 127.0.0.1:3128: connection refused")
        )

    def test_no_answer_in_time_inside_or_before_the_tunnel(self) -> None:
        for established in (False, True):
            wire = self.wire()
            outcome = Outcome(wire.send(url=PROXIED))
            proxy, transport = wire.accept()
            if established:
                proxy.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
            wire.reactor.advance(5.1)
            self.assertEqual(outcome.failed, ("timeout", "no answer in 5s"))
            self.assertTrue(transport.disconnected)
            self.assertEqual(wire.reactor.getDelayedCalls(), [])
        wire = self.wire()
        outcome = Outcome(wire.send(url=PROXIED))
        wire.reactor.advance(5.1)  # the proxy never took the connection
        self.assertEqual(outcome.failed, ("timeout", "no answer in 5s"))

    def test_no_proxy_hosts_are_reached_directly(self) -> None:
        wire = self.wire(no_proxy=(".example.test",))
        wire.send(url=PROXIED)
        wire.send(url=URL)  # 127.0.0.1 is not in this no_proxy: through the proxy
        # (the memory reactor resolves every name to 127.0.0.1: the ports tell them apart)
        self.assertEqual([client[1] for client in wire.reactor.tcpClients], [8025, 3128])


class ProxySettingTests(SynchronousTestCase):
    def test_parse(self) -> None:
        self.assertEqual(parse_proxy("http://proxy.example:3128"), Proxy("proxy.example", 3128))
        with_user = parse_proxy("http://us%40er:p%3Ass@10.0.0.1:8080/")
        self.assertEqual((with_user.host, with_user.port), ("10.0.0.1", 8080))
        self.assertEqual(with_user.authorization, "Basic dXNAZXI6cDpzcw==")  # us@er:p:ss
        self.assertNotIn("p:ss", repr(with_user))
        for bad in ("https://proxy:3128", "proxy:3128", "http://proxy", "http://proxy:99999",
                    "http://proxy:3128/path", "socks5://proxy:1080"):  # fmt: skip
            with self.assertRaises(ValueError) as caught:
                parse_proxy(bad)
            self.assertIn("http://[user:password@]host:port", str(caught.exception))

    def test_bypasses(self) -> None:
        no_proxy = ("localhost", "127.0.0.1", ".corp.example", "example.net")
        for host, direct in (
            ("localhost", True), ("127.0.0.1", True), ("127.0.0.2", False),
            ("mail.corp.example", True), ("corp.example", True), ("xcorp.example", False),
            ("api.example.net", True), ("example.net", True), ("api.sendgrid.com", False),
        ):  # fmt: skip
            self.assertEqual(bypasses(host, no_proxy), direct, host)
        self.assertTrue(bypasses("anything", ("*",)))
        networks = ("10.0.0.0/8", "fd00::/8", "[::1]")
        for host, direct in (
            ("10.1.2.3", True), ("11.1.2.3", False), ("fd12::1", True), ("::1", True),
            ("10.example.com", False),
        ):  # fmt: skip
            self.assertEqual(bypasses(host, networks), direct, host)
