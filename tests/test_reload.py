"""SIGHUP reload on task.Clock: validate first, refuse restart-only keys, apply the rest,
one reload at a time; where the next message goes after each reload."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.config import load_config
from smtpmailer.daemon.reload import ReloadService, changed_keys, keep_restart_only
from smtpmailer.daemon.service import MailerService
from smtpmailer.queue.sqlite import SQLiteQueue
from tests.fake_relay import settle
from tests.support import DeliveryCase

BASE = """[Daemon]
state_dir = {state}
shutdown_timeout = 10s
[Queue]
poll_interval = {poll}
[Relay]
host = {host}
security = none
port = {port}
[Logging]
stats_interval = 0
level = {level}
"""


class ReloadCase(DeliveryCase):
    def write(
        self,
        host: str = "a.test",
        port: int = 25,
        poll: str = "5s",
        state: str | None = None,
        level: str = "info",
        extra: str = "",
    ) -> None:
        with open(self.path, "w") as handle:
            handle.write(
                BASE.format(state=state or self.dir, poll=poll, host=host, port=port, level=level)
                + extra
            )

    def start_mailer(self) -> MailerService:
        self.path = os.path.join(self.dir, "smtpmailer.conf")
        self.write()
        self.config = load_config(self.path)
        self.store = SQLiteQueue(self.config.queue.path)
        self.handlers: dict[int, Any] = {signal.SIGHUP: signal.SIG_DFL}

        def install(signum: int, handler: Any) -> Any:
            previous, self.handlers[signum] = self.handlers.get(signum), handler
            return previous

        self.start(install_handler=install)
        return self.service

    def sighup(self) -> None:
        self.handlers[signal.SIGHUP](signal.SIGHUP, None)
        settle(self.clock)

    def status(self) -> dict[str, Any]:
        with open(os.path.join(self.dir, "reload.json")) as handle:
            return dict(json.load(handle))

    def send_one(self) -> str:
        message_id = self.enqueue()
        self.service.poller.wake()
        settle(self.clock)
        return message_id


class ReloadTests(ReloadCase):
    def test_invalid_file_changes_nothing(self) -> None:
        service = self.start_mailer()
        running = service.config
        self.write(host="b.test", extra="[Queue]\n")  # a second [Queue]: invalid
        self.sighup()
        self.assertIs(service.config, running)
        self.assertEqual((service.reload.reloads, service.reload.failures), (1, 1))
        status = self.status()
        self.assertFalse(status["ok"])
        self.assertIn(
            f"reload failed: {self.path}:13: section [Queue] appears twice", status["message"]
        )
        self.assertIn("the running configuration is unchanged", status["message"])
        self.send_one()
        self.assertEqual(len(self.relays["a.test"].messages), 1)
        self.assertEqual(self.relays["b.test"].messages, [])

    def test_relay_change_applies_to_the_next_message(self) -> None:
        service = self.start_mailer()
        self.send_one()
        self.write(host="b.test", port=26)
        self.sighup()
        self.assertEqual(self.status()["message"], "reload: applied ([Relay] host, [Relay] port)")
        self.assertEqual(service.config.relays[0].host, "b.test")
        self.send_one()
        self.assertEqual(len(self.relays["a.test"].messages), 1)
        self.assertEqual(len(self.relays["b.test"].messages), 1)

    def test_in_flight_delivery_finishes_on_the_old_relay(self) -> None:
        self.start_mailer()
        old = self.relays["a.test"]
        old.hang_after_body = True
        first = self.send_one()
        self.assertEqual(self.state(first), "active")
        self.write(host="b.test", port=26)
        self.sighup()
        second = self.send_one()
        self.assertEqual(self.state(second), "sent")
        self.assertEqual(len(self.relays["b.test"].messages), 1)
        old.live[0].resume("250 2.0.0 OK at last")  # the old relay answers the first now
        settle(self.clock)
        self.assertEqual(self.state(first), "sent")
        self.assertEqual(old.quits, 1, "the old connection closes instead of taking more")

    def test_poll_interval_applies_at_once(self) -> None:
        self.start_mailer()
        self.write(poll="1s")
        self.sighup()
        message_id = self.enqueue()
        self.clock.advance(1)
        settle(self.clock)
        self.assertEqual(self.state(message_id), "sent")

    def test_restart_only_keys_are_refused_by_name_and_the_rest_applied(self) -> None:
        service = self.start_mailer()
        other = os.path.join(self.dir, "elsewhere")
        self.write(state=other, poll="1s", level="debug")
        self.sighup()
        self.assertEqual(service.config.daemon.state_dir, self.dir)
        self.assertEqual(service.config.queue.poll_interval, 1)
        self.assertEqual(service.config.logging.level, "debug")
        self.assertIn(
            "refused, restart needed: [Daemon] state_dir, [Queue] path", self.status()["message"]
        )
        self.assertTrue(self.status()["ok"])

    def test_no_changes(self) -> None:
        self.start_mailer()
        self.sighup()
        self.assertEqual(
            self.status(),
            {"generation": 1, "ok": True, "message": "reload: no changes", "pid": os.getpid()},
        )

    def test_handler_is_restored_on_stop(self) -> None:
        service = self.start_mailer()
        self.assertEqual(self.handlers[signal.SIGHUP], service.reload._on_signal)
        self.stop()
        self.assertEqual(self.handlers[signal.SIGHUP], signal.SIG_DFL)


class _SlowMailer:
    """A mailer whose reconfigure waits for the test: to catch reloads overlapping."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.applying: list[Deferred[None]] = []

    def reconfigure(self, config: Any) -> Deferred[None]:
        waiting: Deferred[None] = Deferred()
        self.applying.append(waiting)

        def swap(_: object) -> None:
            self.config = config

        return waiting.addCallback(swap)


