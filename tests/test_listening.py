"""ListeningService, the base of every listener: bind now or fail the start, bind anew
before closing the old port on reload, and close at stop."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.config import parse_config
from smtpmailer.endpoints import listen_now, with_backlog
from smtpmailer.listening import ListeningService


class Port:
    def __init__(self, events: list[str], address: str) -> None:
        self.events, self.address = events, address

    def stopListening(self) -> Any:
        self.events.append(f"close {self.address}")
        return succeed(None)

    def getHost(self) -> Any:
        return type("Address", (), {"host": "127.0.0.1", "port": 1})()


class Example(ListeningService):
    what = "example"

    def address(self, config: Any) -> str | None:
        return config.status.listen

    def make_factory(self, config: Any) -> object:
        return object()


def config(listen: str) -> Any:
    text = f"[Relay]\nhost = h\n[Status]\nlisten = {listen}\n"
    return parse_config(text, "c.conf")


class ListeningServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[str] = []
        self.refuse: set[str] = set()

    def listen(self, address: str, factory: object) -> Port:
        if address in self.refuse:
            raise CannotListenError("127.0.0.1", 1, OSError("address in use"))
        self.events.append(f"bind {address}")
        return Port(self.events, address)

    def test_a_port_that_cannot_be_bound_fails_the_start(self) -> None:
        self.refuse.add("tcp:1:interface=127.0.0.1")
        service = Example(config("tcp:1:interface=127.0.0.1"), self.listen)
        self.assertRaises(CannotListenError, service.bind)
        self.assertIsNone(service.port)

    def test_an_optional_listener_goes_on_without_its_port(self) -> None:
        self.refuse.add("tcp:1:interface=127.0.0.1")
        service = Example(config("tcp:1:interface=127.0.0.1"), self.listen)
        service.required = False
        service.bind()
        self.assertIsNone(service.port)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_reload_binds_the_new_port_before_closing_the_old(self) -> None:
        service = Example(config("tcp:1:interface=127.0.0.1"), self.listen)
        service.startService()
        moved = service.reconfigure(config("tcp:2:interface=127.0.0.1"))
        self.successResultOf(Deferred.fromCoroutine(moved))
        self.assertEqual(
            self.events,
            [
                "bind tcp:1:interface=127.0.0.1",
                "bind tcp:2:interface=127.0.0.1",
                "close tcp:1:interface=127.0.0.1",
            ],
        )
        self.successResultOf(service.stopService())
        self.assertEqual(self.events[-1], "close tcp:2:interface=127.0.0.1")
        self.assertIsNone(service.port)

    def test_an_unchanged_address_keeps_its_port(self) -> None:
        service = Example(config("tcp:1:interface=127.0.0.1"), self.listen)
        service.startService()
        port = service.port
        self.successResultOf(Deferred.fromCoroutine(service.reconfigure(config(port.address))))
        self.assertIs(service.port, port)
        self.assertEqual(self.events, ["bind tcp:1:interface=127.0.0.1"])


class BacklogTests(SynchronousTestCase):
    """A burst of clients connecting at once is held by the kernel until we accept them."""

    def completed(self, text: str, clients: int, within: float) -> int:
        """Listen on ``text`` without accepting, start ``clients`` connects at once, and
        count those whose handshake completes ``within`` seconds (a dropped SYN is sent
        again only after a second)."""
        import select
        import socket
        import time

        from twisted.internet import reactor
        from twisted.internet.protocol import Factory, Protocol

        port = listen_now(reactor, text, Factory.forProtocol(Protocol))
        port.stopReading()  # type: ignore[attr-defined]  # nothing is accepted here
        self.addCleanup(port.stopListening)
        address = ("127.0.0.1", port.getHost().port)  # type: ignore[attr-defined]
        pending = []
        for _ in range(clients):
            client = socket.socket()
            client.setblocking(False)
            client.connect_ex(address)
            self.addCleanup(client.close)
            pending.append(client)
        connected = 0
        deadline = time.monotonic() + within
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], pending, [], deadline - time.monotonic())
            for client in writable:
                pending.remove(client)
                if client.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    connected += 1
        return connected

    def test_our_backlog_holds_a_burst(self) -> None:
        self.assertEqual(self.completed("tcp:0:interface=127.0.0.1", 300, 5.0), 300)

    def test_twisteds_default_would_not(self) -> None:
        """What the default is for: the same burst with Twisted's backlog of 50 stalls."""
        self.assertLess(self.completed("tcp:0:interface=127.0.0.1:backlog=50", 300, 0.5), 100)

    def test_a_backlog_named_is_kept(self) -> None:
        self.assertEqual(with_backlog("tcp:25:backlog=7"), "tcp:25:backlog=7")
        self.assertEqual(with_backlog("unix:/run/x.sock"), "unix:/run/x.sock:backlog=1024")
