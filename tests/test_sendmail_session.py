"""``sendmail -bs``: the SMTP session Symfony Mailer, SwiftMailer and Laravel speak to
/usr/sbin/sendmail, read from stdin and answered on stdout. Here with a recording submit;
tests/test_sendmail.py runs it as a process, through the daemon and without one."""

from __future__ import annotations

import io

from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.intake.refusals import EX_CONFIG, EX_DATAERR, EX_OK, EX_TEMPFAIL
from smtpmailer.intake.sendmail.command import parse_arguments
from smtpmailer.intake.sendmail.session import MAX_COMMAND, Session


class SessionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.submitted: list[tuple[str, list[str], bytes]] = []
        self.answers: list[tuple[int, str]] = []

    def submit(self, sender: str, recipients: list[str], data: bytes) -> tuple[int, str]:
        self.submitted.append((sender, list(recipients), data))
        if self.answers:
            return self.answers.pop(0)
        return EX_OK, f"Q{len(self.submitted)}"

    def session(self, script: bytes) -> list[str]:
        """The replies to ``script``, one string per line."""
        out = io.BytesIO()
        status = Session("host.example", self.submit, io.BytesIO(script), out).serve()
        self.assertEqual(status, EX_OK)
        text = out.getvalue().decode()
        self.assertTrue(text.endswith("\r\n"))
        return text[:-2].split("\r\n")

    def test_symfony_mailers_conversation(self) -> None:
        """What Symfony's SmtpTransport sends over ``sendmail -bs``: HELO, one message
        with a dot-stuffed line, then QUIT; it parses the id out of 'Ok: queued as'."""
        replies = self.session(
            b"HELO [127.0.0.1]\r\n"
            b"MAIL FROM:<shop@example.com>\r\n"
            b"RCPT TO:<user@example.org>\r\n"
            b"RCPT TO:<audit@example.org>\r\n"
            b"DATA\r\n"
            b"From: shop@example.com\r\nSubject: Your order\r\n\r\n"
            b"..a line that began with a dot\r\nThank you.\r\n.\r\n"
            b"QUIT\r\n"
        )
        self.assertEqual(
            replies,
            [
                "220 host.example ESMTP smtpmailer",
                "250 host.example",
                "250 2.1.0 Ok",
                "250 2.1.5 Ok",
                "250 2.1.5 Ok",
                "354 End data with <CR><LF>.<CR><LF>",
                "250 2.0.0 Ok: queued as Q1",
                "221 2.0.0 Bye",
            ],
        )
        self.assertEqual(
            self.submitted,
            [
                (
                    "shop@example.com",
                    ["user@example.org", "audit@example.org"],
                    b"From: shop@example.com\r\nSubject: Your order\r\n\r\n"
                    b".a line that began with a dot\r\nThank you.\r\n",
                )
            ],
        )

    def test_ehlo_lists_what_is_offered_and_pipelined_commands_are_answered_in_order(
        self,
    ) -> None:
        replies = self.session(
            b"EHLO client\r\nMAIL FROM:<a@example.com> BODY=8BITMIME SIZE=20\r\n"
            b"RCPT TO:<b@example.org>\r\nDATA\r\nx\n.\nMAIL FROM:<>\r\nRCPT TO:<c@example.org>\r\n"
            b"DATA\r\ny\r\n.\r\n"
        )
        self.assertEqual(
            replies[1:6],
            [
                "250-host.example",
                "250-PIPELINING",
                "250-8BITMIME",
                "250-SMTPUTF8",
                "250 ENHANCEDSTATUSCODES",
            ],
        )
        self.assertEqual(replies[-1], "250 2.0.0 Ok: queued as Q2")
        self.assertEqual(
            self.submitted,
            [
                ("a@example.com", ["b@example.org"], b"x\n"),  # bare LF, as PHP writes
                ("", ["c@example.org"], b"y\r\n"),  # the null sender, for auto-replies
            ],
        )

    def test_commands_out_of_order_or_malformed(self) -> None:
        replies = self.session(
            b"RCPT TO:<b@example.org>\r\n"
            b"DATA\r\n"
            b"MAIL FROM:a@example.com\r\n"
            b"MAIL FROM:<a@example.com> RET=HDRS\r\n"
            b"MAIL FROM:<a@example.com>\r\n"
            b"MAIL FROM:<a@example.com>\r\n"
            b"DATA\r\n"
            b"RCPT TO:<>\r\n"
            b"RCPT TO:<b@example.org> NOTIFY=NEVER\r\n"
            b"STARTTLS\r\n"
            b"\r\n"
            b"VRFY root\r\n"
            b"NOOP\r\n"
            b"RSET\r\n"
            b"RCPT TO:<b@example.org>\r\n"
            b"QUIT\r\n"
        )
        self.assertEqual(
            replies[1:],
            [
                "503 5.5.1 Error: need MAIL command",
                "503 5.5.1 Error: need MAIL command",
                "501 5.5.4 Syntax: MAIL FROM:<address>",
                "555 5.5.4 Unsupported option: RET",
                "250 2.1.0 Ok",
                "503 5.5.1 Error: nested MAIL command",
                "554 5.5.1 Error: no valid recipients",
                "501 5.5.4 Syntax: RCPT TO:<address>",
                "555 5.5.4 Unsupported option: NOTIFY",
                "502 5.5.2 Error: command not recognized",
                "502 5.5.2 Error: command not recognized",
                "252 2.0.0 Cannot VRFY user, but will accept the message",
                "250 2.0.0 Ok",
                "250 2.0.0 Ok",
                "503 5.5.1 Error: need MAIL command",  # RSET forgot the sender
                "221 2.0.0 Bye",
            ],
        )
        self.assertEqual(self.submitted, [])

    def test_a_line_too_long_is_refused_and_the_session_goes_on(self) -> None:
        replies = self.session(b"NOOP " + b"x" * (3 * MAX_COMMAND) + b"\r\nNOOP\r\nQUIT\r\n")
        self.assertEqual(
            replies[1:],
            ["500 5.5.2 Error: line too long", "250 2.0.0 Ok", "221 2.0.0 Bye"],
        )

    def test_each_refusal_is_the_reply_the_checking_side_gave(self) -> None:
        """The daemon (or the queue written from here) answers with the refusal table's
        SMTP reply; an answer without one (no daemon answer in time, a broken config) is
        a temporary failure, so the client keeps its message."""
        self.answers = [
            (EX_DATAERR, "552 5.3.4 message is 70000 bytes, over max_message_size (64KB)"),
            (EX_TEMPFAIL, "452 4.3.1 queue is full (5 messages)"),
            (EX_TEMPFAIL, "no answer from the daemon within 60 s; the message may not be queued"),
            (EX_CONFIG, "/etc/smtpmailer/smtpmailer.conf: no [Relay] section"),
            (EX_OK, "Q5"),
        ]
        message = b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n"
        replies = self.session(message * 5)
        self.assertEqual(
            [reply for reply in replies if not reply.startswith(("250 2.1", "354"))][1:],
            [
                "552 5.3.4 message is 70000 bytes, over max_message_size (64KB)",
                "452 4.3.1 queue is full (5 messages)",
                "451 4.3.0 no answer from the daemon within 60 s; the message may not be queued",
                "451 4.3.5 /etc/smtpmailer/smtpmailer.conf: no [Relay] section",
                "250 2.0.0 Ok: queued as Q5",
            ],
        )
        self.assertEqual(len(self.submitted), 5)

    def test_input_that_ends_inside_data_queues_nothing(self) -> None:
        replies = self.session(
            b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nhalf a mess"
        )
        self.assertEqual(replies[-1], "354 End data with <CR><LF>.<CR><LF>")
        self.assertEqual(self.submitted, [])

    def test_bytes_that_are_not_a_command(self) -> None:
        replies = self.session(b"\xff\xfe MAIL\r\nMAIL FROM:<\xff@example.com>\r\nQUIT\r\n")
        self.assertEqual(
            replies[1:],
            [
                "502 5.5.2 Error: command not recognized",
                "501 5.5.4 Syntax: MAIL FROM:<address>",
                "221 2.0.0 Bye",
            ],
        )


class ArgumentTests(SynchronousTestCase):
    def test_what_symfony_laravel_and_alpine_pass(self) -> None:
        for argv in (["-bs"], ["-bs", "-i"], ["-bs", "-odb", "-oem"]):
            self.assertEqual(parse_arguments(argv).mode, "smtp", argv)
