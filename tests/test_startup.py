"""Start-up problems are one clear line from twistd and a non-zero exit, not a traceback."""

from __future__ import annotations

import os
import shutil
import tempfile

from twisted.trial.unittest import TestCase

from tests.daemon import Daemon

MAILDIR_RELAY = "[Relay]\ntransport = maildir\npath = state/maildir\n"


class StartupTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.home = tempfile.mkdtemp(prefix="smtpm-")
        self.addCleanup(shutil.rmtree, self.home, True)

    def failed_start(self, daemon: Daemon) -> str:
        daemon.start(wait=False)
        assert daemon.process is not None
        code = daemon.process.wait(timeout=60)
        output = daemon.output() + daemon.log()
        self.assertNotEqual(code, 0)
        self.assertNotIn("Traceback", output)
        return output

    def test_config_error_names_file_and_line(self) -> None:
        daemon = Daemon(self.home, MAILDIR_RELAY + "max_conections = 2\n")
        output = self.failed_start(daemon)
        self.assertIn(
            f"{daemon.config_path}:14: unknown key 'max_conections' in [Relay] "
            "(did you mean 'max_connections'?)",
            output,
        )

    def test_corrupt_queue_database(self) -> None:
        daemon = Daemon(self.home, MAILDIR_RELAY)
        os.makedirs(daemon.state_dir)
        with open(os.path.join(daemon.state_dir, "queue.sqlite3"), "wb") as handle:
            handle.write(b"garbage" * 1000)
        output = self.failed_start(daemon)
        self.assertIn("cannot open queue database", output)
        self.assertIn("file is not a database", output)

    def test_state_dir_that_cannot_be_created(self) -> None:
        daemon = Daemon(self.home, MAILDIR_RELAY)
        with open(daemon.state_dir, "w") as handle:  # a file where the folder should be
            handle.write("x")
        output = self.failed_start(daemon)
        self.assertIn(f"state_dir {daemon.state_dir}: cannot create it", output)

    def test_second_daemon_on_the_same_queue_is_refused(self) -> None:
        first = Daemon(self.home, MAILDIR_RELAY)
        self.addCleanup(first.stop)
        first.start()
        second = Daemon(self.home, MAILDIR_RELAY)
        output = self.failed_start(second)
        self.assertIn(
            f"another smtpmailer daemon is already using state_dir {first.state_dir}", output
        )
        self.assertIsNone(first.process.poll() if first.process else 0)

    def test_a_port_that_cannot_be_bound_stops_the_start(self) -> None:
        """The status port is taken: twistd exits at once (no thread keeps it alive), and
        `smtpmailer start` names the reason."""
        import socket

        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        self.addCleanup(taken.close)
        port = taken.getsockname()[1]
        daemon = Daemon(self.home, MAILDIR_RELAY, status="")
        text = (
            open(daemon.config_path)
            .read()
            .replace(
                "listen = tcp:0:interface=127.0.0.1", f"listen = tcp:{port}:interface=127.0.0.1"
            )
        )
        with open(daemon.config_path, "w") as handle:
            handle.write(text)
        daemon.start(wait=False)
        assert daemon.process is not None
        self.assertEqual(daemon.process.wait(timeout=30), 1)
        self.assertIn(f"Couldn't listen on 127.0.0.1:{port}", daemon.log())
        started = daemon.cli("start", "--pidfile", os.path.join(self.home, "p.pid"))
        self.assertEqual(started.returncode, 1)
        self.assertIn(
            f"Daemon failed to start: twisted.internet.error.CannotListenError: "
            f"Couldn't listen on 127.0.0.1:{port}",
            started.stderr,
        )

    def test_missing_database_is_created(self) -> None:
        daemon = Daemon(self.home, MAILDIR_RELAY)
        self.addCleanup(daemon.stop)
        daemon.start()
        self.assertTrue(os.path.exists(os.path.join(daemon.state_dir, "queue.sqlite3")))
