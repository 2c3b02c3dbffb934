"""An in-memory SMTP relay for delivery tests: replies arrive through a task.Clock.

Replies are scheduled with ``callLater(0)`` rather than given back inside ``write()``, so
the client never re-enters itself; ``settle()`` runs everything that is due now.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from smtpmailer.config import SMTPRelayConfig
from smtpmailer.delivery.smtp.protocol import SMTPClientProtocol

# Exchange Online's answer to a mailbox's connection over three, as its clients report it
# (e.g. aiosmtplib's SMTPDataError, nodemailer's "Message failed").
EXCHANGE_CONCURRENT_LIMIT = (
    "432 4.3.2 Concurrent connections limit exceeded. Visit https://aka.ms/concurrent_sending"
    " for more information. [Hostname=AM0PR01MB1234.eurprd01.prod.exchangelabs.com]"
)


class _Transport:
    """Carries client bytes to the fake relay's line handler."""

    def __init__(self, relay: FakeRelay, connection: _Connection) -> None:
        self.relay = relay
        self.connection = connection
        self.disconnected = False
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        if not self.disconnected:
            self.relay.transcript.append(("C", data))
            self.connection.received(data)

    def writeSequence(self, chunks: list[bytes]) -> None:
        self.write(b"".join(chunks))

    def loseConnection(self) -> None:
        self._close(error.ConnectionDone())

    def abortConnection(self) -> None:
        self._close(error.ConnectionAborted())

    def _close(self, reason: Exception) -> None:
        if not self.disconnected:
            self.disconnected = self.disconnecting = True
            self.relay.open_connections -= 1
            from twisted.python.failure import Failure

            self.relay.clock.callLater(0, self.connection.client.connectionLost, Failure(reason))

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "192.0.2.25", self.relay.port)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 40000)

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.connection.nodelay = enabled


class _Connection:
    def __init__(self, relay: FakeRelay, client: SMTPClientProtocol) -> None:
        self.relay = relay
        self.client = client
        self.buffer = b""
        self.in_data = False
        self.body: list[bytes] = []
        self.sender = ""
        self.recipients: list[str] = []
        self.nodelay = False
        self.transport = _Transport(relay, self)
        self.auth_abort: str | None = None  # the line that ends a refused AUTH exchange
        self.hung = False
        self.over_sending_limit = False  # see FakeRelay.sending_limit

    def send(self, *lines: str) -> None:
        data = "".join(line + "\r\n" for line in lines).encode()
        self.relay.clock.callLater(0, self._deliver, data)

    def _deliver(self, data: bytes) -> None:
        if not self.transport.disconnected:
            self.relay.transcript.append(("S", data))
            self.client.dataReceived(data)

    def received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n" in self.buffer and not self.hung:  # a hung relay reads nothing
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            self.line(line.decode("utf-8", "replace"))

    def resume(self, reply: str) -> None:
        """A relay hung after a message's content answers it at last, then reads on."""
        self.relay.hang_after_body = self.hung = False
        self.send(reply)
        self.received(b"")

    def line(self, line: str) -> None:
        relay = self.relay
        if self.in_data:
            if line == ".":
                self.in_data = False
                if relay.hang_after_body:
                    self.hung = True
                    return
                reply = relay.data_replies.pop(0) if relay.data_replies else "250 2.0.0 OK"
                if self.over_sending_limit:
                    relay.over_sending_limit.append(relay.clock.seconds())
                    reply = EXCHANGE_CONCURRENT_LIMIT
                if reply.startswith("2"):
                    relay.messages.append(
                        (self.sender, list(self.recipients), b"\r\n".join(self.body))
                    )
                self.send(reply)
            else:
                self.body.append(line[1:].encode() if line.startswith(".") else line.encode())
            return
        if self.auth_abort is not None:
            relay.auth_lines.append(line)
            expected, self.auth_abort = self.auth_abort, None
            if line == expected:
                self.send("535 5.7.8 Username and Password not accepted.")
            else:
                self.send("501 5.5.2 expected the end of the exchange")
            return
        verb = line.split(" ", 1)[0].upper()
        if verb == "AUTH":
            relay.auth_lines.append(line)
            self._auth(line)
            return
        relay.commands.append(line)
        if verb == "EHLO":
            auth = ["250-AUTH XOAUTH2 OAUTHBEARER"] if relay.bearer is not None else []
            self.send("250-fake.test", "250-PIPELINING", *auth, "250 SIZE 100000000")
        elif verb == "MAIL":
            self.sender = line.split("<", 1)[1].split(">", 1)[0]  # MAIL FROM:<x> SIZE=n
            self.recipients, self.body = [], []
            self.send("250 2.1.0 OK")
        elif verb == "RCPT":
            address = line.split("<", 1)[1].split(">", 1)[0]
            reply = relay.rcpt_replies.get(address, "250 2.1.5 OK")
            if reply.startswith("2"):
                self.recipients.append(address)
            self.send(reply)
        elif verb == "DATA":
            if self.recipients:
                self.in_data = True
                self.send("354 go ahead")
            else:
                self.send("554 5.5.1 no valid recipients")
        elif verb == "RSET":
            self.send("250 2.0.0 OK")
        elif verb == "QUIT":
            relay.quits += 1
            self.send("221 bye")
            relay.clock.callLater(0, self.transport.loseConnection)
        else:
            self.send("502 5.5.2 unknown command")

    def _auth(self, line: str) -> None:
        """XOAUTH2 (Google's format) and OAUTHBEARER (RFC 7628), checked by ``bearer``;
        a refused token gets the JSON challenge, then 535 after the client's answer."""
        import base64
        import json

        words = line.split()
        mechanism = words[1].upper() if len(words) > 1 else ""
        if self.relay.bearer is None or mechanism not in ("XOAUTH2", "OAUTHBEARER"):
            self.send("504 5.5.4 unrecognized authentication type")
            return
        try:
            text = base64.b64decode(words[2], validate=True).decode()
        except Exception:
            self.send("501 5.5.2 cannot decode")
            return
        fields = dict(part.split("=", 1) for part in text.split("\x01") if "=" in part)
        if mechanism == "XOAUTH2":
            user = fields.get("user", "")
        else:
            user = text.split(",")[1][2:] if text.startswith("n,a=") else ""
        token = fields.get("auth", "").removeprefix("Bearer ")
        if self.relay.bearer(user, token):
            self.relay.authenticated.append(user)
            self.send("235 2.7.0 Accepted")
            return
        challenge = json.dumps(
            {"status": "401", "schemes": "bearer", "scope": "https://mail.google.com/"}
        )
        self.auth_abort = "" if mechanism == "XOAUTH2" else "AQ=="
        self.send("334 " + base64.b64encode(challenge.encode()).decode())


