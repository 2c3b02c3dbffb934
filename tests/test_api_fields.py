"""The fielded providers' reading of a stored message: a single-part message has its head
parsed and its body taken as it is, and what comes out is what the email package's whole
parse gives (the text, its charset and transfer encoding undone, the headers, the type)."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.delivery.api import fields
from smtpmailer.queue import Lease

HEAD = b"From: Zoe <zoe@example.com>\r\nTo: ann@example.org\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
SINGLE_PARTS = {
    "plain ASCII": b"\r\nhello\r\n.dot line\r\n",
    "UTF-8, 8 bit": (
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + "Grüße, Zoë\r\n".encode()
    ),
    "quoted-printable html": (
        b"Content-Type: text/html; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n<p>Gr=C3=BC=C3=9Fe=\r\n</p>\r\n"
    ),
    "base64 latin-1": (
        b"Content-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nR3L832U=\r\n"
    ),
    "a lone attachment": (
        b"Content-Type: application/pdf; name=a.pdf\r\n"
        b"Content-Disposition: attachment; filename=a.pdf\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n"
    ),
}


def whole(data: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(message, EmailMessage)
    return message


class SinglePartTests(SynchronousTestCase):
    def test_the_same_as_the_whole_parse(self) -> None:
        for name, rest in SINGLE_PARTS.items():
            data = HEAD + rest
            fast, slow = fields._parse(data), whole(data)
            self.assertEqual(fast.get_content_type(), slow.get_content_type(), name)
            self.assertEqual(list(fast.raw_items()), list(slow.raw_items()), name)
            self.assertEqual(fast.get_content(), slow.get_content(), name)
            self.assertEqual(fast.get_payload(decode=True), slow.get_payload(decode=True), name)

    def test_the_fields_of_a_utf8_message(self) -> None:
        lease = Lease(
            "7JSCQ0000ABCDE",
            "t",
            "zoe@example.com",
            ("ann@example.org", "bob@example.org"),
            HEAD + SINGLE_PARTS["UTF-8, 8 bit"],
            5,
            0,
            0.0,
        )
        read = fields.read(lease, "SendGrid")
        self.assertEqual(read.text, "Grüße, Zoë\r\n")
        self.assertIsNone(read.html)
        self.assertEqual(
            (read.sender, read.to, read.bcc),
            (("Zoe", "zoe@example.com"), [("", "ann@example.org")], [("", "bob@example.org")]),
        )

    def test_a_line_that_is_no_header_reads_as_the_whole_parse_does(self) -> None:
        data = HEAD + b"this line is no header\r\nX-After: 1\r\n\r\nbody\r\n"
        fast, slow = fields._parse(data), whole(data)
        self.assertEqual(fast.get_content(), slow.get_content())
        self.assertIn("this line is no header", fast.get_content())
        self.assertEqual(list(fast.raw_items()), list(slow.raw_items()))

    def test_parts_and_lf_endings_take_the_whole_parse(self) -> None:
        multipart = HEAD + (
            b"Content-Type: multipart/alternative; boundary=b\r\n\r\n"
            b"--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
            b"--b\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--b--\r\n"
        )
        parts = fields._parse(multipart)
        self.assertEqual(
            [p.get_content_type() for p in parts.walk()],
            ["multipart/alternative", "text/plain", "text/html"],
        )
        lf = (HEAD + b"\r\nhello\r\n").replace(b"\r\n", b"\n") + b"\r\n\r\nstill the body\r\n"
        self.assertEqual(fields._parse(lf).get_content(), whole(lf).get_content())
