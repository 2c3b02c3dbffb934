"""The sendmail-compatible command: sendmail's options and exit codes, fed the way cron
and PHP feed it, each message checked byte for byte at a real SMTP server."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmailer.intake.refusals import EX_CONFIG, EX_DATAERR, EX_IOERR, EX_TEMPFAIL, EX_USAGE
from smtpmailer.intake.sendmail.command import (
    UsageError,
    encode_request,
    hand_to_daemon,
    parse_arguments,
    prepare_envelope,
    read_message,
)
from tests.daemon import REPO, Daemon, environment, started_peer, temporary_home, wait_until

# What `make install` lays down as smtpmailer-sendmail (tools/install.py): Python started
# isolated and without site, the package's folders named, then main().
INSTALLED_SCRIPT = (
    f"import sys; sys.path[:0] = {[REPO, sysconfig.get_paths()['purelib']]!r}; "
    "from smtpmailer.intake.sendmail.command import main; main()"
)


class ArgumentTests(SynchronousTestCase):
    def test_what_real_callers_pass(self) -> None:
        php = parse_arguments(["-t", "-i"])  # PHP's default sendmail_path
        self.assertEqual((php.extract, php.ignore_dots), (True, True))
        cron = parse_arguments(["-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"])
        self.assertEqual(
            (cron.full_name, cron.ignore_dots, cron.recipients), ("CronDaemon", True, ["root"])
        )
        git = parse_arguments(["-i", "-f", "dev@example.com", "--", "a@x.org", "b@x.org"])
        self.assertEqual((git.sender, git.recipients), ("dev@example.com", ["a@x.org", "b@x.org"]))
        joined = parse_arguments(["-fme@example.com", "-odb", "-oi", "-v", "x@y.org"])
        self.assertEqual(
            (joined.sender, joined.ignore_dots, joined.verbose), ("me@example.com", True, True)
        )
        self.assertEqual(parse_arguments(["-r", "r@example.com"]).sender, "r@example.com")
        self.assertEqual(parse_arguments(["-bp"]).mode, "list")
        self.assertEqual(parse_arguments(["-bs"]).mode, "smtp")
        self.assertEqual(parse_arguments(["-bi"]).mode, "aliases")
        self.assertEqual(parse_arguments(["-q"]).mode, "flush")
        self.assertEqual(parse_arguments(["-ti"]).ignore_dots, True)

    def test_dsn_options(self) -> None:
        """-N, -R and -V, as RFC 3461's NOTIFY, RET and ENVID (an id becomes xtext)."""
        args = parse_arguments(["-N", "success,Failure", "-Rhdrs", "-V", "order 42=x", "a@b.org"])
        self.assertEqual(
            (args.notify, args.ret, args.envid), ("SUCCESS,FAILURE", "HDRS", "order+2042+3Dx")
        )
        self.assertEqual(parse_arguments(["-Nnever"]).notify, "NEVER")
        for bad in (
            ["-N", "never,success"],
            ["-N", "sometimes"],
            ["-R", "some"],
            ["-V", "x" * 101],
        ):
            self.assertRaises(UsageError, parse_arguments, bad)
        envelope = prepare_envelope(args, "u", b"From: a@example.com\n\nb\n", 0)
        self.assertEqual(
            json.loads(envelope.meta),
            {
                "dsn": {
                    "ret": "HDRS",
                    "envid": "order+2042+3Dx",
                    "notify": {"a@b.org": "SUCCESS,FAILURE"},
                }
            },
        )
        plain = prepare_envelope(
            parse_arguments(["a@b.org"]), "u", b"From: a@example.com\n\nb\n", 0
        )
        self.assertEqual(plain.meta, "")

    def test_refusals(self) -> None:
        for bad in (["-Z"], ["-f"], ["-bd"], ["-bv"]):
            self.assertRaises(UsageError, parse_arguments, bad)

    def test_a_leading_mbox_from_line_is_dropped(self) -> None:
        """Old scripts and mailx pipe a message that starts with mbox's 'From user date'
        line; it is no header, so it goes, as Postfix's sendmail drops it."""
        data = b"From root@host Sat Dec  5 10:00:00 2026\nFrom: root@example.com\n\nbody\n"
        envelope = prepare_envelope(parse_arguments(["a@example.org"]), "u", data, 0)
        self.assertTrue(envelope.data.startswith(b"From: root@example.com\r\n"), envelope.data)
        self.assertEqual(envelope.sender, "root@example.com")
        for header in (b"From: a@b.org", b"From : a@b.org"):
            kept = prepare_envelope(parse_arguments(["c@d.org"]), "u", header + b"\n\nx\n", 0)
            self.assertIn(header + b"\r\n", kept.data)

    def test_a_lone_dot_ends_the_message_unless_i(self) -> None:
        import io

        data = b"Subject: s\n\nline\n.\nafter\n"
        self.assertEqual(read_message(io.BytesIO(data), ignore_dots=False), b"Subject: s\n\nline\n")
        self.assertEqual(read_message(io.BytesIO(data), ignore_dots=True), data)
        self.assertEqual(read_message(io.BytesIO(b"a\r\n.\r\nb\r\n"), False), b"a\r\n")


