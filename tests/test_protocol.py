"""Our ESMTP client in memory: against Twisted's ESMTP server (iosim), and scripted replies
(StringTransport) for pipelining, timeouts and garbage. Time is a task.Clock."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from typing import Any

import attrs
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import CramMD5Credentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from twisted.mail._cred import PLAINCredentials
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from smtpmailer.config import SMTPRelayConfig
from smtpmailer.delivery.smtp.protocol import (
    SMTPClientProtocol,
    SMTPProtocolError,
    SMTPTimeout,
    encode_body,
)
from smtpmailer.delivery.smtp.session import SessionError, SMTPSession
from smtpmailer.queue import Lease


def relay(**overrides: Any) -> SMTPRelayConfig:
    values: dict[str, Any] = {
        "name": "default",
        "host": "relay.test",
        "port": 25,
        "security": "none",
        "verify": True,
        "ca_file": None,
        "cert_file": None,
        "key_file": None,
        "source_address": None,
        "proxy": None,
        "auth": "auto",
        "username": None,
        "password": None,
        "oauth2": None,
        "helo": "",
        "max_connections": 1,
        "max_messages_per_connection": 100,
        "rate_limit": None,
        "timeout": 30.0,
        "priority": 0,
        "defer_on": ("5.4.5",),
    }
    values.update(overrides)
    return SMTPRelayConfig(**values)


def lease(*recipients: str, data: bytes = b"Subject: t\r\n\r\nhello\r\n") -> Lease:
    return Lease(
        id="Q1",
        token="t",
        sender="app@example.com",
        recipients=recipients or ("a@example.org",),
        data=data,
        priority=5,
        attempts=0,
        created=0.0,
    )


@attrs.define
class _Message:
    lines: list[bytes]
    store: list[bytes]

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)

    def eomReceived(self) -> Deferred[bytes]:
        self.store.append(b"\n".join(self.lines))
        return succeed(b"queued")

    def connectionLost(self) -> None:
        pass


@implementer(smtp.IMessageDelivery)
class _Delivery:
    """Accepts everything except the addresses it is told to refuse, with the given code."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.refuse: dict[str, int] = {}
        self.refuse_sender = False
        self.recipients: list[str] = []

    def receivedHeader(self, helo: Any, origin: Any, recipients: Any) -> bytes:
        return b"Received: test"

    def validateFrom(self, helo: Any, origin: smtp.Address) -> smtp.Address:
        if self.refuse_sender:
            raise smtp.SMTPBadSender(origin)
        return origin

    def validateTo(self, user: smtp.User) -> Any:
        address = str(user.dest)
        if address in self.refuse:
            raise smtp.SMTPBadRcpt(user, code=self.refuse[address])
        self.recipients.append(address)
        return lambda: _Message([], self.messages)


@implementer(IRealm)
class _Realm:
    def requestAvatar(self, avatar_id: Any, mind: Any, *interfaces: Any) -> Any:
        return smtp.IMessageDelivery, self.delivery, lambda: None

    delivery: _Delivery


