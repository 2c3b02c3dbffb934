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


class CommandTests(SynchronousTestCase):
    """send --template, send --template --recipients FILE.csv, and template list|show|render,
    run in-process against a Maildir relay's queue."""

    def setUp(self) -> None:
        from tests.test_cli import CLITestCase

        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "var"))
        receipt(os.path.join(self.dir, "templates"))
        self.config = os.path.join(self.dir, "smtpmailer.conf")
        self.write_config()
        self.cli = CLITestCase.run_cli.__get__(self)

    def write_config(self, queue: str = "", templates: str = "") -> None:
        with open(self.config, "w") as handle:
            handle.write(
                f"[Daemon]\nstate_dir = var\n[Queue]\n{queue}\n"
                "[Relay]\ntransport = maildir\npath = var/md\n"
                f"[Templates]\npath = templates\n{templates}"
            )

    def stored(self) -> list[email.message.EmailMessage]:
        from smtpmailer.queue.sqlite import SQLiteQueue

        store = SQLiteQueue(os.path.join(self.dir, "var", "queue.sqlite3"))
        try:
            return [
                email.message_from_bytes(store.body(info.id), policy=email.policy.default)
                for info in store.messages()
            ]
        finally:
            store.close()

    def test_list_show_and_render(self) -> None:
        code, out, _ = self.cli("template", "list")
        self.assertEqual((code, out), (0, "receipt  html subject text\n"))
        code, out, _ = self.cli("template", "show", "receipt")
        self.assertIn("--- subject\nYour receipt {{ number }}\n--- text\nHello {{ name }},", out)
        code, out, _ = self.cli(
            "template", "render", "receipt", "--var", "number=7", "--var", "name=<b>",
            "--var", "amount=5",
        )  # fmt: skip
        self.assertEqual(code, 0)
        self.assertEqual(
            out,
            "Subject: Your receipt 7\n--- text\nHello <b>,\nyou paid 5.\n"
            "--- html\n<p>Hello &lt;b&gt;,</p><p>you paid 5.</p>\n",
        )
        self.assertEqual(self.stored(), [], "a preview queues nothing")

    def test_send_with_variables_from_a_file_and_the_command_line(self) -> None:
        path = os.path.join(self.dir, "vars.json")
        with open(path, "w") as handle:
            handle.write('{"number": "A-1", "name": "Ann", "amount": "9"}')
        code, out, err = self.cli(
            "send", "--from", "shop@example.com", "--to", "ann@example.org",
            "--template", "receipt", "--vars-file", path, "--var", "amount=10",
        )  # fmt: skip
        self.assertEqual((code, err), (0, ""))
        (message,) = self.stored()
        self.assertEqual(message["Subject"], "Your receipt A-1")
        text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        self.assertEqual(text, "Hello Ann,\nyou paid 10.\n")

    def test_a_missing_variable_queues_nothing(self) -> None:
        code, out, err = self.cli(
            "send", "--from", "shop@example.com", "--to", "ann@example.org",
            "--template", "receipt", "--var", "number=1",
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            "smtpmailer: template receipt: 'name' is undefined in text.txt line 1: "
            "give it as a variable\n",
        )
        self.assertEqual(self.stored(), [])

    def write_csv(self, rows: int) -> str:
        path = os.path.join(self.dir, "people.csv")
        with open(path, "w") as handle:
            handle.write("email,name,amount\n")
            for n in range(rows):
                handle.write(f"p{n}@example.org,Person {n},{n}\n")
        return path

    def test_a_batch_from_a_csv_file_a_message_each(self) -> None:
        code, out, err = self.cli(
            "send", "--from", "shop@example.com", "--template", "receipt",
            "--recipients", self.write_csv(3), "--var", "number=B-2",
        )  # fmt: skip
        self.assertEqual((code, err), (0, ""))
        lines = out.splitlines()
        self.assertEqual(
            [line.split()[1] for line in lines], [f"p{n}@example.org" for n in range(3)]
        )
        messages = sorted(self.stored(), key=lambda m: str(m["To"]))
        self.assertEqual([str(m["To"]) for m in messages], [f"p{n}@example.org" for n in range(3)])
        for n, message in enumerate(messages):
            text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
            self.assertEqual(text, f"Hello Person {n},\nyou paid {n}.\n")
            self.assertEqual(message["Subject"], "Your receipt B-2")

    def test_a_batch_is_refused_whole(self) -> None:
        self.write_config(queue="max_queue_size = 2\n")
        code, _, err = self.cli(
            "send", "--from", "shop@example.com", "--template", "receipt",
            "--recipients", self.write_csv(3), "--var", "number=1",
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("a batch of 3 does not fit", err)
        self.write_config(templates="max_batch = 2\n")
        code, _, err = self.cli(
            "send", "--from", "shop@example.com", "--template", "receipt",
            "--recipients", self.write_csv(3), "--var", "number=1",
        )  # fmt: skip
        self.assertEqual(
            (code, err), (1, "smtpmailer: 3 recipients, over [Templates] max_batch (2)\n")
        )
        self.assertEqual(self.stored(), [])

    def test_a_row_with_a_bad_address_refuses_the_batch(self) -> None:
        path = self.write_csv(2)
        with open(path, "a") as handle:
            handle.write("not-an-address,X,1\n")
        code, _, err = self.cli(
            "send", "--from", "shop@example.com", "--template", "receipt",
            "--recipients", path, "--var", "number=1",
        )  # fmt: skip
        self.assertEqual(code, 1)
        self.assertIn("not-an-address", err)
        self.assertEqual(self.stored(), [])
