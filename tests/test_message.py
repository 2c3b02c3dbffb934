"""Building and checking messages: addresses, header injection, MIME, raw input."""

from __future__ import annotations

import random
from email import message_from_bytes
from email.header import decode_header, make_header
from email.policy import default

from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.message import (
    _PLAIN_ADDRESS,
    Attachment,
    BadAddress,
    MessageError,
    _parse_address,
    build_message,
    normalize_address,
    parse_header_option,
    prepare_raw,
)


class PlainAddressTests(SynchronousTestCase):
    """Everyday addresses skip the full parse; they must come out exactly as it gives them,
    and whatever the full parse refuses must never take the short way."""

    def corpus(self) -> list[str]:
        rng = random.Random(20261204)
        atoms = "abcXYZ019_+-"
        label = "aZ9-"
        made = [
            "a" * 64 + "@example.org",
            "a" * 65 + "@example.org",
            "x@" + ".".join(["b" * 63] * 3) + "." + "c" * 61,  # 253
            "x@" + ".".join(["b" * 63] * 4),  # 255
            "x@" + "b" * 64 + ".org",
            "-@EXAMPLE.org",
            "a.b@c",
            "a..b@c.d",
            ".a@c.d",
            "a.@c.d",
            "a@-c.d",
            "a@c-.d",
            "a@c..d",
            "a@c.d.",
            "a@1.2.3.4",
            "a@[127.0.0.1]",
            "a@b@c",
            "a b@c.d",
            "a@c.d\n",
            "A@B.C",
        ]
        for _ in range(3000):
            local = ".".join(
                "".join(rng.choice(atoms) for _ in range(rng.randint(0, 5)))
                for _ in range(rng.randint(1, 3))
            )
            domain = ".".join(
                "".join(rng.choice(label) for _ in range(rng.randint(0, 6)))
                for _ in range(rng.randint(1, 4))
            )
            made.append(f"{local}@{domain}")
        return made

    def test_the_short_way_agrees_with_the_full_parse(self) -> None:
        taken = 0
        for text in self.corpus():
            try:
                full: str | BaseException = _parse_address(text, "address", False)
            except BadAddress as error:
                full = error
            if _PLAIN_ADDRESS.fullmatch(text):
                taken += 1
            try:
                either: str | BaseException = normalize_address(text)
            except BadAddress as error:
                either = error
            if isinstance(full, str):
                self.assertEqual(either, full, text)
            else:
                self.assertIsInstance(either, BadAddress, text)
        self.assertGreater(taken, 300)  # the corpus does exercise the short way


class AddressTests(SynchronousTestCase):
    def test_accepted(self) -> None:
        self.assertEqual(normalize_address("a.b+tag@Example.ORG"), "a.b+tag@example.org")
        self.assertEqual(normalize_address("Ann Smith <ann@example.org>"), "ann@example.org")
        self.assertEqual(normalize_address("x@bücher.example"), "x@xn--bcher-kva.example")
        self.assertEqual(normalize_address("root@localhost"), "root@localhost")
        self.assertEqual(normalize_address("u@[192.0.2.1]"), "u@[192.0.2.1]")

    def test_refused(self) -> None:
        for bad in (
            "",
            "plain",
            "@example.org",
            "a@",
            "a b@example.org",
            "a..b@example.org",
            "a@-bad.example",
            "a@exa_mple.org",
            "a@b.org, c@d.org",
            "a@b.org\r\nRCPT TO:<x>",
            "jörg@example.org",
            "<a@b.org",
        ):
            with self.assertRaises(MessageError, msg=bad):
                normalize_address(bad)

    def test_header_option(self) -> None:
        self.assertEqual(parse_header_option("X-Campaign: spring"), ("X-Campaign", "spring"))
        for bad in ("no colon", "Bad Name: v", "Subject: s", "X-A: v\r\nBcc: evil@x.org"):
            self.assertRaises(MessageError, parse_header_option, bad)


