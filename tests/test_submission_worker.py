"""The submission worker: its pipe to the daemon (in memory), the daemon's pool of workers
(on a Clock), and real twistd with a real worker process (kill -9 of either side, reload)."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import threading
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from smtpmailer.config import parse_config
from smtpmailer.intake.smtp.channel import (
    CONFIG,
    ChannelError,
    Client,
    FrameReader,
    decode_message,
    decode_reply,
    encode_log,
    encode_message,
    frame,
    reply_for,
)
from smtpmailer.intake.smtp.worker import DaemonChannel
from smtpmailer.intake.smtp.worker_pool import (
    FIRST_RESTART_DELAY,
    KILL_AFTER,
    READY_TIMEOUT,
    WorkerPool,
    WorkerProcess,
)
from smtpmailer.message import Envelope, MessageError
from smtpmailer.queue import QueueError, QueueFull
from tests.daemon import Daemon, started_peer, temporary_home, wait_until
from tests.support import submission_port

CLIENT = Client("127.0.0.1", "a@example.com")


def config(workers: int = 1) -> Any:
    return parse_config(
        "[Daemon]\nstate_dir = /tmp\n[Relay]\nhost = r.test\n"
        f"[Submission]\nlisten = tcp:2525:interface=127.0.0.1\nworkers = {workers}\n",
        "/tmp/c.conf",
    )


class ChannelFormatTests(SynchronousTestCase):
    def test_frames_survive_any_split(self) -> None:
        envelope = Envelope("a@example.com", ("b@example.org", "c@ex\u00e4mple.org"), b"x\0y\r\n")
        client = Client("192.0.2.7", "A@Example.com")
        data = encode_message(7, envelope, client) + encode_log("warn", "two\nlines")
        reader = FrameReader(1000)
        payloads = [p for i in range(len(data)) for p in reader.feed(data[i : i + 1])]
        self.assertEqual(len(payloads), 2)
        self.assertEqual(decode_message(payloads[0]), (7, envelope, client))

    def test_a_message_frame_without_its_fields_is_refused(self) -> None:
        with self.assertRaises(ChannelError):
            decode_message(b"M9 1\0{}\0peer")

    def test_an_oversize_frame_is_refused_before_it_is_read(self) -> None:
        reader = FrameReader(10)
        with self.assertRaises(ChannelError):
            list(reader.feed(frame(b"M" + b"x" * 11)[:6]))

    def test_refusals_keep_their_kind(self) -> None:
        for result, kind in (
            (QueueFull("queue is full (5 messages)"), QueueFull),
            (MessageError("bad address"), MessageError),
            (QueueError("disk I/O error"), QueueError),
        ):
            seq, decoded = decode_reply(reply_for(3, result)[4:])
            self.assertEqual((seq, type(decoded), str(decoded)), (3, kind, str(result)))
        self.assertEqual(decode_reply(reply_for(4, "7JP98H3W31WKZ1")[4:]), (4, "7JP98H3W31WKZ1"))


class FakeProcess(StringTransport):
    """What spawnProcess gives a ProcessProtocol: a pid, writes to stdin, signals."""

    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid
        self.signals: list[str] = []

    def signalProcess(self, name: str) -> None:
        self.signals.append(name)


class Port:
    """The daemon's listening port, as far as the pool touches it."""

    def __init__(self) -> None:
        import socket

        self.socket = socket.socket()
        self.reading = True

    def fileno(self) -> int:
        return self.socket.fileno()

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class WorkerTests(SynchronousTestCase):
    """Worker and daemon ends joined in memory: the worker's Deferred fires only with the
    daemon's answer, which comes only after the commit."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.commits: list[tuple[Envelope, Deferred[str]]] = []
        self.spawned: list[tuple[WorkerProcess, FakeProcess]] = []

        def commit(envelope: Envelope) -> Deferred[str]:
            waiter: Deferred[str] = Deferred()
            self.commits.append((envelope, waiter))
            return waiter

        def spawn(protocol: WorkerProcess, family: str, fd: int) -> None:
            self.assertEqual((family, fd), ("inet", self.port.fileno()))
            process = FakeProcess(4000 + len(self.spawned))
            protocol.makeConnection(process)
            self.spawned.append((protocol, process))

        self.port = Port()
        self.addCleanup(self.port.socket.close)
        self.pool = WorkerPool(spawn, self.clock, commit)
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def joined(self) -> tuple[DaemonChannel, WorkerProcess, FakeProcess]:
        """One worker started by the pool, with a DaemonChannel as its far end."""
        self.pool.start(config(), self.port, 1)
        daemon_end, process = self.spawned[-1]
        configs: list[Any] = []
        channel = DaemonChannel(configs.append, lambda: None)
        channel.makeConnection(StringTransport())
        channel.dataReceived(process.value())  # the config frame
        process.clear()
        self.assertEqual(configs[0].submission.workers, 1)
        return channel, daemon_end, process

    def pump(self, channel: DaemonChannel, daemon_end: WorkerProcess, process: FakeProcess) -> None:
        worker_out: Any = channel.transport
        daemon_end.childDataReceived(1, worker_out.value())
        worker_out.clear()
        channel.dataReceived(process.value())
        process.clear()

    def test_answer_only_after_the_commit(self) -> None:
        channel, daemon_end, process = self.joined()
        envelope = Envelope("a@example.com", ("b@example.org",), b"Subject: s\r\n\r\nb\r\n")
        answered = channel.submit(envelope, CLIENT)
        self.pump(channel, daemon_end, process)
        self.assertEqual([e for e, _ in self.commits], [envelope])
        self.assertNoResult(answered)
        self.commits[0][1].callback("7JP98H3W31WKZ1")
        self.pump(channel, daemon_end, process)
        self.assertEqual(self.successResultOf(answered), "7JP98H3W31WKZ1")

    def queued_lines(self) -> list[str]:
        return [
            formatEvent(e) for e in self.events if formatEvent(e).startswith("submission: queued")
        ]

    def test_the_daemon_says_the_queued_line_once_committed(self) -> None:
        """Said by the daemon when the commit answers, before delivery can begin: said by
        the worker, it came back through the channel and could follow the delivery line."""
        channel, daemon_end, process = self.joined()
        envelope = Envelope("app@example.com", ("b@example.org", "c@example.org"), b"x\r\n")
        answered = channel.submit(envelope, Client("192.0.2.7", "App@Example.com"))
        refused = channel.submit(envelope, CLIENT)
        self.pump(channel, daemon_end, process)
        self.assertEqual(self.queued_lines(), [])  # not before the commit
        self.commits[0][1].callback("7JP98H3W31WKZ1")
        self.commits[1][1].errback(Failure(QueueFull("queue is full")))
        self.assertEqual(
            self.queued_lines(),
            ["submission: queued 7JP98H3W31WKZ1 from <App@Example.com> for 2 recipient(s)"
             " (192.0.2.7)"],
        )  # fmt: skip
        self.assertNoResult(answered)  # said in the daemon, before the worker hears
        self.pump(channel, daemon_end, process)
        self.successResultOf(answered)
        self.failureResultOf(refused, QueueFull)
        self.assertEqual(len(self.queued_lines()), 1)

    def test_refusals_reach_the_worker_as_such(self) -> None:
        channel, daemon_end, process = self.joined()
        full = channel.submit(Envelope("a@example.com", ("b@example.org",), b"x\r\n"), CLIENT)
        broken = channel.submit(Envelope("a@example.com", ("b@example.org",), b"y\r\n"), CLIENT)
        self.pump(channel, daemon_end, process)
        self.commits[0][1].errback(Failure(QueueFull("queue is full")))
        self.commits[1][1].errback(Failure(QueueError("disk I/O error")))
        self.pump(channel, daemon_end, process)
        self.failureResultOf(full, QueueFull)
        self.assertEqual(
            self.failureResultOf(broken, QueueError).getErrorMessage(), "disk I/O error"
        )

    def test_daemon_gone_fails_what_is_owed(self) -> None:
        channel, daemon_end, process = self.joined()
        owed = channel.submit(Envelope("a@example.com", ("b@example.org",), b"x\r\n"), CLIENT)
        idle = channel.when_idle()
        channel.connectionLost(Failure(Exception("stdin closed")))
        self.failureResultOf(owed, QueueError)
        self.successResultOf(idle)
        self.failureResultOf(
            channel.submit(Envelope("a@x.org", ("b@x.org",), b""), CLIENT), QueueError
        )

    def test_worker_log_lines_land_in_the_daemon_log_at_their_level(self) -> None:
        _, daemon_end, _ = self.joined()
        daemon_end.childDataReceived(1, encode_log("warn", "submission: something odd"))
        daemon_end.childDataReceived(2, b"Traceback (most recent call last):\n")
        texts = [(e["log_level"].name, e.get("text") or e.get("line")) for e in self.events]
        self.assertIn(("warn", "submission: something odd"), texts)
        self.assertIn(("error", "Traceback (most recent call last):"), texts)

    def test_a_garbled_frame_stops_that_worker(self) -> None:
        _, daemon_end, process = self.joined()
        daemon_end.childDataReceived(1, frame(b"Zwhat"))
        self.assertEqual(process.signals, ["KILL"])

    def test_the_port_reads_only_while_no_worker_is_ready(self) -> None:
        _, daemon_end, process = self.joined()
        self.assertFalse(self.port.reading, "connections wait for the worker at start")
        daemon_end.childDataReceived(1, frame(b"Y"))
        self.clock.advance(READY_TIMEOUT)
        self.assertFalse(self.port.reading)
        daemon_end.processEnded(Failure(Exception("killed by signal 9")))
        self.assertTrue(self.port.reading, "the daemon serves while the worker is gone")
        self.clock.advance(FIRST_RESTART_DELAY)
        self.assertEqual(len(self.spawned), 2)
        new, _ = self.spawned[-1]
        new.childDataReceived(1, frame(b"Y"))
        self.assertFalse(self.port.reading)
        # A worker that keeps dying is restarted ever later, up to a minute apart.
        new.processEnded(Failure(Exception("exit 1")))
        self.clock.advance(FIRST_RESTART_DELAY)
        self.assertEqual(len(self.spawned), 3)
        self.spawned[-1][0].processEnded(Failure(Exception("exit 1")))
        self.clock.advance(FIRST_RESTART_DELAY)
        self.assertEqual(len(self.spawned), 3)
        self.clock.advance(FIRST_RESTART_DELAY)
        self.assertEqual(len(self.spawned), 4)

    def test_a_worker_that_never_gets_ready(self) -> None:
        self.joined()
        self.clock.advance(READY_TIMEOUT - 0.1)
        self.assertFalse(self.port.reading)
        self.clock.advance(0.1)
        self.assertTrue(self.port.reading)

    def test_stop_asks_then_insists_and_never_restarts(self) -> None:
        _, daemon_end, process = self.joined()
        daemon_end.childDataReceived(1, frame(b"Y"))
        stopped = self.pool.stop()
        self.assertEqual(process.signals, ["TERM"])
        self.assertNoResult(stopped)
        self.clock.advance(KILL_AFTER)
        self.assertEqual(process.signals, ["TERM", "KILL"])
        daemon_end.processEnded(Failure(Exception("killed")))
        self.successResultOf(stopped)
        self.clock.advance(MAX_WAIT)
        self.assertEqual(len(self.spawned), 1)

    def test_config_is_the_first_frame(self) -> None:
        self.pool.start(config(), self.port, 1)
        _, process = self.spawned[0]
        (payload,) = FrameReader(1 << 24).feed(process.value())
        self.assertEqual(payload[:1], CONFIG)


MAX_WAIT = 3600.0


class WorkerConfigTests(SynchronousTestCase):
    def test_auto_is_one_worker_where_there_is_a_second_cpu(self) -> None:
        workers = parse_config(
            "[Daemon]\nstate_dir = /tmp\n[Relay]\nhost = r.test\n", "/tmp/c.conf"
        ).submission.workers
        self.assertEqual(workers, 1 if (os.cpu_count() or 1) >= 2 and os.name == "posix" else 0)
        self.assertEqual(config(0).submission.workers, 0)
        from smtpmailer.ini import ConfigError

        with self.assertRaises(ConfigError):
            config(99)


class RealWorkerTests(TestCase):
    """twistd with ``workers = 1`` against a real SMTP peer."""

    timeout = 180

    def setUp(self) -> None:
        self.home = temporary_home(self)
        self.peer = started_peer(self)
        self.daemon = Daemon(
            os.path.join(self.home, "d"),
            f"[Relay]\nhost = 127.0.0.1\nport = {self.peer.port}\nsecurity = none\n"
            "[Submission]\nlisten = tcp:0:interface=127.0.0.1\nworkers = 1\n",
        )
        self.addCleanup(self.daemon.stop)
        self.daemon.start()
        self.port = submission_port(self.daemon)

    def worker_pid(self, after: int = 0) -> int:
        """The pid of the worker that is accepting (the newest one)."""
        found = wait_until(
            lambda: re.findall(r"submission worker (\d+) accepting", self.daemon.new_log()[after:]),
            what="a worker to accept",
        )
        return int(found[-1])

    def send(self, number: int) -> str:
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            reply = client.sendmail(
                "a@example.com", ["r@example.org"], f"X-Seq: {number}\r\n\r\nbody\r\n"
            )
            self.assertEqual(reply, {})
            return str(client.noop()[0])

    def test_the_worker_accepts_and_the_daemon_delivers(self) -> None:
        pid = self.worker_pid()
        self.assertNotEqual(pid, self.daemon.process.pid)  # type: ignore[union-attr]
        for number in range(5):
            self.send(number)
        wait_until(lambda: len(self.peer.messages()) == 5, what="5 deliveries")
        # Said by the daemon as each commit answered (queued_line.py).
        self.assertEqual(self.daemon.new_log().count("submission: queued "), 5)

    def test_kill_9_of_the_worker_loses_nothing_and_service_goes_on(self) -> None:
        pid = self.worker_pid()
        accepted: list[int] = []
        lock = threading.Lock()

        def submit(first: int) -> None:
            for number in range(first, first + 100):
                try:
                    self.send(number)
                except (OSError, smtplib.SMTPException):
                    continue  # the kill; the client goes on with its next message
                with lock:
                    accepted.append(number)

        clients = [threading.Thread(target=submit, args=(n * 1000,)) for n in range(4)]
        for client in clients:
            client.start()
        wait_until(lambda: len(accepted) >= 50, what="50 messages accepted")
        offset = len(self.daemon.new_log())
        os.kill(pid, signal.SIGKILL)
        for client in clients:
            client.join(120)
        self.assertGreater(len(accepted), 300, "after the kill the listener still answers")
        new_pid = self.worker_pid(offset)
        self.assertNotEqual(new_pid, pid)
        self.assertIn(f"submission worker {pid} ended", self.daemon.new_log())
        wait_until(
            lambda: set(accepted) <= {int(m.header("X-Seq") or -1) for m in self.peer.messages()},
            timeout=60,
            what="every accepted message to arrive",
        )
        self.send(99999)  # served by the new worker
        wait_until(lambda: "99999" in str([m.header("X-Seq") for m in self.peer.messages()]))

    def test_kill_9_of_the_daemon_ends_the_worker(self) -> None:
        pid = self.worker_pid()
        self.daemon.kill(signal.SIGKILL)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{pid}/stat") as handle:  # a zombie until init reaps it
                return handle.read().rsplit(")", 1)[1].split()[0] == "Z"

        wait_until(gone, what="the worker to exit")
        # The port is free again: a new daemon binds it.
        self.daemon.start()
        self.worker_pid(0)

    def test_reload_gives_the_worker_the_new_config(self) -> None:
        pid = self.worker_pid()
        text = open(self.daemon.config_path).read()
        with open(self.daemon.config_path, "w") as handle:
            handle.write(text.replace("workers = 1\n", "workers = 1\nmax_recipients = 1\n"))
        offset = len(self.daemon.new_log())
        self.daemon.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_until(
            lambda: "reload: applied ([Submission] max_recipients)" in self.daemon.new_log(),
            what=f"the reload: {self.daemon.new_log()[-3000:]}",
        )
        new_pid = self.worker_pid(offset)
        self.assertNotEqual(new_pid, pid)
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
            client.ehlo("x")
            client.mail("a@example.com")
            self.assertEqual(client.rcpt("b@example.org")[0], 250)
            self.assertEqual(client.rcpt("c@example.org")[0], 452)

    def test_reloads_during_a_flood_commit_only_what_was_acknowledged(self) -> None:
        """A reload that restarts the worker cut connections after DATA, before their
        250: 3,030 committed for 3,000 acknowledged, the clients' retries duplicates.
        Now every committed message had its 250, and every 250 was committed."""
        acknowledged: list[int] = []
        errors: list[str] = []
        stop = threading.Event()
        total = 600

        def client(numbers: range) -> None:
            pending = list(numbers)
            connection: smtplib.SMTP | None = None
            attempts = 0
            while pending and attempts < 5 * len(numbers) and not stop.is_set():
                attempts += 1
                try:
                    if connection is None:
                        connection = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                    number = pending[0]
                    connection.sendmail(
                        "a@example.com", ["r@example.org"], f"X-Seq: {number}\r\n\r\nb\r\n"
                    )
                    acknowledged.append(number)  # the 250 came
                    pending.pop(0)
                except (smtplib.SMTPException, OSError) as error:
                    errors.append(type(error).__name__)  # a 421, or cut: try again
                    if connection is not None:
                        try:
                            connection.close()
                        except OSError:
                            pass
                    connection = None
            if connection is not None:
                try:
                    connection.quit()
                except (smtplib.SMTPException, OSError):
                    pass

        clients = [threading.Thread(target=client, args=(range(n, total, 4),)) for n in range(4)]
        for thread in clients:
            thread.start()
        self.addCleanup(stop.set)
        text = open(self.daemon.config_path).read()
        for level in ("debug", "info", "debug"):  # each reload restarts the worker
            wait_until(lambda: len(acknowledged) >= total // 5, what="the flood to run")
            offset = len(self.daemon.new_log())
            with open(self.daemon.config_path, "w") as handle:
                handle.write(text.replace("[Logging]\n", f"[Logging]\nlevel = {level}\n"))
            self.daemon.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            wait_until(
                lambda offset=offset: "reload: applied" in self.daemon.new_log()[offset:],
                what="the reload",
            )
        for thread in clients:
            thread.join(timeout=120)
        self.assertEqual(sorted(acknowledged), list(range(total)), "every message acknowledged")

        def all_sent() -> dict[str, int] | None:
            states = self.daemon.states()
            return states if states and set(states) == {"sent"} else None

        states = wait_until(all_sent, timeout=90, what="every committed message sent")
        self.assertEqual(states["sent"], total, f"committed = acknowledged (retries: {errors})")

    def test_stop_waits_for_the_worker(self) -> None:
        pid = self.worker_pid()
        self.daemon.stop()
        self.assertIn("smtpmailer stopped", self.daemon.new_log())
        with self.assertRaises(ProcessLookupError):
            os.kill(pid, 0)


class OrphanTests(TestCase):
    """A worker whose daemon died by kill -9 dies too, at once, even while its channel
    stays open (another process still holding the pipe: the case that left orphans)."""

    timeout = 60

    def test_the_worker_dies_with_its_parent(self) -> None:
        import subprocess
        import sys

        from tests.daemon import environment

        read_end, write_end = os.pipe()  # the worker's stdin; this test keeps it open
        self.addCleanup(os.close, write_end)
        # A stand-in daemon: starts the worker as tap.py does, then waits for a signal.
        # (The worker touches its listening socket only once configured: none is needed.)
        parent_code = (
            "import os, signal, subprocess, sys\n"
            "worker = subprocess.Popen([sys.executable, '-m', 'smtpmailer.intake.smtp.worker',"
            " 'inet', str(os.getpid())], stdin=int(sys.argv[1]), stdout=subprocess.DEVNULL)\n"
            "print(worker.pid, flush=True)\n"
            "signal.pause()\n"
        )
        parent = subprocess.Popen(
            [sys.executable, "-c", parent_code, str(read_end)],
            pass_fds=(read_end,),
            stdout=subprocess.PIPE,
            env=environment(),
        )
        os.close(read_end)
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())

        def alive() -> bool:
            try:
                with open(f"/proc/{worker}/stat") as handle:
                    return handle.read().split()[2] != "Z"
            except FileNotFoundError:
                return False

        self.assertTrue(alive())
        parent.kill()
        parent.wait(timeout=30)
        parent.stdout.close()
        wait_until(lambda: not alive(), timeout=10, what="the orphaned worker to die")


class ChannelObserverTests(SynchronousTestCase):
    """The worker's log events reach the daemon as lines of text, each with its level."""

    def test_lines_as_the_daemon_logs_them(self) -> None:
        from twisted.logger import LogLevel

        from smtpmailer.intake.smtp.channel import FrameReader, decode_log
        from smtpmailer.intake.smtp.worker import channel_observer

        sent: list[bytes] = []
        channel: Any = type("Channel", (), {"send": lambda self, data: sent.append(data)})()
        observe = channel_observer(channel)
        namespace = {"log_namespace": "smtpmailer", "log_time": 0.0}
        line = "submission: queued Q1 from <a@b.example> for 1 recipient(s) (127.0.0.1)"
        observe({**namespace, "log_level": LogLevel.info, "log_format": "{line}", "line": line})
        observe({**namespace, "log_level": LogLevel.warn, "log_format": "x={x} {{y}}", "x": "<1>"})
        observe({**namespace, "log_level": LogLevel.debug, "log_format": "{line}", "line": "no"})
        try:
            raise ValueError("boom")
        except ValueError:
            failure = Failure()
        observe(
            {
                **namespace,
                "log_level": LogLevel.critical,
                "log_format": "{line}",
                "line": "could not",
                "log_failure": failure,
            }
        )
        reader = FrameReader(1 << 20)
        frames = [decode_log(payload) for data in sent for payload in reader.feed(data)]
        self.assertEqual(frames[:2], [("info", line), ("warn", "x=<1> {y}")])
        self.assertEqual(len(frames), 3)  # the debug line is under the threshold
        level, text = frames[2]
        self.assertEqual(level, "critical")
        self.assertTrue(text.startswith("could not\nTraceback"), text)
        self.assertIn("ValueError: boom", text)


class ReactorDispatchTests(SynchronousTestCase):
    """The worker's reactor calls each read and write without Twisted's log context."""

    def test_the_call_and_its_result_without_a_context(self) -> None:
        from twisted.python import context
        from twisted.python.log import ILogContext

        from smtpmailer.intake.smtp.worker import call_with_logger

        connection: Any = type("Connection", (), {"logPrefix": lambda self: "Submission,3"})()
        outside = context.get(ILogContext)["system"]
        seen = call_with_logger(connection, lambda n: (n, context.get(ILogContext)["system"]), 7)
        self.assertEqual(seen, (7, outside))

    def test_an_error_is_logged_with_its_system(self) -> None:
        from smtpmailer.intake.smtp.worker import call_with_logger

        connection: Any = type("Connection", (), {"logPrefix": lambda self: "Submission,3"})()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def broken() -> None:
            raise ValueError("boom")

        self.assertIsNone(call_with_logger(connection, broken))
        (error,) = [e for e in events if e.get("isError")]  # Twisted's legacy err event
        self.assertEqual(error["log_system"], "Submission,3")
        self.assertIsInstance(error["failure"].value, ValueError)
        self.flushLoggedErrors(ValueError)
