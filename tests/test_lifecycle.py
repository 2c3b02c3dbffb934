"""The daemon's life with real processes: background mode and the management commands,
reload on SIGHUP, SIGTERM/SIGINT/SIGPIPE/SIGUSR1, systemd notifications, JSON logs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

from tests.daemon import BIN, Daemon, environment, fill_queue, wait_until
from tests.smtp_peer import SMTPPeer
from tests.support import EndToEndCase


def plain_relay(port: int, extra: str = "") -> str:
    return f"[Relay]\nhost = 127.0.0.1\nport = {port}\nsecurity = none\ntimeout = 5s\n{extra}"


class LifecycleCase(EndToEndCase):
    def plain_peer(self) -> SMTPPeer:
        peer = SMTPPeer()
        peer.start()
        self.addCleanup(peer.stop)
        return peer

    def daemon(self, port: int, extra: str = "", queue: str = "") -> Daemon:
        daemon = Daemon(os.path.join(self.home, "d"), plain_relay(port), queue, extra)
        self.addCleanup(daemon.stop)
        self.addCleanup(lambda: daemon.cli("stop"))
        return daemon


class ManagementTests(LifecycleCase):
    def assert_reload_refuses(self, daemon: Daemon, appended: str, reason: str) -> None:
        """A broken file: reload says so with FILE:LINE (the daemon's own verdict)."""
        with open(daemon.config_path, "a") as handle:
            handle.write(appended)
        broken = daemon.cli("reload")
        self.assertEqual(broken.returncode, 1)
        self.assertIn(f"reload failed: {daemon.config_path}:", broken.stderr)
        self.assertIn(reason, broken.stderr)

    def assert_running(self, daemon: Daemon, pid: int) -> None:
        """status finds it with its PID, and start refuses a second one."""
        status = daemon.cli("status")
        self.assertEqual(
            (status.returncode, status.stdout), (0, f"Daemon is running (PID: {pid})\n")
        )
        again = daemon.cli("start")
        self.assertEqual(again.returncode, 1)
        self.assertIn(f"Daemon is already running (PID: {pid})", again.stderr)

    def configure(self, daemon: Daemon, port: int, extra: str = "") -> None:
        daemon.write_config(plain_relay(port, extra))
        text = (
            open(daemon.config_path)
            .read()
            .replace(
                "[Daemon]\n",
                "[Daemon]\npid_file = run/smtpmailer.pid\nlog_file = log/smtpmailer.log\n",
            )
        )
        with open(daemon.config_path, "w") as handle:
            handle.write(text)

    def test_start_status_reload_stop(self) -> None:
        first, second = self.plain_peer(), self.plain_peer()
        daemon = self.daemon(first.port)
        self.configure(daemon, first.port)
        pidfile = os.path.join(daemon.directory, "run", "smtpmailer.pid")

        status = daemon.cli("status")
        self.assertEqual((status.returncode, status.stdout), (3, "Daemon is not running\n"))
        started = daemon.cli("start")
        self.assertEqual(started.returncode, 0, started.stderr)
        pid = int(open(pidfile).read())
        self.assertIn(f"Daemon started (PID: {pid})", started.stdout)
        self.assertEqual(oct(os.stat(pidfile).st_mode & 0o777), "0o600")
        self.assert_running(daemon, pid)

        daemon.send("--from", "a@example.com", "--to", "b@example.org", "--subject", "one")
        wait_until(lambda: len(first.messages()) == 1, what="delivery to the first relay")

        # Reload onto the second relay: the next message goes there.
        self.configure(daemon, second.port)
        reloaded = daemon.cli("reload")
        self.assertEqual(
            (reloaded.returncode, reloaded.stdout), (0, "reload: applied ([Relay] port)\n")
        )
        daemon.send("--from", "a@example.com", "--to", "b@example.org", "--subject", "two")
        wait_until(lambda: len(second.messages()) == 1, what="delivery to the second relay")
        self.assertEqual(len(first.messages()), 1)

        # A broken file: reload says so with FILE:LINE, and the daemon goes on as it was.
        self.assert_reload_refuses(daemon, "retry_dealy = 5m\n", "unknown key 'retry_dealy' in [")
        self.configure(daemon, second.port)  # `send` checks the file too: mend it, no reload
        daemon.send("--from", "a@example.com", "--to", "b@example.org", "--subject", "three")
        wait_until(lambda: len(second.messages()) == 2, what="delivery after a failed reload")

        stopped = daemon.cli("stop")
        self.assertEqual(
            (stopped.returncode, stopped.stdout), (0, f"Daemon stopped (PID: {pid})\n")
        )
        self.assertFalse(os.path.exists(pidfile))
        self.assertEqual(daemon.cli("status").returncode, 3)
        log = open(os.path.join(daemon.directory, "log", "smtpmailer.log")).read()
        self.assertIn("reload: applied ([Relay] port)", log)
        self.assertIn("reload failed:", log)

    def test_status_reload_and_stop_find_a_daemon_without_a_pidfile(self) -> None:
        """As under `make run` (twistd -n --pidfile=): the state_dir lock finds it."""
        first, second = self.plain_peer(), self.plain_peer()
        daemon = self.daemon(first.port)
        daemon.start()
        assert daemon.process is not None
        pid = daemon.process.pid
        self.assert_running(daemon, pid)

        daemon.write_config(plain_relay(second.port))
        reloaded = daemon.cli("reload")
        self.assertEqual(
            (reloaded.returncode, reloaded.stdout), (0, "reload: applied ([Relay] port)\n")
        )
        daemon.send("--from", "a@example.com", "--to", "b@example.org", "--subject", "one")
        wait_until(lambda: len(second.messages()) == 1, what="delivery after the reload")

        # A duplicate key breaks the whole file: reload still reaches the daemon through
        # the file's [Daemon] keys and prints its verdict (it waited 30 s, then gave up).
        self.assert_reload_refuses(daemon, "[Daemon]\nshutdown_timeout = 5s\n", "appears twice")
        daemon.write_config(plain_relay(second.port))

        stopped = daemon.cli("stop")
        self.assertEqual(
            (stopped.returncode, stopped.stdout), (0, f"Daemon stopped (PID: {pid})\n")
        )
        self.assertEqual(daemon.process.wait(timeout=30), -signal.SIGTERM)  # clean, as twistd does
        status = daemon.cli("status")
        self.assertEqual((status.returncode, status.stdout), (3, "Daemon is not running\n"))

    def test_a_killed_daemon_is_not_running(self) -> None:
        peer = self.plain_peer()
        daemon = self.daemon(peer.port)
        daemon.start()
        self.assertEqual(daemon.cli("status").returncode, 0)
        daemon.kill()
        status = daemon.cli("status")
        self.assertEqual((status.returncode, status.stdout), (3, "Daemon is not running\n"))

    def test_stale_pidfile_does_not_prevent_a_start(self) -> None:
        peer = self.plain_peer()
        daemon = self.daemon(peer.port)
        self.configure(daemon, peer.port)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        os.makedirs(os.path.join(daemon.directory, "run"))
        with open(os.path.join(daemon.directory, "run", "smtpmailer.pid"), "w") as handle:
            handle.write(str(dead.pid))
        self.assertEqual(daemon.cli("status").returncode, 3)
        started = daemon.cli("start")
        self.assertEqual(started.returncode, 0, started.stderr)
        self.assertEqual(daemon.cli("status").returncode, 0)

    def test_start_failure_gives_the_reason(self) -> None:
        peer = self.plain_peer()
        daemon = self.daemon(peer.port)
        self.configure(daemon, peer.port)
        os.makedirs(daemon.state_dir)
        with open(os.path.join(daemon.state_dir, "queue.sqlite3"), "wb") as handle:
            handle.write(b"not a database" * 100)
        started = daemon.cli("start")
        self.assertEqual(started.returncode, 1)
        self.assertIn("Daemon failed to start:", started.stderr)
        self.assertIn("file is not a database", started.stderr)


class SignalTests(LifecycleCase):
    def test_sigterm_during_a_large_drain_loses_nothing_and_exits_in_time(self) -> None:
        peer = self.start_peer()
        daemon = self.start_daemon(peer.port, max_connections="4")
        fill_queue(daemon, 1000)
        daemon.start()
        wait_until(lambda: len(peer.messages()) >= 150, what="150 deliveries")
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGTERM)
        code = daemon.process.wait(timeout=5 + 10)  # shutdown_timeout is 5s in these tests
        self.assertEqual(code, -signal.SIGTERM)  # twistd re-raises SIGTERM (systemd: clean)
        states = daemon.states()
        self.assertEqual(states.get("active", 0), 0, "nothing left half-done")
        self.assertIn("smtpmailer stopped", daemon.log())
        daemon.start()
        wait_until(lambda: daemon.states() == {"sent": 1000}, timeout=90, what="all sent")
        arrived = {m.header("X-Seq") for m in peer.messages()}
        self.assertEqual(len(arrived), 1000)
        duplicates = len(peer.messages()) - 1000
        self.assertEqual(duplicates, 0, "a graceful stop records every outcome")

    def test_sigint_stops_now_and_leaves_in_flight_mail_queued(self) -> None:
        peer = self.plain_peer()
        peer.set(stall_data=True)
        daemon = self.daemon(peer.port, queue="")
        daemon.write_config(plain_relay(peer.port).replace("timeout = 5s", "timeout = 60s"))
        daemon.start()
        message_id = daemon.send(
            "--from", "a@example.com", "--to", "b@example.org", "--subject", "stalls"
        )
        wait_until(lambda: daemon.states() == {"active": 1}, what="the delivery to start")
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGINT)
        daemon.process.wait(timeout=10)  # not the 60s relay timeout, not shutdown_timeout
        info = daemon.message(message_id)
        self.assertEqual((info["state"], info["attempt_count"]), ("queued", 0))

    def test_sigpipe_does_not_kill(self) -> None:
        peer = self.plain_peer()
        daemon = self.daemon(peer.port).start()
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGPIPE)
        daemon.send("--from", "a@example.com", "--to", "b@example.org", "--subject", "after")
        wait_until(lambda: len(peer.messages()) == 1, what="delivery after SIGPIPE")
        self.assertIsNone(daemon.process.poll())

    def test_sigusr1_rotates_the_log_file(self) -> None:
        peer = self.plain_peer()
        daemon = self.daemon(peer.port).start()
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGUSR1)
        wait_until(lambda: os.path.exists(daemon.log_path + ".1"), what="the rotated log")
        daemon.send("--from", "a@example.com", "--to", "b@example.org", "--subject", "after")
        wait_until(lambda: "status=sent" in daemon.log(), what="new lines in the new file")