class TwistedServerTests(SynchronousTestCase):
    """The client talks to twisted.mail's ESMTP server; iosim moves the bytes."""

    def connect(self, config: SMTPRelayConfig, users: dict[str, str] | None = None) -> SMTPSession:
        self.delivery = _Delivery()
        challengers = {
            b"LOGIN": smtp.LOGINCredentials,
            b"PLAIN": PLAINCredentials,
            b"CRAM-MD5": CramMD5Credentials,
        }
        server = smtp.ESMTP(chal=challengers if users else {})
        server.host = b"server.test"
        if users:
            realm = _Realm()
            realm.delivery = self.delivery
            checker = InMemoryUsernamePasswordDatabaseDontUse(
                **{k: v.encode() for k, v in users.items()}
            )
            server.portal = Portal(realm, [checker])
        else:
            server.delivery = self.delivery
        self.clock = Clock()
        server.callLater = self.clock.callLater  # its idle timeout, off the global reactor
        client = SMTPClientProtocol(self.clock, config.timeout)
        server_address = IPv4Address("TCP", "127.0.0.1", 25)
        client_address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.pump = iosim.connect(
            server,
            iosim.FakeTransport(server, True, server_address, client_address),
            client,
            iosim.FakeTransport(client, False, client_address, server_address),
        )
        return SMTPSession(client, config, "client.test")

    def drive(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        result = Deferred.fromCoroutine(coroutine)
        for _ in range(100):
            if result.called:
                break
            self.pump.pump()
        return self.successResultOf(result)

    def test_several_messages_on_one_connection(self) -> None:
        session = self.connect(relay())
        self.drive(session.open())
        first = self.drive(session.deliver(lease("a@example.org", "b@example.org")))
        second = self.drive(session.deliver(lease(data=b"Subject: 2\r\n\r\n.dot first\r\n.\r\n")))
        self.assertEqual([r.status for r in first + second], ["sent", "sent", "sent"])
        self.assertEqual(first[0].reply.split()[0], "250")
        # Twisted's server stores one copy per recipient: a, b, then the second message.
        self.assertEqual(len(self.delivery.messages), 3)
        self.assertIn(b"\n.dot first\n.", self.delivery.messages[2])
        self.assertEqual(session.delivered, 2)
        self.drive(session.quit())

    def test_per_recipient_outcomes(self) -> None:
        session = self.connect(relay())
        self.delivery.refuse = {"bad@example.org": 550, "later@example.org": 451}
        self.drive(session.open())
        results = self.drive(
            session.deliver(lease("good@example.org", "bad@example.org", "later@example.org"))
        )
        self.assertEqual(
            [(r.address, r.status) for r in results],
            [
                ("good@example.org", "sent"),
                ("bad@example.org", "failed"),
                ("later@example.org", "deferred"),
            ],
        )
        self.assertTrue(results[1].reply.startswith("550"))
        self.assertEqual(len(self.delivery.messages), 1)

    def test_no_recipient_accepted_keeps_the_connection_usable(self) -> None:
        session = self.connect(relay())
        self.delivery.refuse = {"bad@example.org": 550}
        self.drive(session.open())
        (refused,) = self.drive(session.deliver(lease("bad@example.org")))
        self.assertEqual(refused.status, "failed")
        (accepted,) = self.drive(session.deliver(lease("ok@example.org")))
        self.assertEqual(accepted.status, "sent")
        self.assertEqual(len(self.delivery.messages), 1)

    def test_sender_refused_fails_every_recipient(self) -> None:
        session = self.connect(relay())
        self.delivery.refuse_sender = True
        self.drive(session.open())
        results = self.drive(session.deliver(lease("a@example.org", "b@example.org")))
        self.assertEqual([r.status for r in results], ["failed", "failed"])
        self.assertTrue(results[0].reply.startswith("MAIL FROM: 550"))

    def test_auth_mechanisms(self) -> None:
        for mechanism in ("plain", "login", "cram-md5"):
            config = relay(auth=mechanism, username="app", password="s3cret")
            session = self.connect(config, users={"app": "s3cret"})
            self.drive(session.open())
            (result,) = self.drive(session.deliver(lease()))
            self.assertEqual(result.status, "sent", mechanism)

    def test_auth_waits_for_a_secret_that_is_still_being_fetched(self) -> None:
        """Each mechanism awaits credentials.secret(): a token being refreshed (XOAUTH2)
        holds AUTH back, and nothing is sent until it comes."""
        from smtpmailer.delivery.smtp.auth import Credentials

        for mechanism in ("plain", "login", "cram-md5"):
            fetching: Deferred[str] = Deferred()
            session = self.connect(relay(auth=mechanism), users={"app": "s3cret"})
            session.credentials = Credentials("app", lambda fetching=fetching: fetching)
            opened = Deferred.fromCoroutine(session.open())
            for _ in range(20):
                self.pump.pump()
            self.assertNoResult(opened)
            fetching.callback("s3cret")
            for _ in range(20):
                self.pump.pump()
            self.successResultOf(opened)
            (result,) = self.drive(session.deliver(lease()))
            self.assertEqual(result.status, "sent", mechanism)

    def test_auth_auto_without_tls_prefers_cram_md5(self) -> None:
        session = self.connect(relay(username="app", password="s3cret"), users={"app": "s3cret"})
        self.drive(session.open())
        self.assertEqual(session._mechanism(), "CRAM-MD5")

    def test_wrong_password(self) -> None:
        session = self.connect(
            relay(auth="plain", username="app", password="nope"), users={"app": "s3cret"}
        )
        result = Deferred.fromCoroutine(session.open())
        for _ in range(20):
            self.pump.pump()
        failure = self.failureResultOf(result, SessionError)
        self.assertIn("authentication failed (PLAIN): 535", str(failure.value))
        self.assertFalse(failure.value.permanent)

    def test_starttls_required_but_not_offered(self) -> None:
        session = self.connect(relay(security="starttls"))
        result = Deferred.fromCoroutine(session.open())
        for _ in range(20):
            self.pump.pump()
        failure = self.failureResultOf(result, SessionError)
        self.assertIn("relay does not offer STARTTLS", str(failure.value))


class ScriptedServerTests(SynchronousTestCase):
    """Replies written by the test, byte for byte, to check exactly what the client sends."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.protocol = SMTPClientProtocol(self.clock, timeout=10)
        self.transport = StringTransport()
        self.protocol.makeConnection(self.transport)
        self.session = SMTPSession(self.protocol, relay(), "client.test")

    def reply(self, *lines: str) -> None:
        self.protocol.dataReceived("".join(line + "\r\n" for line in lines).encode())

    def sent(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return bytes(value)

    def opened(self, *extensions: str) -> None:
        result = Deferred.fromCoroutine(self.session.open())
        self.reply("220 relay.test ESMTP")
        self.assertEqual(self.sent(), b"EHLO client.test\r\n")
        self.reply(
            "250-relay.test",
            *[f"250-{e}" for e in extensions[:-1]],
            f"250 {extensions[-1]}" if extensions else "250 OK",
        )
        self.successResultOf(result)

    def test_pipelining_sends_the_envelope_in_one_write(self) -> None:
        self.opened("PIPELINING", "SIZE 1000000", "8BITMIME")
        data = "Subject: ü\r\n\r\n.x\r\nend".encode()
        result = Deferred.fromCoroutine(
            self.session.deliver(lease("a@x.org", "b@x.org", data=data))
        )
        self.assertEqual(
            self.sent(),
            (
                f"MAIL FROM:<app@example.com> SIZE={len(data)} BODY=8BITMIME\r\n"
                "RCPT TO:<a@x.org>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n"
            ).encode(),
        )
        self.reply("250 ok", "250 ok", "550 no such user", "354 go ahead")
        self.assertEqual(self.sent(), "Subject: ü\r\n\r\n..x\r\nend\r\n.\r\n".encode())
        self.reply("250 2.0.0 queued as X")
        results = self.successResultOf(result)
        self.assertEqual(
            [(r.status, r.reply) for r in results],
            [("sent", "250 2.0.0 queued as X"), ("failed", "550 no such user")],
        )

    def test_connection_lost_amid_pipelined_replies_fails_the_message(self) -> None:
        """Two of the four replies came, then the connection went: the delivery fails
        with the loss (the message is then deferred by the pool), nothing left pending."""
        self.opened("PIPELINING")
        result = Deferred.fromCoroutine(self.session.deliver(lease("a@x.org", "b@x.org")))
        self.sent()
        self.reply("250 ok", "250 ok")
        self.assertNoResult(result)
        self.protocol.connectionLost(Failure(ConnectionLost("reset by peer")))
        self.failureResultOf(result, ConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        # Later commands fail at once, with the same reason.
        self.failureResultOf(self.protocol.command("NOOP"), ConnectionLost)

    def test_dsn_options_passed_on_to_a_relay_that_announces_dsn(self) -> None:
        import attrs

        from smtpmailer.dsn_options import DSNOptions

        options = DSNOptions(
            "HDRS", "QQ314159", {"a@x.org": "SUCCESS,FAILURE"}, {"a@x.org": "rfc822;A@x.org"}
        )
        given = attrs.evolve(lease("a@x.org", "b@x.org"), meta=json.dumps(options.as_meta()))
        self.opened("PIPELINING", "DSN")
        Deferred.fromCoroutine(self.session.deliver(given))
        self.assertEqual(
            self.sent(),
            b"MAIL FROM:<app@example.com> RET=HDRS ENVID=QQ314159\r\n"
            b"RCPT TO:<a@x.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A@x.org\r\n"
            b"RCPT TO:<b@x.org>\r\nDATA\r\n",
        )

    def test_dsn_options_kept_from_a_relay_without_dsn(self) -> None:
        import attrs

        from smtpmailer.dsn_options import DSNOptions

        options = DSNOptions("FULL", "E1", {"a@x.org": "NEVER"}, {})
        given = attrs.evolve(lease("a@x.org"), meta=json.dumps(options.as_meta()))
        self.opened("PIPELINING")
        Deferred.fromCoroutine(self.session.deliver(given))
        self.assertEqual(
            self.sent(), b"MAIL FROM:<app@example.com>\r\nRCPT TO:<a@x.org>\r\nDATA\r\n"
        )

    def test_pipelining_with_every_recipient_refused(self) -> None:
        self.opened("PIPELINING")
        result = Deferred.fromCoroutine(self.session.deliver(lease("a@x.org")))
        self.sent()
        self.reply("250 ok", "451 4.7.1 greylisted", "554 no valid recipients")
        self.assertEqual(self.sent(), b"RSET\r\n")
        self.reply("250 reset")
        (result_a,) = self.successResultOf(result)
        self.assertEqual((result_a.status, result_a.reply), ("deferred", "451 4.7.1 greylisted"))

    def test_a_reply_that_limits_sessions_ends_the_session_not_the_message(self) -> None:
        """4.3.2 to MAIL (Postfix stopping) or to DATA (a relay over its connections)
        says nothing of the message: the session ends as one that could not open, busy,
        so that the pool gives the message to another connection."""
        from smtpmailer.delivery.transport import OpenError

        for replies, problem in (
            (
                ("421 4.3.2 Service shutting down", "503 5.5.1 need MAIL", "503 need MAIL"),
                "MAIL FROM: 421 4.3.2 Service shutting down",
            ),
            (
                ("250 ok", "250 ok", "432 4.3.2 Concurrent connections limit exceeded"),
                "DATA: 432 4.3.2 Concurrent connections limit exceeded",
            ),
        ):
            self.setUp()
            self.session.label = "relay.test[192.0.2.1]:587"
            self.opened("PIPELINING")
            result = Deferred.fromCoroutine(self.session.deliver(lease("a@x.org")))
            self.sent()
            self.reply(*replies)
            error = self.failureResultOf(result, OpenError).value
            self.assertEqual((error.problem, error.busy), (problem, True))
            self.assertEqual(error.label, "relay.test[192.0.2.1]:587")
            self.assertEqual(self.sent(), b"")  # no RSET: the pool closes the connection

    def test_a_4xx_with_another_enhanced_status_is_the_messages_deferral(self) -> None:
        self.opened("PIPELINING")
        result = Deferred.fromCoroutine(self.session.deliver(lease("a@x.org")))
        self.sent()
        self.reply("250 ok", "250 ok", "451 4.3.0 try again later")
        self.assertEqual(self.sent(), b"RSET\r\n")
        self.reply("250 reset")
        (only,) = self.successResultOf(result)
        self.assertEqual((only.status, only.reply), ("deferred", "DATA: 451 4.3.0 try again later"))

    def test_without_pipelining_commands_wait_for_replies(self) -> None:
        self.opened("SIZE")
        result = Deferred.fromCoroutine(self.session.deliver(lease("a@x.org")))
        size = len(lease().data)
        self.assertEqual(self.sent(), f"MAIL FROM:<app@example.com> SIZE={size}\r\n".encode())
        self.reply("250 ok")
        self.assertEqual(self.sent(), b"RCPT TO:<a@x.org>\r\n")
        self.reply("250 ok")
        self.assertEqual(self.sent(), b"DATA\r\n")
        self.reply("354 go")
        self.sent()
        self.reply("452 4.3.1 out of space")
        self.assertEqual(self.sent(), b"RSET\r\n")
        self.reply("250 ok")
        (only,) = self.successResultOf(result)
        self.assertEqual(only.status, "deferred")

    def test_the_next_message_follows_the_content_in_one_write(self) -> None:
        """RFC 2920 3.1: a message's content may open a pipelined group, so the next
        message's MAIL, RCPT and DATA go in the same write as the first's content, and
        each message costs one round trip instead of two."""
        self.opened("PIPELINING")
        first, second = lease("a@x.org"), lease("b@x.org", data=b"Subject: 2\r\n\r\ntwo\r\n")
        asked: list[int] = []

        def follow() -> Lease | None:
            asked.append(1)
            return second

        one = Deferred.fromCoroutine(self.session.deliver(first, follow))
        self.assertEqual(asked, [], "asked only once the content is on the wire")
        self.sent()
        self.reply("250 ok", "250 ok", "354 go ahead")
        self.assertEqual(
            self.sent(),
            b"Subject: t\r\n\r\nhello\r\n.\r\n"
            b"MAIL FROM:<app@example.com>\r\nRCPT TO:<b@x.org>\r\nDATA\r\n",
        )
        self.assertEqual(asked, [1])
        self.reply("250 2.0.0 first queued", "250 ok", "250 ok", "354 go ahead")
        (sent_one,) = self.successResultOf(one)
        self.assertEqual((sent_one.status, sent_one.reply), ("sent", "250 2.0.0 first queued"))
        two = Deferred.fromCoroutine(self.session.deliver(second))
        self.assertEqual(self.sent(), b"Subject: 2\r\n\r\ntwo\r\n.\r\n", "envelope not sent twice")
        self.reply("250 2.0.0 second queued")
        (sent_two,) = self.successResultOf(two)
        self.assertEqual((sent_two.status, sent_two.reply), ("sent", "250 2.0.0 second queued"))
        self.assertEqual(self.session.delivered, 2)

    def test_a_refused_content_does_not_reset_the_message_behind_it(self) -> None:
        """The RSET after a refused content would cancel the envelope already pipelined
        behind it: the transaction is over anyway (RFC 5321 4.1.1.4)."""
        self.opened("PIPELINING")
        second = lease("b@x.org")
        one = Deferred.fromCoroutine(self.session.deliver(lease("a@x.org"), lambda: second))
        self.sent()
        self.reply("250 ok", "250 ok", "354 go ahead")
        self.sent()
        self.reply("554 5.7.1 spam", "250 ok", "250 ok", "354 go ahead")
        (refused,) = self.successResultOf(one)
        self.assertEqual((refused.status, refused.reply), ("failed", "554 5.7.1 spam"))
        two = Deferred.fromCoroutine(self.session.deliver(second))
        self.assertNotIn(b"RSET", self.sent())
        self.reply("250 2.0.0 queued")
        self.assertEqual(self.successResultOf(two)[0].status, "sent")

    def test_a_connection_lost_under_a_followed_message_fails_only_the_first(self) -> None:
        """The first fails with the loss (the pool defers it and finds the second another
        connection); the second's replies, which never come, leave no unhandled error."""
        import gc

        self.opened("PIPELINING")
        one = Deferred.fromCoroutine(self.session.deliver(lease("a@x.org"), lambda: lease()))
        self.sent()
        self.reply("250 ok", "250 ok", "354 go ahead")
        self.assertIn(b"MAIL FROM", self.sent())
        self.protocol.connectionLost(Failure(ConnectionLost("reset by peer")))
        self.failureResultOf(one, ConnectionLost)
        del one, self.session, self.protocol  # the pool lets go of a broken session
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_followed_message_the_relay_cannot_carry_is_not_sent(self) -> None:
        """A UTF-8 address to a relay without SMTPUTF8: refused here, no envelope goes."""
        self.opened("PIPELINING")
        utf8 = lease("josé@x.org")
        one = Deferred.fromCoroutine(self.session.deliver(lease("a@x.org"), lambda: utf8))
        self.sent()
        self.reply("250 ok", "250 ok", "354 go ahead")
        self.assertNotIn(b"MAIL FROM", self.sent())
        self.reply("250 2.0.0 queued")
        self.assertEqual(self.successResultOf(one)[0].status, "sent")
        (refused,) = self.successResultOf(Deferred.fromCoroutine(self.session.deliver(utf8)))
        self.assertEqual(refused.status, "failed")
        self.assertIn("SMTPUTF8", refused.reply)
        self.assertEqual(self.sent(), b"")

    def test_without_pipelining_no_message_follows(self) -> None:
        self.opened("SIZE")
        asked: list[int] = []
        one = Deferred.fromCoroutine(
            self.session.deliver(lease("a@x.org"), lambda: asked.append(1) or lease())
        )
        for answer in ("250 ok", "250 ok", "354 go"):
            self.sent()
            self.reply(answer)
        self.assertTrue(self.sent().endswith(b"\r\n.\r\n"))
        self.reply("250 queued")
        self.successResultOf(one)
        self.assertEqual(asked, [])

    def test_timeout_aborts_and_fails_the_wait(self) -> None:
        result = Deferred.fromCoroutine(self.session.open())
        self.clock.advance(9.9)
        self.assertNoResult(result)
        self.reply("220 hi")  # a reply resets the clock
        self.clock.advance(9.9)
        self.assertNoResult(result)
        self.clock.advance(0.2)
        failure = self.failureResultOf(result, SMTPTimeout)
        self.assertIn("within 10s", str(failure.value))
        self.assertTrue(self.transport.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_connection_at_rest_does_not_time_out(self) -> None:
        """No reply due, no timeout; the next command's reply gets the whole timeout, from
        when it was sent (whether the rest was shorter or longer than the timeout)."""
        self.opened("PIPELINING")
        for rest in (5.0, 25.0):
            self.clock.advance(rest)
            self.assertFalse(self.transport.disconnected)
            answered = self.protocol.command("NOOP")
            self.clock.advance(9.9)
            self.assertNoResult(answered)
            self.reply("250 ok")
            self.assertEqual(self.successResultOf(answered).code, 250)
        waiting = self.protocol.command("NOOP")
        self.clock.advance(9.9)
        self.assertNoResult(waiting)
        self.clock.advance(0.2)
        self.failureResultOf(waiting, SMTPTimeout)
        self.assertTrue(self.transport.disconnected)

    def test_garbage_reply(self) -> None:
        result = Deferred.fromCoroutine(self.session.open())
        self.reply("HTTP/1.1 400 Bad Request")
        self.failureResultOf(result, SMTPProtocolError)
        self.assertTrue(self.transport.disconnected)

    def test_multiline_greeting_and_ehlo_fallback(self) -> None:
        result = Deferred.fromCoroutine(self.session.open())
        self.reply("220-relay.test", "220 welcome")
        self.assertEqual(self.sent(), b"EHLO client.test\r\n")
        self.reply("502 what")
        self.assertEqual(self.sent(), b"HELO client.test\r\n")
        self.reply("250 hello")
        self.successResultOf(result)
        self.assertEqual(self.session.extensions, {})

    def test_refusing_greeting(self) -> None:
        result = Deferred.fromCoroutine(self.session.open())
        self.reply("554 go away")
        failure = self.failureResultOf(result, SessionError)
        self.assertTrue(failure.value.permanent)

    def test_commands_with_line_breaks_are_refused(self) -> None:
        self.assertRaises(ValueError, self.protocol.command, "RCPT TO:<a@b>\r\nDATA")


class EncodeBodyTests(SynchronousTestCase):
    def test_dot_stuffing_and_line_endings(self) -> None:
        self.assertEqual(encode_body(b".a\n..b\r\nc.\r.\n"), b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n")
        self.assertEqual(encode_body(b"no newline"), b"no newline\r\n.\r\n")
        self.assertEqual(encode_body(b""), b"\r\n.\r\n")

    def test_line_endings_that_only_look_like_crlf(self) -> None:
        """A CR or LF beside a CRLF pair is still a line ending of its own."""
        from smtpmailer.message import to_crlf

        for data, wire in [
            (b"a\r\r\nb\r\n", b"a\r\n\r\nb\r\n"),
            (b"a\r\n\nb\r\n", b"a\r\n\r\nb\r\n"),
            (b"a\r\n\r", b"a\r\n\r\n"),
            (b"\n\r\n.x\r\n", b"\r\n\r\n.x\r\n"),
        ]:
            self.assertEqual(to_crlf(data), wire, data)
        crlf = b"Subject: s\r\n\r\nline\r\n.dot\r\n"
        self.assertIs(to_crlf(crlf), crlf)  # already CRLF: not copied
        self.assertEqual(encode_body(crlf), b"Subject: s\r\n\r\nline\r\n..dot\r\n.\r\n")
