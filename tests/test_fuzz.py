"""Fuzzing the parsers that take outside input: the config file, addresses, MIME building
and the SMTP listener's commands. Each must answer bad input with its own clear error,
never another exception.

Derandomized (a fixed seed) with a few hundred cases in ``make test``; the longer mode by
hand: ``SMTPMAILER_FUZZ_EXAMPLES=20000 .venv/bin/trial tests.test_fuzz`` (bench/chaos
runs it too).
"""

from __future__ import annotations

import email
import email.policy
import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.config import parse_config
from smtpmailer.ini import ConfigError
from smtpmailer.intake.refusals import MessageError
from smtpmailer.intake.smtp.listener import SubmissionFactory
from smtpmailer.message import build_message, normalize_address, prepare_raw

EXAMPLES = int(os.environ.get("SMTPMAILER_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Counted by bench/chaos for its report.
CASES: dict[str, int] = {}


def counted(name: str) -> None:
    CASES[name] = CASES.get(name, 0) + 1


SECTIONS = ["Daemon", "Queue", "Relay", "Relay:a", "Logging", "Status", "Submission", "X"]
KEYS = ["host", "port", "security", "timeout", "max_connections", "rate_limit", "listen",
        "path", "state_dir", "retry_delay", "auth", "verify", "level", "nonsense"]  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(["", "0", "-1", "25", "99999999", "5m", "1/x", "tcp:0", "true", "tls"]),
    st.text(max_size=30),
)
LINE = st.one_of(
    st.builds(lambda s: f"[{s}]", st.sampled_from(SECTIONS)),
    st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(KEYS), VALUES),
    st.text(max_size=40),
)


class FuzzTests(SynchronousTestCase):
    @FUZZ
    @given(st.lists(LINE, max_size=25))
    def test_the_config_parser_answers_with_config_errors_only(self, lines: list[str]) -> None:
        counted("config")
        text = "[Relay]\nhost = h\n" + "\n".join(lines)
        try:
            parse_config(text, "/nonexistent/fuzz.conf")
        except ConfigError as error:
            self.assertTrue(str(error).startswith("/nonexistent/fuzz.conf"), str(error))
            self.assertNotIn("\n", str(error))

    @FUZZ
    @given(
        st.one_of(
            st.text(max_size=80),
            st.builds(lambda a, b: f"{a}@{b}", st.text(max_size=30), st.text(max_size=30)),
            st.from_regex(r"[A-Za-z0-9.+_-]{1,20}@[a-z0-9.-]{1,20}", fullmatch=True),
        )
    )
    def test_addresses_are_an_address_or_a_bad_address(self, text: str) -> None:
        counted("address")
        try:
            address = normalize_address(text, "recipient", allow_utf8=True)
        except MessageError:
            return
        self.assertEqual(address.count("@") >= 1, True)
        self.assertNotIn("\n", address)
        self.assertNotIn("\r", address)
        self.assertEqual(normalize_address(address, "recipient", allow_utf8=True), address)

    @FUZZ
    @given(
        subject=st.text(max_size=60),
        body=st.text(max_size=200),
        name=st.text(max_size=20),
        header=st.text(max_size=30),
    )
    def test_built_messages_parse_back_or_are_refused(
        self, subject: str, body: str, name: str, header: str
    ) -> None:
        counted("mime")
        try:
            envelope = build_message(
                sender=f"{name} <app@example.com>" if name else "app@example.com",
                to=["a@example.org"],
                cc=[],
                bcc=["hidden@example.org"],
                subject=subject,
                body=body,
                headers=[("X-Fuzz", header)] if header else [],
                now=1_800_000_000.0,
            )
        except MessageError:
            return
        self.assertTrue(envelope.data.isascii(), "7bit on the wire")
        parsed = email.message_from_bytes(envelope.data, policy=email.policy.default)
        self.assertNotIn("bcc", {key.lower() for key in parsed.keys()})
        self.assertEqual(envelope.recipients, ("a@example.org", "hidden@example.org"))
        # The words survive the trip; folding may change the white space between them.
        self.assertEqual("".join(str(parsed["subject"]).split()), "".join(subject.split()))

    @FUZZ
    @given(st.binary(max_size=300))
    def test_raw_messages_are_taken_or_refused(self, data: bytes) -> None:
        counted("raw")
        try:
            envelope = prepare_raw(data, extract_recipients=True, now=1_800_000_000.0)
        except MessageError:
            return
        self.assertTrue(envelope.recipients)
        self.assertNotIn(b"\nbcc:", envelope.data.lower().split(b"\r\n\r\n")[0])

    @FUZZ
    @given(
        st.lists(
            st.one_of(
                st.binary(max_size=60),
                st.sampled_from(
                    [b"EHLO x", b"HELO", b"MAIL FROM:<a@example.com>", b"RCPT TO:<b@x.org>",
                     b"DATA", b".", b"RSET", b"NOOP", b"QUIT", b"AUTH PLAIN", b"STARTTLS",
                     b"MAIL FROM:<\xff@x>", b"RCPT TO:<>", b"VRFY a", b"\xc3\xa4"]
                ),
            ),
            max_size=20,
        )
    )  # fmt: skip
    def test_the_smtp_listener_answers_every_line(self, lines: list[bytes]) -> None:
        counted("smtp")
        config = parse_config("[Relay]\nhost = h\n[Queue]\nmax_message_size = 4KB\n", "c")
        factory = SubmissionFactory(config, lambda envelope, peer: succeed("Q1"), Clock(), None)
        protocol = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        protocol.makeConnection(transport)
        try:
            for line in lines:
                if transport.disconnecting:
                    break
                protocol.dataReceived(line.replace(b"\r", b"").replace(b"\n", b"") + b"\r\n")
        finally:
            protocol.connectionLost(None)
        self.assertEqual(self.flushLoggedErrors(), [], "an exception inside the listener")
        for reply in transport.value().split(b"\r\n"):
            if reply:
                self.assertRegex(reply, rb"^[2-5]\d\d[ -]", reply)


def cases() -> dict[str, Any]:
    return dict(CASES)
