"""The smtpmailer command, run in-process: exit codes, one-line reasons, nothing half-queued."""

from __future__ import annotations

import io
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.cli import main
from smtpmailer.queue.sqlite import SQLiteQueue


class CLITestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(self.dir, "var"))
        self.config = os.path.join(self.dir, "smtpmailer.conf")
        self.write_config()

    def write_config(self, queue: str = "") -> None:
        with open(self.config, "w") as handle:
            handle.write(
                f"[Daemon]\nstate_dir = var\n[Queue]\n{queue}\n"
                "[Relay]\ntransport = maildir\npath = var/md\n"
            )

    def run_cli(self, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        stdin_stream = io.TextIOWrapper(io.BytesIO(stdin))
        try:
            code = main(["--config", self.config, *args], out=out, err=err, stdin=stdin_stream)
        except SystemExit as exit:
            code = int(exit.code or 0)
        return code, out.getvalue(), err.getvalue()

    def queued(self) -> list[dict[str, object]]:
        code, out, _ = self.run_cli("queue", "list", "--json")
        self.assertEqual(code, 0)
        return list(json.loads(out))

    def send(self, *args: str) -> str:
        code, out, err = self.run_cli("send", "--from", "app@example.com", *args)
        self.assertEqual((code, err), (0, ""))
        return out.strip()


class SendTests(CLITestCase):
    def test_send_prints_the_committed_id(self) -> None:
        message_id = self.send(
            "--to", "a@example.org", "--subject", "s", "--body", "b", "--priority", "high"
        )
        store = SQLiteQueue(os.path.join(self.dir, "var", "queue.sqlite3"))
        self.addCleanup(store.close)
        info = store.show(message_id)
        self.assertEqual((info.state, info.priority, info.sender), ("queued", 9, "app@example.com"))
        self.assertIn(b"Subject: s\r\n", store.body(message_id))

    def test_refusals_are_one_line_exit_1_and_queue_nothing(self) -> None:
        big = os.path.join(self.dir, "big.txt")
        with open(big, "w") as handle:
            handle.write("x" * 3000)
        self.write_config("max_message_size = 2KB")
        cases = [
            (["--to", "not an address", "--subject", "s"], "is not an email address"),
            (["--to", "a b@example.org", "--subject", "s"], "invalid local part"),
            (["--to", "a@example.org", "--subject", "s\r\nBcc: v@example.org"], "CR/LF"),
            (
                ["--to", "a@example.org", "--subject", "s", "--header", "X-A: 1\nBcc: v@x.org"],
                "CR/LF",
            ),
            (
                ["--to", "a@example.org", "--subject", "s", "--body-file", big],
                "over max_message_size (2KB)",
            ),
            (
                ["--to", "a@example.org", "--subject", "s", "--attach", "/nonexistent/file"],
                "cannot read attachment /nonexistent/file",
            ),
            (["--to", "a@example.org"], "--subject is required"),
            (["--to", "a@example.org", "--subject", "s", "--priority", "urgent"], "priority"),
        ]
        for args, reason in cases:
            code, out, err = self.run_cli("send", "--from", "app@example.com", *args)
            self.assertEqual(code, 1, args)
            self.assertEqual(out, "")
            self.assertIn(reason, err)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertTrue(err.startswith("smtpmailer: "))
        self.assertEqual(self.queued(), [])

    def test_full_queue(self) -> None:
        self.write_config("max_queue_size = 1")
        self.send("--to", "a@example.org", "--subject", "s")
        code, _, err = self.run_cli(
            "send", "--from", "app@example.com", "--to", "a@example.org", "--subject", "s"
        )
        self.assertEqual(code, 1)
        self.assertIn("queue is full (1 messages, max_queue_size = 1)", err)
        self.assertEqual(len(self.queued()), 1)

    def test_raw_with_t(self) -> None:
        code, out, err = self.run_cli(
            "send",
            "-t",
            stdin=b"From: a@example.com\nTo: b@example.org\nBcc: c@example.org\n"
            b"Subject: raw\n\nhello\n",
        )
        self.assertEqual((code, err), (0, ""))
        (info,) = self.queued()
        self.assertEqual(
            [r["address"] for r in info["recipients"]],  # type: ignore[index, union-attr]
            ["b@example.org", "c@example.org"],
        )

    def test_raw_with_recipients(self) -> None:
        code, _, _ = self.run_cli(
            "send", "x@example.org", stdin=b"From: a@example.com\nSubject: r\n\nhi\n"
        )
        self.assertEqual(code, 0)

    def test_usage_errors_exit_2(self) -> None:
        code, _, err = self.run_cli("frobnicate")
        self.assertEqual(code, 2)
        self.assertIn("invalid choice: 'frobnicate'", err)  # on the stream main was given
        self.assertEqual(self.run_cli("queue")[0], 2)


class QueueCommandTests(CLITestCase):
    def test_list_show_hold_release_delete(self) -> None:
        message_id = self.send(
            "--to", "a@example.org", "--to", "b@example.org", "--subject", "hello", "--body", "b"
        )
        code, out, _ = self.run_cli("queue", "list")
        self.assertEqual(code, 0)
        self.assertIn(message_id, out)
        self.assertIn("<app@example.com>", out)
        self.assertIn("-> <b@example.org>", out)
        self.assertIn("-- 1 message", out)
        code, out, _ = self.run_cli("queue", "show", message_id)
        self.assertIn("Subject: hello", out)
        self.assertEqual(
            self.run_cli("queue", "hold", message_id)[:2], (0, f"{message_id}: held\n")
        )
        self.assertEqual(self.queued()[0]["state"], "held")
        code, out, _ = self.run_cli("queue", "list", "--state", "queued")
        self.assertIn("Mail queue is empty", out)
        code, _, err = self.run_cli("queue", "hold", message_id)
        self.assertEqual(code, 1)
        self.assertIn("only queued or deferred messages can be held", err)
        self.assertEqual(self.run_cli("queue", "release", message_id)[0], 0)
        self.assertEqual(self.run_cli("queue", "delete", message_id)[0], 0)
        self.assertEqual(self.queued(), [])
        code, _, err = self.run_cli("queue", "show", message_id)
        self.assertEqual(code, 1)
        self.assertIn(f"no message {message_id} in the queue", err)

    def test_stats(self) -> None:
        self.send("--to", "a@example.org", "--subject", "s")
        code, out, _ = self.run_cli("queue", "stats", "--json")
        stats = json.loads(out)
        self.assertEqual(stats["counts"]["queued"], 1)
        self.assertGreaterEqual(stats["oldest_pending_age"], 0)
        code, out, _ = self.run_cli("queue", "stats")
        self.assertIn("queued             1", out)

    def test_retry_needs_id_or_all(self) -> None:
        code, _, err = self.run_cli("queue", "retry")
        self.assertEqual(code, 1)
        self.assertIn("give a message ID or --all", err)
        code, out, _ = self.run_cli("queue", "retry", "--all")
        self.assertEqual((code, out), (0, "0 deferred messages queued for delivery\n"))


class ConfigCommandTests(CLITestCase):
    def test_check_ok_and_broken(self) -> None:
        self.assertEqual(self.run_cli("config", "--check")[:2], (0, f"{self.config}: OK\n"))
        with open(self.config, "a") as handle:
            handle.write("max_conections = 3\n")
        code, out, err = self.run_cli("config", "--check")
        self.assertEqual(code, 1)
        self.assertEqual(
            err,
            f"smtpmailer: {self.config}:8: unknown key 'max_conections' in "
            "[Relay] (did you mean 'max_connections'?)\n",
        )

    def test_effective_config(self) -> None:
        code, out, _ = self.run_cli("config")
        self.assertEqual(code, 0)
        self.assertIn(f"state_dir = {self.dir}/var", out)
        self.assertIn("transport = maildir", out)


class HoldAllTests(CLITestCase):
    def test_hold_and_release_everything(self) -> None:
        for _ in range(3):
            self.send("--to", "a@example.org", "--subject", "s")
        self.assertEqual(self.run_cli("queue", "hold", "--all")[:2], (0, "3 messages held\n"))
        self.assertEqual({m["state"] for m in self.queued()}, {"held"})
        self.assertEqual(
            self.run_cli("queue", "release", "--all")[:2], (0, "3 messages released\n")
        )
        self.assertEqual({m["state"] for m in self.queued()}, {"queued"})
        code, _, err = self.run_cli("queue", "hold")
        self.assertEqual(code, 1)
        self.assertIn("give a message ID or --all", err)


class ReadOnlyTests(CLITestCase):
    """list, show and stats only look: they create nothing and never wait for the lock."""

    def queue_path(self) -> str:
        return os.path.join(self.dir, "var", "queue.sqlite3")

    def test_looking_at_a_queue_that_does_not_exist_creates_nothing(self) -> None:
        code, out, err = self.run_cli("queue", "list")
        self.assertEqual((code, out, err), (0, "Mail queue is empty\n", ""))
        self.assertEqual(self.run_cli("queue", "stats")[0], 0)
        self.assertFalse(os.path.exists(self.queue_path()))

    def test_looking_does_not_wait_for_a_writer(self) -> None:
        import sqlite3

        message_id = self.send("--to", "a@example.org", "--subject", "s", "--body", "b")
        writer = sqlite3.connect(self.queue_path(), isolation_level=None)
        self.addCleanup(writer.close)
        writer.execute("BEGIN IMMEDIATE")  # the write lock, held as a daemon's commit would
        self.addCleanup(writer.execute, "ROLLBACK")
        code, out, _ = self.run_cli("queue", "list")
        self.assertEqual(code, 0)
        self.assertIn(message_id, out)
        self.assertEqual(self.run_cli("queue", "show", message_id)[0], 0)
        self.assertEqual(self.run_cli("queue", "stats")[0], 0)

    def test_a_damaged_queue_is_one_line_naming_the_file(self) -> None:
        with open(self.queue_path(), "wb") as handle:
            handle.write(b"this is not a database" * 200)
        for command in (("queue", "list"), ("queue", "hold", "--all")):
            code, out, err = self.run_cli(*command)
            self.assertEqual(code, 1)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertIn(self.queue_path(), err)
            self.assertIn("the file is damaged", err)
            self.assertNotIn("Traceback", err)


class HashPasswordTests(CLITestCase):
    def test_needs_no_config(self) -> None:
        """It refused to run until the config named an existing users_file, or with none."""
        import bcrypt

        with open(self.config, "a") as handle:
            handle.write("[Submission]\nusers_file = does-not-exist-yet\n")
        for args in (("--config", self.config), ("--config", "/nonexistent/smtpmailer.conf")):
            out, err = io.StringIO(), io.StringIO()
            stdin = io.TextIOWrapper(io.BytesIO(b"hunter2\n"))
            code = main([*args, "hash-password"], out=out, err=err, stdin=stdin)
            self.assertEqual((code, err.getvalue()), (0, ""))
            self.assertTrue(bcrypt.checkpw(b"hunter2", out.getvalue().strip().encode()))


class RepairTests(CLITestCase):
    """queue check and queue salvage, on a file damaged the way a harness damaged it:
    random bytes over the tables, the header left intact."""

    def fill(self, count: int) -> list[str]:
        ids = []
        for n in range(count):
            body = f"--body={'x' * 3000} {n}"  # a few messages a page: damage costs some
            ids.append(self.send("--to", f"r{n}@example.org", "--subject", f"m{n}", body))
        return ids

    def damage(self) -> None:
        path = os.path.join(self.dir, "var", "queue.sqlite3")
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            handle.seek(size // 2)
            handle.write(os.urandom(4096 * 2))

    def test_check_says_ok_then_damaged(self) -> None:
        self.fill(3)
        code, out, _ = self.run_cli("queue", "check")
        self.assertEqual(code, 0)
        self.assertTrue(out.endswith(": ok\n"), out)
        self.damage()
        code, out, err = self.run_cli("queue", "check")
        self.assertEqual(code, 1)
        self.assertIn("is damaged; stop the daemon and run: smtpmailer queue salvage", err)

    def test_salvage_keeps_what_can_be_read_and_the_damaged_file(self) -> None:
        ids = self.fill(40)
        self.damage()
        code, out, err = self.run_cli("queue", "salvage")
        self.assertEqual((code, err), (0, ""), out)
        copied = int(out.split()[0])
        self.assertGreater(copied, 20, out)
        self.assertLess(copied, 40, out)  # the damaged pages' messages are gone
        names = os.listdir(os.path.join(self.dir, "var"))
        kept = [name for name in names if ".damaged-" in name and name[-1].isdigit()]
        self.assertEqual(len(kept), 1, names)  # with its -wal and -shm, if it had them
        self.assertEqual(self.run_cli("queue", "check")[0], 0)  # the new file is sound
        listed = {item["id"] for item in self.queued()}
        self.assertEqual(len(listed), copied)
        self.assertTrue(listed <= set(ids))
        for message_id in listed:  # each one whole: its recipient and its body
            code, out, _ = self.run_cli("queue", "show", message_id)
            self.assertEqual(code, 0)
            self.assertIn("Subject: m", out)
        self.assertEqual(self.queued_stats()["queued"], copied)

    def queued_stats(self) -> dict[str, int]:
        code, out, _ = self.run_cli("queue", "stats", "--json")
        self.assertEqual(code, 0)
        return dict(json.loads(out)["counts"])
