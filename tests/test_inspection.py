"""Live inspection with real processes: HTTP against twistd, `smtpmailer health`, the
status listener re-bound on reload, the manhole over OpenSSH, the dashboard in Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.daemon import Daemon, manhole_ssh, ssh_keypair, started_peer, temporary_home, wait_until
from tools.ports import fixed_port


def relay_section(port: int) -> str:
    return f"[Relay]\nhost = 127.0.0.1\nport = {port}\nsecurity = none\ntimeout = 5s\n"


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class InspectionCase(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.home = temporary_home(self)
        self.peer = started_peer(self)

    def daemon(self, status: str = "", extra_sections: str = "") -> Daemon:
        daemon = Daemon(
            os.path.join(self.home, "d"),
            relay_section(self.peer.port) + extra_sections,
            status=status,
        )
        self.addCleanup(daemon.stop)
        return daemon

    def url(self, daemon: Daemon) -> str:
        path = os.path.join(daemon.state_dir, "status.url")
        wait_until(lambda: os.path.exists(path), what="status.url")
        with open(path) as handle:
            return handle.read().strip()


class HTTPTests(InspectionCase):
    def test_endpoints_and_the_health_command(self) -> None:
        daemon = self.daemon().start()
        message_id = daemon.send(
            "--from", "a@example.com", "--to", "b@example.org", "--subject", "s"
        )
        wait_until(lambda: daemon.states() == {"sent": 1}, what="delivery")
        base = self.url(daemon)
        code, body = fetch(base + "/health")
        self.assertEqual((code, json.loads(body)["status"]), (200, "ok"))
        health = daemon.cli("health")
        self.assertEqual(health.returncode, 0)
        self.assertTrue(health.stdout.startswith("SMTPMAILER OK - queued=0"), health.stdout)
        code, body = fetch(base + "/metrics")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        sent = [
            s
            for s in families["smtpmailer_recipients"].samples
            if s.labels.get("status") == "sent" and s.name.endswith("_total")
        ]
        self.assertEqual(sent[0].value, 1)
        code, body = fetch(f"{base}/v1/queue/{message_id}")
        self.assertEqual((code, json.loads(body)["state"]), (200, "sent"))
        self.assertTrue(base.startswith("http://127.0.0.1:"))

    def test_health_fails_when_delivery_is_stuck(self) -> None:
        self.peer.stop()  # the relay is down: mail waits
        daemon = self.daemon(status="stuck_after = 1s").start()
        daemon.send("--from", "a@example.com", "--to", "b@example.org", "--subject", "s")
        wait_until(lambda: daemon.cli("health").returncode == 1, what="health to fail")
        health = daemon.cli("health")
        self.assertIn("SMTPMAILER CRITICAL - delivery is stuck", health.stdout)
        code, body = fetch(self.url(daemon) + "/health")
        self.assertEqual(code, 503)

    def test_health_when_the_daemon_is_not_running(self) -> None:
        daemon = self.daemon()
        os.makedirs(daemon.state_dir)
        with open(os.path.join(daemon.state_dir, "status.url"), "w") as handle:
            handle.write(f"http://127.0.0.1:{fixed_port()}\n")  # nothing listens there
        health = daemon.cli("health")
        self.assertEqual(health.returncode, 1)
        self.assertIn("SMTPMAILER CRITICAL - cannot reach", health.stdout)

    def test_reload_rebinds_the_status_listener(self) -> None:
        daemon = self.daemon().start()
        old = self.url(daemon)
        port = fixed_port()
        text = (
            open(daemon.config_path)
            .read()
            .replace(
                "listen = tcp:0:interface=127.0.0.1", f"listen = tcp:{port}:interface=127.0.0.1"
            )
        )
        with open(daemon.config_path, "w") as handle:
            handle.write(text)
        assert daemon.process is not None
        daemon.process.send_signal(__import__("signal").SIGHUP)
        try:
            wait_until(lambda: "reload: applied ([Status] listen)" in daemon.log(), what="reload")
        except AssertionError as timeout:
            said = [line for line in daemon.log().splitlines() if "reload" in line]
            raise AssertionError(f"{timeout}; the daemon said: {said}") from None
        self.assertEqual(fetch(f"http://127.0.0.1:{port}/health")[0], 200)
        self.assertEqual(self.url(daemon), f"http://127.0.0.1:{port}")
        self.assertRaises(OSError, fetch, old + "/health")  # the old port is closed


class ManholeTests(InspectionCase):
    def keypair(self, name: str) -> str:
        return ssh_keypair(self.home, name)

    def ssh(
        self, port: int, key: str, commands: str, *options: str
    ) -> subprocess.CompletedProcess[str]:
        return manhole_ssh(port, key, commands, *options)

    def test_console_over_ssh_with_a_key(self) -> None:
        key = self.keypair("operator")
        stranger = self.keypair("stranger")
        manhole = f"[Manhole]\nlisten = tcp:0:interface=127.0.0.1\nauthorized_keys = {key}.pub\n"
        daemon = self.daemon(extra_sections=manhole)
        self.peer.set(tempfail_data=100)  # the relay defers everything: mail stays queued
        daemon.start()
        message_id = daemon.send(
            "--from", "a@example.com", "--to", "b@example.org", "--subject", "s"
        )
        wait_until(lambda: daemon.states() == {"deferred": 1}, what="a deferral")
        found = wait_until(
            lambda: re.search(r"manhole listening on 127.0.0.1:(\d+)", daemon.log()),
            what="the manhole",
        )
        port = int(found.group(1))
        host_key = os.path.join(daemon.state_dir, "ssh_host_ed25519_key")
        self.assertEqual(oct(os.stat(host_key).st_mode & 0o777), "0o600")

        session = self.ssh(
            port,
            key,
            f"print(6 * 7)\rls()\rhold('{message_id}')\rprint(config.queue.batch_size)\rstats\r",
        )
        output = session.stdout
        self.assertIn("smtpmailer 0.1.0 manhole", output)
        self.assertIn("42", output)
        self.assertIn(f"{message_id}  deferred", output)
        self.assertIn(f"{message_id}: held", output)
        self.assertIn("50", output)
        self.assertIn("queue: queued=0 deferred=0 active=0 held=1", output)
        self.assertEqual(daemon.message(message_id)["state"], "held")

        refused = self.ssh(port, stranger, "print(1)\r")
        self.assertEqual(refused.returncode, 255)
        self.assertIn("Permission denied (publickey)", refused.stderr)
        password = self.ssh(
            port,
            key,
            "print(1)\r",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        )
        self.assertEqual(password.returncode, 255)
        self.assertIn("Permission denied (publickey)", password.stderr)

    def test_pause_and_resume(self) -> None:
        key = self.keypair("operator")
        manhole = f"[Manhole]\nlisten = tcp:0:interface=127.0.0.1\nauthorized_keys = {key}.pub\n"
        daemon = self.daemon(extra_sections=manhole).start()
        port = int(
            wait_until(
                lambda: re.search(r"manhole listening on 127.0.0.1:(\d+)", daemon.log())
            ).group(1)
        )
        self.assertIn("delivery paused", self.ssh(port, key, "pause()\r").stdout)
        daemon.send("--from", "a@example.com", "--to", "b@example.org", "--subject", "s")
        code, body = fetch(self.url(daemon) + "/health")
        self.assertEqual(code, 503)
        self.assertEqual(daemon.states(), {"queued": 1})
        self.assertIn("delivery resumed", self.ssh(port, key, "resume()\r").stdout)
        wait_until(lambda: daemon.states() == {"sent": 1}, what="delivery after resume")


class DashboardBrowserTests(InspectionCase):
    def chromium(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        binary = shutil.which("chromium")
        if binary is None:
            self.fail("chromium is missing: `make test` installs Debian's chromium")
        profile = tempfile.mkdtemp(prefix="smtpm-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        return subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                *arguments,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )

    def test_dashboard_renders_in_a_real_browser(self) -> None:
        self.peer.set(reject_rcpt={"bad@example.org": "550 5.1.1 no such mailbox"})
        daemon = self.daemon().start()
        daemon.send("--from", "a@example.com", "--to", "ok@example.org", "--subject", "one")
        daemon.send("--from", "a@example.com", "--to", "bad@example.org", "--subject", "two")
        # sent: ok@ and the DSN to a@ about bad@
        wait_until(lambda: daemon.states() == {"sent": 2, "failed": 1}, what="outcomes")
        url = self.url(daemon) + "/"
        dom = self.chromium("--dump-dom", url).stdout
        self.assertIn('<svg class="chart" id="queue-depth"', dom)
        self.assertIn('<svg class="chart" id="delivery-rate"', dom)
        self.assertEqual(len(re.findall(r'<polyline class="series"', dom)), 8)
        self.assertIn("550 5.1.1 no such mailbox", dom)
        self.assertRegex(dom, r'data-state="sent">2<')
        self.assertRegex(dom, r"<tr class=\"relay\"><td>127\.0\.0\.1</td>")
        screenshot = os.path.join(self.home, "dashboard.png")
        self.chromium(f"--screenshot={screenshot}", "--window-size=1300,900", url)
        with open(screenshot, "rb") as handle:
            image = handle.read()
        self.assertTrue(image.startswith(b"\x89PNG"))
        self.assertGreater(len(image), 20_000, "a blank page would be far smaller")
        keep = os.environ.get("SMTPMAILER_SCREENSHOT")
        if keep:
            shutil.copy(screenshot, keep)


class ManholeHelperTests(SynchronousTestCase):
    """The console's helpers run every queue call on a worker thread, in the order typed:
    the reactor thread (where the console runs) never blocks on SQLite."""

    def setUp(self) -> None:
        from smtpmailer.queue.sqlite import SQLiteQueue

        self.path = os.path.join(os.path.abspath(self.mktemp()), "queue.sqlite3")
        os.makedirs(os.path.dirname(self.path))
        seed = SQLiteQueue(self.path)
        self.message_id = seed.enqueue("a@example.com", ["b@example.org"], b"x\r\n", 5, 100.0, 10)
        seed.close()
        self.parked: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []
        self.opened: list[Any] = []

    def run_later(self, function: Any, *args: Any) -> Deferred[Any]:
        """Stands in for the thread pool: the work waits until the test runs it."""
        done: Deferred[Any] = Deferred()
        self.parked.append((function, args, done))
        return done

    def open_store(self) -> Any:
        from smtpmailer.queue.sqlite import SQLiteQueue

        store = SQLiteQueue(self.path)
        self.opened.append(store)
        return store

    def work_off(self) -> None:
        while self.parked:
            function, args, done = self.parked.pop(0)
            done.callback(function(*args))

    def test_helpers_wait_for_the_worker_and_keep_their_order(self) -> None:
        from smtpmailer.manhole import Helpers, Stats

        class Poller:
            paused, lag = False, 0.0

            def wake(self) -> None:
                pass

        class Mailer:
            poller = Poller()
            delivery = type("Delivery", (), {"counters": {}})()

        helpers = Helpers(Mailer(), self.run_later, self.open_store)
        listing = helpers.ls()
        held = helpers.hold(self.message_id)
        stats = Stats(helpers, Mailer()).fetch()
        self.assertEqual(self.opened, [], "nothing touched the store on the calling thread")
        self.assertNoResult(listing)
        self.assertEqual(len(self.parked), 1, "one call at a time")
        self.work_off()
        self.assertIn(f"{self.message_id}  queued", self.successResultOf(listing))
        report = self.successResultOf(held)
        self.assertEqual(report, f"{self.message_id}: held")
        self.assertEqual(repr(report), f"{self.message_id}: held")  # the console shows it raw
        self.assertIn("held=1", self.successResultOf(stats))  # after the hold, as typed
        closing = helpers.close()
        self.work_off()
        self.successResultOf(closing)