class FakeRelay:
    """Counts connections and keeps every accepted message as (sender, recipients, body)."""

    def __init__(self, clock: Clock, port: int = 25) -> None:
        self.clock = clock
        self.port = port
        self.refuse = False
        self.greeting = "220 fake.test ESMTP"
        self.hang_after_body = False
        self.rcpt_replies: dict[str, str] = {}
        self.data_replies: list[str] = []
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.commands: list[str] = []
        # What went each way, in order: ("C", a client's write), ("S", replies it got).
        self.transcript: list[tuple[str, bytes]] = []
        self.connections = 0
        self.refused: list[float] = []
        self.open_connections = 0
        self.most_open = 0
        self.quits = 0
        self.live: list[_Connection] = []
        # (user, token) -> accepted? Offers XOAUTH2 and OAUTHBEARER when set.
        self.bearer: Any = None
        self.auth_lines: list[str] = []
        self.authenticated: list[str] = []
        # Connections taken at once: one more is greeted with Postfix's answer when its
        # smtpd_client_connection_count_limit is reached (a 421 from anvil), then closed.
        self.connection_limit: int | None = None
        self.over_limit: list[float] = []
        # Connections that may send at once, as Exchange Online counts a mailbox's (3): one
        # more is greeted and authenticated as usual, and each message it carries is
        # refused after its content with EXCHANGE_CONCURRENT_LIMIT.
        self.sending_limit: int | None = None
        self.over_sending_limit: list[float] = []

    def connect(self, relay: SMTPRelayConfig, client: SMTPClientProtocol) -> Deferred[Any]:
        if self.refuse:
            self.refused.append(self.clock.seconds())
            return fail(error.ConnectionRefusedError())
        self.connections += 1
        self.open_connections += 1
        self.most_open = max(self.most_open, self.open_connections)
        connection = _Connection(self, client)
        self.live.append(connection)
        client.makeConnection(connection.transport)  # type: ignore[arg-type]
        if self.connection_limit is not None and self.open_connections > self.connection_limit:
            self.over_limit.append(self.clock.seconds())
            connection.send("421 4.7.0 fake.test Error: too many connections from 127.0.0.1")
            self.clock.callLater(0, connection.transport.loseConnection)
            return succeed(client)
        if self.sending_limit is not None:
            sending = [c for c in self.live if not c.transport.disconnected]
            connection.over_sending_limit = len(sending) > self.sending_limit
        connection.send(self.greeting)
        return succeed(client)


def settle(clock: Clock, rounds: int = 10_000) -> None:
    """Run every call that is due now, including the ones those calls schedule for now."""
    for _ in range(rounds):
        due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
        if not due:
            return
        clock.advance(0)
    raise AssertionError("the clock never settled")
