"""sendmail's hand-over to a running daemon, in memory: the request format both ends
share, and the daemon's end answering only after the commit."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.config import parse_config
from smtpmailer.intake.checks import check_envelope
from smtpmailer.intake.refusals import EX_CANTCREAT, EX_DATAERR, EX_TEMPFAIL, EX_USAGE
from smtpmailer.intake.sendmail.command import (
    decode_header,
    encode_request,
    parse_arguments,
)
from smtpmailer.intake.sendmail.handover import IDLE_TIMEOUT, MAX_CONCURRENT, SendmailFactory
from smtpmailer.message import Envelope, MessageError
from smtpmailer.queue import QueueError, QueueFull
from smtpmailer.queue.runner import synchronous_runner

CONFIG = "[Relay]\nhost = h\n[Queue]\nmax_message_size = 2KB\n"
MESSAGE = b"From: app@example.com\nTo: a@example.org\nSubject: hi\n\nbody\n"


class RequestFormatTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        args = parse_arguments(["-f", "ops@example.com", "-F", "Ops Team", "-t", "a@x.org", "b"])
        request = encode_request(args, "www-data", b"data\r\n")
        first, rest = request.split(b"\n", 1)
        magic, header_length, data_length = first.split()
        self.assertEqual((magic, int(data_length)), (b"SENDMAIL/1", 6))
        decoded, user = decode_header(rest[: int(header_length)])
        self.assertEqual(rest[int(header_length) :], b"data\r\n")
        self.assertEqual(user, "www-data")
        self.assertEqual(
            (decoded.sender, decoded.full_name, decoded.extract, decoded.recipients),
            ("ops@example.com", "Ops Team", True, ["a@x.org", "b"]),
        )

    def test_arguments_that_are_not_utf8_survive(self) -> None:
        """argv that is not UTF-8 arrives as surrogate escapes; it must come back equal."""
        odd = b"caf\xe9@example.org".decode("utf-8", "surrogateescape")
        args = parse_arguments([odd])
        request = encode_request(args, "u", b"")
        header = request.split(b"\n", 1)[1]
        self.assertEqual(decode_header(header)[0].recipients, [odd])

    def test_no_sender_stays_none(self) -> None:
        header = encode_request(parse_arguments(["a@x.org"]), "u", b"").split(b"\n", 1)[1]
        args, _ = decode_header(header)
        self.assertIsNone(args.sender)
        self.assertIsNone(args.full_name)
        self.assertFalse(args.extract)

    def test_malformed_headers(self) -> None:
        for bad in (b"user=u\0nonsense", b"user=u\0size=1", b"extract=1", b"user="):
            self.assertRaises(ValueError, decode_header, bad)

    def test_dsn_fields_are_checked_again(self) -> None:
        """Any local writer of the socket may send a request, and these values go into
        the commands to relays: a line break or a word sendmail's -N would refuse is a
        malformed request."""
        for bad in (
            b"user=u\0notify=NEVER\r\nRSET",
            b"user=u\0notify=NEVER,SUCCESS",
            b"user=u\0ret=SOME",
            b"user=u\0envid=a b",
            b"user=u\0envid=a+zz",
            b"user=u\0envid=a=b",
            b"user=u\0envid=" + b"x" * 101,
        ):
            self.assertRaises(ValueError, decode_header, bad)
        args, _ = decode_header(b"user=u\0notify=SUCCESS,DELAY\0ret=HDRS\0envid=order+2B42")
        self.assertEqual(
            (args.notify, args.ret, args.envid), ("SUCCESS,DELAY", "HDRS", "order+2B42")
        )


class DaemonEndTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.submitted: list[tuple[Envelope, Deferred[str]]] = []
        self.on_thread: list[int] = []  # sizes of the messages prepared off the reactor

        def blocking(function: Any, *args: Any) -> Deferred[Any]:
            self.on_thread.append(len(args[2]))
            return synchronous_runner(function, *args)

        self.factory = SendmailFactory(
            parse_config(CONFIG, "c.conf"), self.submit, self.clock, blocking
        )

    def submit(self, envelope: Envelope) -> Deferred[str]:
        """Stands in for MailerService.submit: the shared checks, then a commit that
        finishes when the test says so."""
        try:
            envelope = check_envelope(self.factory.config, envelope)
        except MessageError:
            return fail()
        result: Deferred[str] = Deferred()
        self.submitted.append((envelope, result))
        return result

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def request(self, argv: list[str], data: bytes = MESSAGE) -> tuple[Any, StringTransport]:
        protocol, transport = self.connect()
        protocol.dataReceived(encode_request(parse_arguments(argv), "cron", data))
        return protocol, transport

    def answer(self, transport: StringTransport) -> tuple[int, str]:
        code, _, text = transport.value().decode().rstrip("\n").partition(" ")
        return int(code), text

    def test_answers_only_after_the_commit(self) -> None:
        protocol, transport = self.request(["-i", "root@example.org"])
        ((envelope, committed),) = self.submitted
        self.assertEqual(transport.value(), b"", "answered before the commit")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(envelope.sender, "app@example.com")
        self.assertEqual(envelope.recipients, ("root@example.org",))
        self.assertIn(b"\r\nMessage-ID: <", envelope.data)
        committed.callback("7JP8C2CJQ0RJNJ")
        self.assertEqual(self.answer(transport), (0, "7JP8C2CJQ0RJNJ"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_only_large_messages_are_prepared_on_a_thread(self) -> None:
        from smtpmailer.intake.sendmail.handover import PREPARED_ON_REACTOR

        self.factory.config = parse_config(CONFIG.replace("2KB", "1MB"), "c.conf")
        large = MESSAGE + b"x" * PREPARED_ON_REACTOR + b"\n"
        for data in (MESSAGE, large):
            _, transport = self.request(["-t"], data)
            self.submitted[-1][1].callback("ID")
            self.assertEqual(self.answer(transport), (0, "ID"))
        self.assertEqual(self.on_thread, [len(large)])
        self.assertEqual(len(self.submitted), 2)

    def test_request_in_small_pieces(self) -> None:
        protocol, transport = self.connect()
        request = encode_request(parse_arguments(["-t"]), "cron", MESSAGE)
        for index in range(len(request)):
            protocol.dataReceived(request[index : index + 1])
        ((envelope, committed),) = self.submitted
        self.assertEqual(envelope.recipients, ("a@example.org",))
        committed.callback("ID1")
        self.assertEqual(self.answer(transport), (0, "ID1"))

    def test_the_local_user_is_the_sender_when_nothing_else_says(self) -> None:
        self.request(["-i", "a@example.org"], b"Subject: no from\n\nhi\n")
        ((envelope, _),) = self.submitted
        self.assertTrue(envelope.sender.startswith("cron@"), envelope.sender)
        self.assertTrue(envelope.data.startswith(b"From: cron@"))

    def test_bad_address_is_a_data_error(self) -> None:
        _, transport = self.request(["not an address"])
        self.assertEqual(self.submitted, [])
        code, text = self.answer(transport)
        self.assertEqual(code, EX_DATAERR)
        self.assertIn("has an invalid local part", text)

    def test_header_injection_in_an_argument_is_refused(self) -> None:
        _, transport = self.request(["a@example.org\r\nBcc: victim@example.org"])
        self.assertEqual(self.submitted, [])
        code, text = self.answer(transport)
        self.assertEqual(code, EX_DATAERR)
        self.assertIn("line break", text)

    def test_too_big_is_refused_with_the_same_words_as_the_command(self) -> None:
        _, transport = self.request(["a@example.org"], MESSAGE + b"x" * 3000)
        self.assertEqual(self.submitted, [])
        self.assertEqual(self.answer(transport)[0], EX_DATAERR)
        self.assertIn("over max_message_size (2KB)", self.answer(transport)[1])

    def test_far_too_big_is_refused_before_it_is_read(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"SENDMAIL/1 6 100000000\nuser=u")
        self.assertEqual(self.answer(transport)[0], EX_DATAERR)
        self.assertIn("100000000 bytes, over max_message_size (2KB)", self.answer(transport)[1])
        self.assertTrue(transport.disconnecting)
        protocol.dataReceived(b"x" * 1000)  # what is still in flight is dropped
        self.assertEqual(self.submitted, [])

    def test_far_too_big_over_sendmail_bs_gets_its_smtp_reply(self) -> None:
        """The header is read before the refusal, for -bs's answer: 552 as the SMTP
        listener gives it. The answer comes before any byte of the body."""
        args = parse_arguments(["-bs"])
        args.recipients = ["a@example.org"]
        request = encode_request(args, "u", b"x" * 100_000)
        head = request[:-100_000]  # the first line and the header; no byte of the body
        protocol, transport = self.connect()
        for index in range(len(head)):  # byte by byte: no answer before the whole header
            self.assertEqual(transport.value(), b"")
            protocol.dataReceived(head[index : index + 1])
        self.assertEqual(
            self.answer(transport),
            (EX_DATAERR, "552 5.3.4 message is 100000 bytes, over max_message_size (2KB)"),
        )
        self.assertTrue(transport.disconnecting)

    def test_queue_full_and_queue_errors(self) -> None:
        for error, code in (
            (QueueFull("queue is full (5 messages)"), EX_TEMPFAIL),
            (QueueError("cannot open queue database"), EX_CANTCREAT),
        ):
            self.factory.submit = lambda envelope, error=error: fail(error)
            _, transport = self.request(["a@example.org"])
            self.assertEqual(self.answer(transport)[0], code)
            self.assertIn(str(error), self.answer(transport)[1])

    def test_an_unexpected_failure_is_logged_and_a_tempfail(self) -> None:
        self.factory.submit = lambda envelope: fail(RuntimeError("disk on fire"))
        _, transport = self.request(["a@example.org"])
        self.assertEqual(self.answer(transport)[0], EX_TEMPFAIL)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_malformed_requests(self) -> None:
        for raw in (
            b"HELO there\n",
            b"SENDMAIL/1 x y\n",
            b"SENDMAIL/1 0 5\n",
            b"SENDMAIL/9 6 0\nuser=u",
            b"X" * 80,
            b"SENDMAIL/1 6 0\nuser=uEXTRA",
            b"SENDMAIL/1 6 0\nnope=u",
        ):
            protocol, transport = self.connect()
            protocol.dataReceived(raw)
            self.assertEqual(self.answer(transport)[0], EX_USAGE, raw)
            self.assertIn("malformed request", self.answer(transport)[1])
            self.assertTrue(transport.disconnecting)
        self.assertEqual(self.submitted, [])

    def test_a_silent_client_is_dropped(self) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(b"SENDMAIL/1 6 10\nuser=u")
        self.clock.advance(IDLE_TIMEOUT)
        self.assertEqual(self.answer(transport)[0], EX_TEMPFAIL)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.submitted, [])

    def test_a_client_that_goes_away_leaves_no_timer(self) -> None:
        protocol, transport = self.connect()
        protocol.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_past_the_concurrency_cap_a_call_is_closed_unanswered(self) -> None:
        """Memory stays bounded: over MAX_CONCURRENT requests, the connection is closed
        without an answer, which makes the command write the queue itself."""
        busy = [self.connect() for _ in range(MAX_CONCURRENT)]
        protocol, transport = self.connect()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        protocol.connectionLost(None)
        busy[0][0].connectionLost(None)
        protocol, transport = self.connect()
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(encode_request(parse_arguments(["a@example.org"]), "u", MESSAGE))
        self.assertEqual(len(self.submitted), 1)