class BuildTests(SynchronousTestCase):
    def test_every_line_break_python_knows_is_refused_in_headers(self) -> None:
        """Found by fuzzing: NEL, U+2028, VT... passed the CR/LF check, then crashed the
        message builder (a traceback from `send`)."""
        for breaker in ("\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1e"):
            for field in ("subject", "header", "name"):
                with self.assertRaises(MessageError):
                    build_message(
                        sender=f"A{breaker}B <a@example.com>" if field == "name" else "a@x.org",
                        to=["b@example.org"],
                        subject=f"hi{breaker}there" if field == "subject" else "s",
                        headers=[("X-A", f"1{breaker}2")] if field == "header" else [],
                        now=0.0,
                    )

    def build(self, **overrides: object) -> tuple[object, object]:
        arguments: dict[str, object] = {
            "sender": "Jörg Müller <joerg@example.com>",
            "to": ["a@example.org"],
            "cc": ["Cé <c@example.org>"],
            "bcc": ["hidden@example.org"],
            "subject": "Grüße — ünïcode",
            "body": "Hallo\nWelt",
            "now": 1_700_000_000.0,
        }
        arguments.update(overrides)
        envelope = build_message(**arguments)  # type: ignore[arg-type]
        return envelope, message_from_bytes(envelope.data, policy=default)

    def test_headers_and_envelope(self) -> None:
        envelope, message = self.build()
        self.assertEqual(envelope.sender, "joerg@example.com")  # type: ignore[attr-defined]
        self.assertEqual(
            envelope.recipients,  # type: ignore[attr-defined]
            ("a@example.org", "c@example.org", "hidden@example.org"),
        )
        self.assertEqual(message["Subject"], "Grüße — ünïcode")  # type: ignore[index]
        self.assertEqual(str(message["From"]), "Jörg Müller <joerg@example.com>")  # type: ignore[index]
        self.assertIsNone(message["Bcc"])  # type: ignore[index]
        self.assertTrue(message["Message-ID"].endswith("@example.com>"))  # type: ignore[index]
        self.assertIn("2023", message["Date"])  # type: ignore[index]
        raw = envelope.data  # type: ignore[attr-defined]
        self.assertTrue(raw.isascii(), "built messages are 7-bit clean")
        self.assertNotIn(b"\n", raw.replace(b"\r\n", b""))
        self.assertIn(
            "Grüße",
            str(make_header(decode_header(raw.split(b"Subject: ")[1].split(b"\r\n")[0].decode()))),
        )

    def test_html_and_attachments(self) -> None:
        _, message = self.build(
            html="<p>Hallo</p>",
            attachments=[
                Attachment("report.pdf", b"%PDF-1.4 fake"),
                Attachment("notes.txt", b"plain notes"),
                Attachment("blob", b"\x00\x01"),
            ],
        )
        parts = {part.get_filename(): part for part in message.iter_attachments()}  # type: ignore[attr-defined]
        self.assertEqual(parts["report.pdf"].get_content_type(), "application/pdf")
        self.assertEqual(parts["notes.txt"].get_content_type(), "text/plain")
        self.assertEqual(parts["blob"].get_content_type(), "application/octet-stream")
        self.assertEqual(parts["report.pdf"].get_content(), b"%PDF-1.4 fake")
        body = message.get_body(("html",))  # type: ignore[attr-defined]
        self.assertIn("<p>Hallo</p>", body.get_content())

    def test_injection_refused(self) -> None:
        self.assertRaises(MessageError, self.build, subject="hi\r\nBcc: victim@example.org")
        self.assertRaises(MessageError, self.build, subject="hi\nX: y")
        self.assertRaises(MessageError, self.build, to=["a@example.org\r\nBcc: v@example.org"])
        self.assertRaises(MessageError, self.build, sender="Evil\n <e@example.org>")

    def test_needs_recipients(self) -> None:
        self.assertRaises(MessageError, self.build, to=[], cc=[], bcc=[])


class RawTests(SynchronousTestCase):
    RAW = (
        b"From: App <app@example.com>\nTo: a@example.org, B <b@example.org>\n"
        b"Cc: c@example.org\nBcc: secret@example.org\n  , other@example.org\n"
        b"Subject: raw\n\nbody line\n.\n"
    )

    def test_extract_recipients_and_strip_bcc(self) -> None:
        envelope = prepare_raw(self.RAW, extract_recipients=True, now=0)
        self.assertEqual(
            envelope.recipients,
            (
                "a@example.org",
                "b@example.org",
                "c@example.org",
                "secret@example.org",
                "other@example.org",
            ),
        )
        self.assertEqual(envelope.sender, "app@example.com")
        self.assertNotIn(b"Bcc", envelope.data)
        self.assertNotIn(b"secret", envelope.data)
        self.assertIn(b"\r\nMessage-ID: <", envelope.data)
        self.assertIn(b"\r\nDate: ", envelope.data)
        self.assertTrue(envelope.data.endswith(b"\r\n\r\nbody line\r\n.\r\n"))

    def test_explicit_recipients_keep_headers(self) -> None:
        envelope = prepare_raw(
            self.RAW, recipients=["z@example.org"], sender="bounce@example.com", now=0
        )
        self.assertEqual(envelope.recipients, ("z@example.org",))
        self.assertEqual(envelope.sender, "bounce@example.com")
        self.assertIn(b"Bcc: secret@example.org", envelope.data)

    def test_the_null_sender(self) -> None:
        """``<>`` (sendmail -f '<>', MAIL FROM:<> over -bs): no envelope sender, as
        auto-replies are sent; the Message-ID takes the From header's domain."""
        envelope = prepare_raw(self.RAW, recipients=["z@example.org"], sender=" <> ", now=0)
        self.assertEqual(envelope.sender, "")
        self.assertRegex(envelope.data, rb"\r\nMessage-ID: <[^>]+@example\.com>\r\n")
        bare = prepare_raw(b"Subject: s\n\nb\n", recipients=["z@example.org"], sender="<>", now=0)
        self.assertEqual(bare.sender, "")
        self.assertRegex(bare.data, rb"\r\nMessage-ID: <[^>]+@localhost>\r\n")

    def test_existing_date_and_id_are_kept(self) -> None:
        raw = b"From: a@example.com\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nMessage-ID: <x@y>\n\nb\n"
        envelope = prepare_raw(raw, recipients=["r@example.org"], now=0)
        self.assertEqual(envelope.data.count(b"Date:"), 1)
        self.assertEqual(envelope.data.count(b"Message-ID:"), 1)

    def test_refusals(self) -> None:
        self.assertRaises(
            MessageError, prepare_raw, b"Subject: x\n\nb\n", extract_recipients=True, now=0
        )
        self.assertRaises(
            MessageError, prepare_raw, b"To: a@example.org\n\nb\n", extract_recipients=True, now=0
        )  # no From, no sender
        self.assertRaises(
            MessageError,
            prepare_raw,
            b"From: a@b.org\nTo: bad address\n\nb\n",
            extract_recipients=True,
            now=0,
        )