class OneAtATimeTests(SynchronousTestCase):
    def test_a_sighup_during_a_reload_runs_once_more_after_it(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "c.conf")
        text = f"[Daemon]\nstate_dir = {directory}\n[Relay]\nhost = h{{}}\n"
        with open(path, "w") as handle:
            handle.write(text.format(1))
        mailer = _SlowMailer(load_config(path))
        loads = []

        def load(config_path: str) -> Any:
            loads.append(config_path)
            with open(path, "w") as handle:
                handle.write(text.format(len(loads) + 1))
            return load_config(config_path)

        reloader = ReloadService(
            mailer, schedule=lambda f: f(), load=load, install_handler=lambda s, h: None
        )
        first = reloader.request()
        reloader.request()
        reloader.request()  # three requests while the first is applying: one more reload
        self.assertEqual(len(loads), 1)
        mailer.applying[0].callback(None)
        self.assertEqual(len(loads), 2)
        mailer.applying[1].callback(None)
        self.successResultOf(first)
        self.assertEqual(len(loads), 2)
        self.assertEqual(reloader.reloads, 2)


class DiffTests(SynchronousTestCase):
    def test_changed_keys_hide_secrets(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "c.conf")
        for password in ("one", "two"):
            with open(path, "w") as handle:
                handle.write(f"[Relay]\nhost = h\nusername = u\npassword = {password}\n")
            os.chmod(path, 0o600)
            if password == "one":
                old = load_config(path)
        new = load_config(path)
        self.assertEqual(changed_keys(old, new), ["[Relay] password"])
        kept, refused = keep_restart_only(old, new)
        self.assertEqual(refused, [])


class _Port:
    def __init__(self, events: list[str], text: str) -> None:
        self.events = events
        self.text = text

    def stopListening(self) -> None:
        self.events.append(f"close {self.text}")

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("TCP", "127.0.0.1", int(self.text.split(":")[1]))


class ListenerReloadTests(ReloadCase):
    def test_listeners_are_rebound_new_before_old(self) -> None:
        events: list[str] = []
        keys = os.path.join(self.dir, "authorized_keys")
        with open(keys, "w") as handle:
            handle.write("")

        def listen(text: str, factory: Any) -> _Port:
            events.append(f"bind {text}")
            return _Port(events, text)

        self.path = os.path.join(self.dir, "smtpmailer.conf")
        sections = (
            "[Status]\nlisten = tcp:{status}:interface=127.0.0.1\n"
            "[Manhole]\nlisten = tcp:{manhole}:interface=127.0.0.1\n"
            f"authorized_keys = {keys}\n"
        )
        self.write(extra=sections.format(status=8101, manhole=8201))
        self.config = load_config(self.path)
        self.store = SQLiteQueue(self.config.queue.path)
        self.handlers: dict[int, Any] = {}

        def install(signum: int, handler: Any) -> Any:
            self.handlers[signum] = handler

        self.start(install_handler=install, listen=listen)
        self.assertEqual(
            events, ["bind tcp:8101:interface=127.0.0.1", "bind tcp:8201:interface=127.0.0.1"]
        )
        self.assertTrue(os.path.exists(os.path.join(self.dir, "ssh_host_ed25519_key")))
        del events[:]
        self.write(extra=sections.format(status=8102, manhole=8202))
        self.sighup()
        self.assertEqual(
            events,
            [
                "bind tcp:8102:interface=127.0.0.1",
                "close tcp:8101:interface=127.0.0.1",
                "bind tcp:8202:interface=127.0.0.1",
                "close tcp:8201:interface=127.0.0.1",
            ],
        )
        self.assertIn("[Manhole] listen", self.status()["message"])
        del events[:]
        self.sighup()  # unchanged: nothing is touched
        self.assertEqual(events, [])
