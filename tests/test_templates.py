"""Local templates: rendering (html escaped, text not), a missing variable refused, the
sandbox refusing Python's internals, mistakes named by file and line."""

from __future__ import annotations

import email
import email.policy
import os

from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.intake.refusals import answer_for
from smtpmailer.intake.templates import TemplateRefused, Templates


def write_template(folder: str, name: str, **parts: str) -> None:
    os.makedirs(os.path.join(folder, name), exist_ok=True)
    files = {"subject": "subject.txt", "text": "text.txt", "html": "html.html"}
    for part, content in parts.items():
        with open(os.path.join(folder, name, files[part]), "w", encoding="utf-8") as handle:
            handle.write(content)


def receipt(folder: str) -> None:
    write_template(
        folder,
        "receipt",
        subject="Your receipt {{ number }}\n",
        text="Hello {{ name }},\nyou paid {{ amount }}.\n",
        html="<p>Hello {{ name }},</p><p>you paid {{ amount }}.</p>\n",
    )


class RenderingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.folder = os.path.abspath(self.mktemp())
        receipt(self.folder)
        self.templates = Templates(self.folder)

    def test_html_is_escaped_and_text_is_not(self) -> None:
        rendered = self.templates.render(
            "receipt", {"number": "A-7", "name": "Tom & <Jerry>", "amount": "€5"}
        )
        self.assertEqual(rendered.subject, "Your receipt A-7")
        self.assertEqual(rendered.text, "Hello Tom & <Jerry>,\nyou paid €5.\n")
        self.assertEqual(
            rendered.html, "<p>Hello Tom &amp; &lt;Jerry&gt;,</p><p>you paid €5.</p>\n"
        )

    def test_a_missing_variable_is_refused_naming_it_and_where(self) -> None:
        with self.assertRaises(TemplateRefused) as caught:
            self.templates.render("receipt", {"number": "A-7", "name": "Ann"})
        self.assertEqual(
            str(caught.exception),
            "template receipt: 'amount' is undefined in text.txt line 2: give it as a variable",
        )
        self.assertEqual(answer_for(caught.exception).http, 400)

    def test_the_sandbox_keeps_python_out_of_reach(self) -> None:
        write_template(
            self.folder,
            "evil",
            subject="x",
            text="{{ ''.__class__.__mro__[1].__subclasses__() }}",
        )
        with self.assertRaises(TemplateRefused) as caught:
            self.templates.render("evil", {})
        self.assertIn("template evil: not allowed in text.txt:", str(caught.exception))
        self.assertIn("__class__", str(caught.exception))

    def test_a_syntax_error_names_the_file_and_line(self) -> None:
        write_template(self.folder, "broken", subject="x", text="line one\n{{ name \n")
        with self.assertRaises(TemplateRefused) as caught:
            self.templates.render("broken", {"name": "x"})
        self.assertRegex(str(caught.exception), r"^template broken: text\.txt line 2: ")

    def test_unknown_and_unsafe_names(self) -> None:
        for name in ("nope", "../receipt", "receipt/../receipt", ""):
            with self.assertRaises(TemplateRefused) as caught:
                self.templates.render(name, {})
            self.assertIn("(templates: receipt)", str(caught.exception))

    def test_a_line_break_from_a_variable_cannot_reach_the_headers(self) -> None:
        with self.assertRaises(TemplateRefused.__mro__[1]) as caught:  # MessageError
            self.templates.build(
                "receipt",
                {"number": "1\r\nBcc: victim@example.org", "name": "a", "amount": "1"},
                sender="shop@example.com",
                to=["ann@example.org"],
                now=0,
            )
        self.assertEqual(answer_for(caught.exception).smtp_code, 554)

    def test_the_message_it_builds(self) -> None:
        envelope = self.templates.build(
            "receipt",
            {"number": "A-7", "name": "Ann", "amount": "5"},
            sender="Shop <shop@example.com>",
            to=["ann@example.org"],
            now=0,
        )
        self.assertEqual(envelope.recipients, ("ann@example.org",))
        message = email.message_from_bytes(envelope.data, policy=email.policy.default)
        self.assertEqual(message["Subject"], "Your receipt A-7")
        text = message.get_body(("plain",)).get_content()
        self.assertEqual(text.replace("\r\n", "\n"), "Hello Ann,\nyou paid 5.\n")
        self.assertIn("<p>Hello Ann,</p>", message.get_body(("html",)).get_content())

    def test_names_lists_templates_with_a_text_part(self) -> None:
        write_template(self.folder, "welcome", subject="Hi", text="Hi")
        os.makedirs(os.path.join(self.folder, "empty-folder"))
        self.assertEqual(self.templates.names(), ["receipt", "welcome"])