# What a Symfony application does: a SendmailTransport with "... -bs" (argv[1]); each
# send() is one message of the session, a refusal is a TransportException.
SYMFONY_SCRIPT = r"""<?php
require '/usr/share/php/Symfony/Component/Mailer/autoload.php';
require '/usr/share/php/Symfony/Component/Mime/autoload.php';
use Symfony\Component\Mailer\Transport\SendmailTransport;
use Symfony\Component\Mime\Email;
$transport = new SendmailTransport($argv[1]);
$order = (new Email())->from('Shop <shop@example.com>')->to('user@example.org')
    ->bcc('audit@example.org')->subject('Your order')
    ->text("Thank you.\n.a line with a leading dot\nbye");
$transport->send($order);
echo "sent 1\n";
$second = (new Email())->from('shop@example.com')->to('second@example.org')
    ->subject('Second')->text("Grüße");
$transport->send($second);
echo "sent 2\n";
$big = (new Email())->from('shop@example.com')->to('x@example.org')->subject('Big')
    ->text(str_repeat("x", 70000));
try {
    $transport->send($big);
    echo "sent 3\n";
} catch (\Symfony\Component\Mailer\Exception\TransportException $e) {
    echo "refused: ", $e->getMessage(), "\n";
}
"""


class CommandTests(TestCase):
    """Real processes, started as the installed command starts."""

    timeout = 120

    def setUp(self) -> None:
        self.home = temporary_home(self)
        self.peer = started_peer(self)
        self.daemon = Daemon(
            os.path.join(self.home, "d"),
            f"[Relay]\nhost = 127.0.0.1\nport = {self.peer.port}\nsecurity = none\n",
            queue="max_message_size = 64KB\nmax_queue_size = 5",
        )
        self.addCleanup(self.daemon.stop)

    def sendmail(
        self, data: bytes, *args: str, config: str | None = None, python: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[bytes]:
        env = environment()
        env["SMTPMAILER_CONFIG"] = config or self.daemon.config_path
        # Buffered output, as under cron: what the command prints must survive its os._exit.
        env.pop("PYTHONUNBUFFERED", None)
        return subprocess.run(
            [sys.executable, "-IS", *python, "-c", INSTALLED_SCRIPT, *args],
            input=data,
            capture_output=True,
            env=env,
            timeout=60,
        )

    def test_cron_and_php_style_mail_arrives_byte_for_byte(self) -> None:
        self.daemon.start()
        body_8bit = "Grüße aus der Crontab — ünïcödé\n.leading dot\n..two dots\n".encode()
        cron = (
            b"From: root (Cron Daemon)\nTo: root@example.org\n"
            b"Subject: Cron <root@host> run-parts /etc/cron.daily\n"
            b"Content-Type: text/plain; charset=UTF-8\nContent-Transfer-Encoding: 8bit\n\n"
            + body_8bit
        )
        result = self.sendmail(cron, "-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root@example.org")
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        php = (
            b"To: user@example.org\r\nSubject: Your order\r\nBcc: audit@example.org\r\n"
            b"From: shop@example.com\r\n\r\nThank you.\r\n"
        )
        result = self.sendmail(php, "-t", "-i")
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        wait_until(lambda: len(self.peer.messages()) == 2, what="both messages")
        by_rcpt = {tuple(m.recipients): m for m in self.peer.messages()}
        arrived = by_rcpt[("root@example.org",)]
        host = socket.gethostname()
        self.assertEqual(arrived.sender, f"root@{host if '.' in host else host + '.localdomain'}")
        self.assertTrue(arrived.data.endswith(body_8bit.replace(b"\n", b"\r\n")))
        head = arrived.data.split(b"\r\n\r\n", 1)[0]
        self.assertIn(b"Subject: Cron <root@host> run-parts /etc/cron.daily\r\n", head + b"\r\n")
        self.assertIn(b"\r\nDate: ", head)
        self.assertIn(b"\r\nMessage-ID: <", head)
        order = by_rcpt[("user@example.org", "audit@example.org")]
        self.assertEqual(order.sender, "shop@example.com")
        self.assertNotIn(b"Bcc", order.data)
        self.assertNotIn(b"audit@", order.data)
        self.assertTrue(order.data.endswith(b"\r\n\r\nThank you.\r\n"))

    def test_from_header_is_added_when_missing(self) -> None:
        self.daemon.start()
        result = self.sendmail(
            b"Subject: no from\n\nhi\n",
            "-f",
            "ops@example.com",
            "-F",
            "Ops Team",
            "admin@example.org",
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        wait_until(lambda: len(self.peer.messages()) == 1, what="the message")
        (message,) = self.peer.messages()
        self.assertEqual(message.sender, "ops@example.com")
        self.assertTrue(message.data.startswith(b"From: Ops Team <ops@example.com>\r\n"))

    def test_exit_codes(self) -> None:
        os.makedirs(self.daemon.state_dir)
        # No daemon: the command checks and writes the queue itself.
        self.assertEqual(self.sendmail(b"x", "-Z").returncode, EX_USAGE)
        self.assertEqual(self.sendmail(b"x").returncode, EX_USAGE)  # no recipients
        missing = self.sendmail(b"x", "a@example.org", config=os.path.join(self.home, "nope.conf"))
        self.assertEqual(missing.returncode, EX_CONFIG)
        self.check_refusals()
        listing = self.sendmail(b"", "-bp")
        self.assertEqual(listing.returncode, 0)
        self.assertIn(b"-- 5 messages", listing.stdout)

    def check_refusals(self) -> None:
        """A bad address and an oversize message are data errors; five fit the queue
        (max_queue_size = 5) and the sixth is a temporary failure."""
        bad = self.sendmail(b"From: a@example.com\n\nb\n", "not an address")
        self.assertEqual(bad.returncode, EX_DATAERR)
        self.assertIn(b"has an invalid local part", bad.stderr)
        big = self.sendmail(b"From: a@example.com\n\n" + b"x" * 70_000 + b"\n", "a@example.org")
        self.assertEqual(big.returncode, EX_DATAERR)
        self.assertIn(b"over max_message_size (64KB)", big.stderr)
        for _ in range(5):
            ok = self.sendmail(b"From: a@example.com\n\nb\n", "a@example.org")
            self.assertEqual(ok.returncode, 0, ok.stderr)
        full = self.sendmail(b"From: a@example.com\n\nb\n", "a@example.org")
        self.assertEqual(full.returncode, EX_TEMPFAIL)
        self.assertIn(b"queue is full", full.stderr)

    def bs_process(self, python: tuple[str, ...] = ()) -> tuple[socket.socket, subprocess.Popen]:
        """``sendmail -bs -i`` as Symfony starts it: its stdin and stdout are one end of a
        socket pair, and the test has the other."""
        ours, theirs = socket.socketpair()
        env = environment()
        env["SMTPMAILER_CONFIG"] = self.daemon.config_path
        env.pop("PYTHONUNBUFFERED", None)
        process = subprocess.Popen(
            [sys.executable, "-IS", *python, "-c", INSTALLED_SCRIPT, "-bs", "-i"],
            stdin=theirs,
            stdout=theirs,
            stderr=subprocess.PIPE,
            env=env,
        )
        theirs.close()
        self.addCleanup(process.kill)
        self.addCleanup(ours.close)
        return ours, process

    def smtp_session(self, python: tuple[str, ...] = ()) -> tuple[smtplib.SMTP, subprocess.Popen]:
        """A ``sendmail -bs`` process with Python's smtplib as its client."""
        ours, process = self.bs_process(python)

        class PipeSMTP(smtplib.SMTP):
            def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
                ours.settimeout(timeout)
                return ours

        client = PipeSMTP(timeout=60)
        self.assertEqual(client.connect("sendmail")[0], 220)
        return client, process

    def check_session_refusals(self) -> None:
        """The refusals of check_refusals, over ``sendmail -bs``: each message's answer
        is the SMTP listener's reply for that refusal, in the plain command's words."""
        client, process = self.smtp_session()
        client.ehlo("app.example")
        with self.assertRaises(smtplib.SMTPDataError) as bad:
            client.sendmail(
                "a@example.com", ["not..valid@example.org"], b"From: a@example.com\n\nb\n"
            )
        self.assertEqual(bad.exception.smtp_code, 553)
        self.assertIn(
            b"5.1.3 recipient 'not..valid@example.org' has an invalid local part",
            bad.exception.smtp_error,
        )
        with self.assertRaises(smtplib.SMTPDataError) as big:
            client.sendmail(
                "a@example.com",
                ["a@example.org"],
                b"From: a@example.com\n\n" + b"x" * 70_000 + b"\n",
            )
        self.assertEqual(big.exception.smtp_code, 552)
        self.assertIn(b"5.3.4 message is ", big.exception.smtp_error)
        self.assertIn(b" bytes, over max_message_size (64KB)", big.exception.smtp_error)
        for number in range(5):
            client.sendmail(
                "a@example.com",
                ["a@example.org"],
                f"From: a@example.com\r\nX-Seq: {number}\r\n\r\n.b\r\n".encode(),
            )
        with self.assertRaises(smtplib.SMTPDataError) as full:
            client.sendmail("a@example.com", ["a@example.org"], b"From: a@example.com\n\nb\n")
        self.assertEqual(full.exception.smtp_code, 452)
        self.assertIn(b"4.3.1 queue is full", full.exception.smtp_error)
        self.assertEqual(client.quit()[0], 221)
        self.assertEqual(process.wait(30), 0)
        self.assertEqual(process.stderr.read(), b"")

    def test_smtp_session_without_a_daemon(self) -> None:
        os.makedirs(self.daemon.state_dir)
        self.check_session_refusals()
        with self.daemon.db() as db:
            bodies = [row[0] for row in db.execute("SELECT data FROM bodies ORDER BY data")]
        self.assertEqual(len(bodies), 5)
        self.assertTrue(all(body.endswith(b"\r\n\r\n.b\r\n") for body in bodies), bodies)

    def test_smtp_session_through_the_daemon(self) -> None:
        self.check_through_the_daemon(self.check_session_refusals)

    def test_smtp_session_delivers_like_a_plain_call(self) -> None:
        """Two messages in one session, one with the null sender (an auto-reply): both
        arrive byte for byte, and the session imports none of the daemon's weight."""
        self.daemon.start()
        client, process = self.smtp_session(python=("-X", "importtime"))
        client.ehlo("app.example")
        body = (
            b"From: Shop <shop@example.com>\r\nSubject: Your order\r\n\r\n"
            b".leading dot\r\nThanks\r\n"
        )
        self.assertEqual(
            client.sendmail("shop@example.com", ["user@example.org", "audit@example.org"], body), {}
        )
        client.mail("")
        client.rcpt("user@example.org")
        code, reply = client.data(b"From: user@example.org\r\nSubject: Auto: away\r\n\r\naway\r\n")
        self.assertEqual(code, 250)
        self.assertRegex(reply, rb"^2\.0\.0 Ok: queued as \w+$")
        client.quit()
        self.assertEqual(process.wait(30), 0)
        imported = {
            line.rpartition("|")[2].strip().split(".")[0]
            for line in process.stderr.read().decode().splitlines()
            if line.startswith("import time:")
        }
        self.assertEqual({"attrs", "sqlite3", "email", "twisted", "OpenSSL"} & imported, set())
        wait_until(lambda: len(self.peer.messages()) == 2, what="both messages")
        by_sender = {m.sender: m for m in self.peer.messages()}
        order = by_sender["shop@example.com"]
        self.assertEqual(list(order.recipients), ["user@example.org", "audit@example.org"])
        self.assertTrue(order.data.startswith(body.split(b"\r\n\r\n")[0] + b"\r\n"))
        self.assertTrue(order.data.endswith(b"\r\n\r\n.leading dot\r\nThanks\r\n"))
        self.assertEqual(sorted(by_sender), ["<>", "shop@example.com"])  # aiosmtpd's null
        self.assertTrue(by_sender["<>"].data.endswith(b"\r\n\r\naway\r\n"))
        self.assertEqual(self.handed_over(), 2)

    def test_symfony_mailer_sends_through_sendmail_bs(self) -> None:
        """Symfony Mailer (Debian's php-symfony-mailer), with its SendmailTransport
        pointed at our command with -bs, as Symfony and Laravel configure it: two
        messages, one with a Bcc, arrive; a third, too big, is refused with our 552."""
        php, autoload = shutil.which("php"), "/usr/share/php/Symfony/Component/Mailer/autoload.php"
        if php is None or not os.path.exists(autoload):
            self.fail("php or php-symfony-mailer is missing: make test installs them")
        self.daemon.start()
        wrapper = os.path.join(self.home, "sendmail")
        with open(wrapper, "w") as handle:
            handle.write(
                f'#!/bin/sh\nexec {sys.executable} -IS -c {shlex.quote(INSTALLED_SCRIPT)} "$@"\n'
            )
        os.chmod(wrapper, 0o700)
        script = os.path.join(self.home, "send.php")
        with open(script, "w") as handle:
            handle.write(SYMFONY_SCRIPT)
        env = environment()
        env["SMTPMAILER_CONFIG"] = self.daemon.config_path
        result = subprocess.run(
            [php, script, f"{wrapper} -bs"], capture_output=True, env=env, timeout=120
        )
        self.assertEqual((result.returncode, result.stderr), (0, b""), result.stdout)
        lines = result.stdout.decode().splitlines()
        self.assertEqual(lines[:2], ["sent 1", "sent 2"])
        self.assertRegex(
            lines[2],
            r'^refused: Expected response code "250" but got code "552", with message '
            r'"552 5\.3\.4 message is \d+ bytes, over max_message_size \(64KB\)"\.$',
        )
        wait_until(lambda: len(self.peer.messages()) == 2, what="both messages")
        by_subject = {
            m.data.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]: m for m in self.peer.messages()
        }
        order = by_subject[b"Your order"]
        self.assertEqual(
            (order.sender, list(order.recipients)),
            ("shop@example.com", ["user@example.org", "audit@example.org"]),
        )
        self.assertNotIn(b"audit@", order.data)
        self.assertIn(b"\r\n.a line with a leading dot\r\n", order.data)
        self.assertIn(b"Gr=C3=BC=C3=9Fe", by_subject[b"Second"].data)
        self.assertEqual(self.handed_over(), 2)

    def test_smtp_client_that_goes_away(self) -> None:
        """A client that hears its message queued, then closes with commands still
        unanswered: the command stops at the first command it cannot read or reply it
        cannot write, and says so in one line, no traceback; the message stays queued."""
        os.makedirs(self.daemon.state_dir)
        ours, process = self.bs_process()
        ours.sendall(
            b"EHLO app\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
            b"From: a@example.com\r\n\r\nbody\r\n.\r\n"
        )
        replies = b""
        ours.settimeout(60)
        while b"queued as" not in replies:
            chunk = ours.recv(4096)
            self.assertTrue(chunk, replies)
            replies += chunk
        ours.sendall(b"NOOP\r\n" * 100)
        ours.close()
        self.assertEqual(process.wait(30), EX_IOERR)
        # Writing a reply fails (EPIPE), or, when the close left replies unread on our
        # side, the kernel resets the connection and reading the next command fails.
        self.assertRegex(
            process.stderr.read(),
            rb"^sendmail: the SMTP session ended: "
            rb"(\[Errno 32\] Broken pipe|\[Errno 104\] Connection reset by peer)\n$",
        )
        with self.daemon.db() as db:
            (data,) = db.execute("SELECT data FROM bodies").fetchone()
        self.assertTrue(data.endswith(b"\r\n\r\nbody\r\n"))

    def refusing_relay(self) -> str:
        """A relay whose port refuses connections, so that mail stays in the queue."""
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, not listening
        self.addCleanup(closed.close)
        return f"[Relay]\nhost = 127.0.0.1\nport = {closed.getsockname()[1]}\nsecurity = none\n"

    def handed_over(self) -> int:
        """How many messages the running daemon took over its socket (its log says)."""
        return self.daemon.new_log().count("sendmail: queued ")

    def test_with_a_daemon_the_daemon_commits(self) -> None:
        self.daemon.start()
        result = self.sendmail(
            b"From: a@example.com\n\nb\n", "-v", "a@example.org", python=("-X", "importtime")
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        imported = {
            line.rpartition("|")[2].strip()
            for line in result.stderr.decode().splitlines()
            if line.startswith("import time:")
        }
        self.assertIn("smtpmailer.paths", imported)  # the list is complete: it ran our code
        heavy = {"os", "attrs", "typing", "sqlite3", "email", "socket", "twisted", "OpenSSL"}
        self.assertEqual(heavy & {name.split(".")[0] for name in imported}, set())
        message_id = result.stdout.decode().removeprefix("queued as ").strip()
        self.assertEqual(self.handed_over(), 1)
        self.assertIn(f"sendmail: queued {message_id} from <a@example.com>", self.daemon.new_log())
        wait_until(lambda: len(self.peer.messages()) == 1, what="the message")

    def test_called_as_mailq_or_newaliases(self) -> None:
        """SENDMAIL_LINK=1 links mailq and newaliases to the command too (tools/install.py):
        as mailq it lists the queue; as newaliases it has nothing to do, and says so."""
        self.daemon.write_config(self.refusing_relay())  # the message stays in the queue
        self.daemon.start()
        self.assertEqual(
            self.sendmail(b"From: a@example.com\n\nb\n", "a@example.org").returncode, 0
        )
        folder = os.path.join(self.home, "bin")
        os.makedirs(folder)
        launcher = os.path.join(folder, "smtpmailer-sendmail")
        with open(launcher, "w") as handle:
            handle.write(f"#!{sys.executable} -IS\n{INSTALLED_SCRIPT}\n")
        os.chmod(launcher, 0o755)
        env = environment()
        env["SMTPMAILER_CONFIG"] = self.daemon.config_path
        results = {}
        for name in ("mailq", "newaliases"):
            os.symlink(launcher, os.path.join(folder, name))
            results[name] = subprocess.run(
                [os.path.join(folder, name)], capture_output=True, env=env, timeout=60
            )
        self.assertEqual(results["mailq"].returncode, 0, results["mailq"].stderr)
        self.assertIn(b"<a@example.com>", results["mailq"].stdout)
        self.assertIn(b"-> <a@example.org>", results["mailq"].stdout)
        self.assertEqual(
            (results["newaliases"].returncode, results["newaliases"].stderr),
            (0, b"newaliases: smtpmailer delivers no mail locally: no aliases to build\n"),
        )

    def test_closed_descriptors(self) -> None:
        """cron and daemons may start sendmail with stdout and stderr closed: the message
        is queued and the exit status is 0, with -v too (its words have nowhere to go).
        With stdin closed there is no message: a read error, in one line."""
        self.daemon.start()
        env = environment()
        env["SMTPMAILER_CONFIG"] = self.daemon.config_path
        for verbose in ((), ("-v",)):
            result = subprocess.run(
                [
                    "sh",
                    "-c",
                    'exec "$0" "$@" >&- 2>&-',
                    sys.executable,
                    "-IS",
                    "-c",
                    INSTALLED_SCRIPT,
                    *verbose,
                    "a@example.org",
                ],
                input=b"From: a@example.com\n\nb\n",
                capture_output=True,
                env=env,
                timeout=60,
            )
            self.assertEqual(result.returncode, 0, verbose)
        wait_until(lambda: len(self.peer.messages()) == 2, what="both messages")
        closed_input = subprocess.run(
            ["sh", "-c", 'exec "$0" "$@" <&-', sys.executable, "-IS", "-c", INSTALLED_SCRIPT]
            + ["a@example.org"],
            capture_output=True,
            env=env,
            timeout=60,
        )
        self.assertEqual(
            (closed_input.returncode, closed_input.stderr),
            (EX_IOERR, b"sendmail: cannot read the message: standard input is closed\n"),
        )

    def test_exit_codes_through_the_daemon(self) -> None:
        """The same refusals, in the same words, when the daemon checks the message."""
        self.check_through_the_daemon(self.check_refusals)

    def check_through_the_daemon(self, check: Callable[[], None]) -> None:
        """``check`` with a daemon that keeps what it takes: it took the 5 that fit."""
        self.daemon.write_config(
            self.refusing_relay(),
            queue="max_message_size = 64KB\nmax_queue_size = 5",
        )
        self.daemon.start()
        check()
        self.assertEqual(self.handed_over(), 5)
        self.assertEqual(sum(self.daemon.states().values()), 5)

    def test_a_daemon_that_dies_before_answering_loses_nothing(self) -> None:
        """Something holds the socket, reads the request and closes without an answer (a
        daemon killed mid-request): the command writes the queue itself."""
        os.makedirs(self.daemon.state_dir)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(os.path.join(self.daemon.state_dir, "sendmail.sock"))
        listener.listen(1)
        self.addCleanup(listener.close)

        def take_and_drop() -> None:
            connection, _ = listener.accept()
            connection.recv(100)
            connection.close()

        dropper = threading.Thread(target=take_and_drop)
        dropper.start()
        result = self.sendmail(b"From: a@example.com\nX-Seq: 1\n\nb\n", "a@example.org")
        dropper.join(30)
        self.assertEqual(result.returncode, 0, result.stderr)
        with self.daemon.db() as db:
            (data,) = db.execute("SELECT data FROM bodies").fetchone()
        self.assertIn(b"X-Seq: 1", data)

    def test_kill_9_of_the_daemon_while_sendmail_runs(self) -> None:
        """40 calls, 4 at a time; the daemon is killed after it took a few. Every call exits
        0 and every message is in the queue (a call whose answer the kill cut off is
        written again by the command: a duplicate, never a loss)."""
        self.daemon.write_config(self.refusing_relay())
        self.daemon.start()

        def call(number: int) -> int:
            data = f"From: a@example.com\nX-Seq: {number}\n\nbody\n".encode()
            return self.sendmail(data, "a@example.org").returncode

        with ThreadPoolExecutor(4) as pool:
            results = [pool.submit(call, number) for number in range(40)]
            wait_until(lambda: self.handed_over() >= 4, what="the daemon to take a few")
            self.daemon.kill(signal.SIGKILL)
            codes = [result.result(timeout=120) for result in results]
        self.assertEqual(codes, [0] * 40)
        handed = self.handed_over()
        self.assertLess(handed, 40, "the kill came too late to test anything")
        with self.daemon.db() as db:
            self.assertEqual(db.execute("PRAGMA integrity_check").fetchone(), ("ok",))
            bodies = [row[0] for row in db.execute("SELECT data FROM bodies")]
        seen = {body.split(b"X-Seq: ", 1)[1].split(b"\r\n", 1)[0] for body in bodies}
        self.assertEqual(seen, {str(n).encode() for n in range(40)})
        self.assertLessEqual(len(bodies) - 40, 4, "more duplicates than calls in flight")


class HandOverTests(SynchronousTestCase):
    """The command's side of the socket against stand-ins for a daemon."""

    def setUp(self) -> None:
        self.path = os.path.join(tempfile.mkdtemp(prefix="smtpm-"), "sendmail.sock")
        self.addCleanup(shutil.rmtree, os.path.dirname(self.path), True)
        self.request = encode_request(parse_arguments(["a@example.org"]), "u", b"x\n")

    def test_no_socket_or_nobody_listening_means_write_it_yourself(self) -> None:
        self.assertIsNone(hand_to_daemon(self.path, self.request))
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(self.path)  # bound, never listening: what a dead daemon leaves
        self.addCleanup(stale.close)
        self.assertIsNone(hand_to_daemon(self.path, self.request))

    def test_a_daemon_that_never_answers_is_a_tempfail(self) -> None:
        """A hung daemon: the call gives up (here after 0.2 s instead of 60) and says the
        message may not be queued, rather than writing a possible duplicate."""
        hung = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        hung.bind(self.path)
        hung.listen(1)  # the kernel accepts the connection; nobody reads or answers
        self.addCleanup(hung.close)
        answer = hand_to_daemon(self.path, self.request, timeout=0.2)
        assert answer is not None
        self.assertEqual(answer[0], EX_TEMPFAIL)
        self.assertIn("no answer from the daemon", answer[1])