class SystemdTests(LifecycleCase):
    def test_notifications(self) -> None:
        peer = self.plain_peer()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address = os.path.join(self.home, "notify.sock")
        listener.bind(address)
        listener.settimeout(20)
        self.addCleanup(listener.close)
        daemon = Daemon(os.path.join(self.home, "d"), plain_relay(peer.port))
        self.addCleanup(daemon.stop)
        env = environment()
        env.update(NOTIFY_SOCKET=address, WATCHDOG_USEC="400000")
        daemon.process = subprocess.Popen(
            [
                os.path.join(BIN, "twistd"),
                "-n",
                "--pidfile=",
                f"--logfile={daemon.log_path}",
                "smtpmailer",
                "--config",
                daemon.config_path,
            ],
            cwd=daemon.directory,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        received: list[str] = []

        def until(field: str) -> str:
            while True:
                message = listener.recv(4096).decode()
                received.append(message)
                if field in message.split("\n"):
                    return message

        ready = until("READY=1")
        self.assertIn(f"MAINPID={daemon.process.pid}", ready)
        self.assertIn("ready:", daemon.log(), "READY only after the services started")
        until("WATCHDOG=1")
        until("WATCHDOG=1")  # repeated, at half of WATCHDOG_USEC
        daemon.process.send_signal(signal.SIGHUP)
        reloading = until("RELOADING=1")
        self.assertIn("MONOTONIC_USEC=", reloading)
        until("READY=1")
        daemon.process.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        daemon.process.wait(timeout=20)


class JSONLogTests(LifecycleCase):
    def test_one_object_per_line_with_outcome_fields(self) -> None:
        peer = self.plain_peer()
        daemon = self.daemon(peer.port, extra="format = json\n").start()
        message_id = daemon.send(
            "--from", "a@example.com", "--to", "b@example.org", "--subject", "json"
        )
        wait_until(lambda: '"status": "sent"' in daemon.log(), what="the outcome line")
        records = [json.loads(line) for line in daemon.log().splitlines() if line.strip()]
        (outcome,) = [r for r in records if r.get("status") == "sent"]
        self.assertEqual(outcome["id"], message_id)
        self.assertEqual(outcome["to"], "b@example.org")
        self.assertEqual(outcome["level"], "info")
        self.assertTrue(outcome["message"].startswith(f"id={message_id} to=<b@example.org>"))
        self.assertTrue(any("ready:" in r["message"] for r in records))
