"""The submission worker: a child process that speaks SMTP with clients on the daemon's own
listening socket and hands every message to the daemon, which commits it and answers.

Why a second process: one Python process has one GIL, and SMTP with many clients (reading,
line handling, replies, address checks) competed with delivery for it; profiled end to end,
the reactor thread was the bottleneck. Here the SMTP side runs on another core while the
daemon stays the queue's only writer, so group commit, direct leasing, the log and the
counts work as before. A client still gets its 250 only after the daemon's commit.

Run by the daemon (intake/smtp/worker_pool.py) as ``python -m smtpmailer.intake.smtp.worker
FAMILY``, with the channel on stdin/stdout (intake/smtp/channel.py) and the listening
socket as file descriptor 3. The worker exits when the daemon goes away (stdin closes) and, on
SIGTERM, stops accepting and waits (at most STOP_TIMEOUT) for the answers it is owed.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import sys
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.protocol import Protocol
from twisted.logger import LogLevel, formatEvent, globalLogBeginner
from twisted.python import log as legacy_log
from twisted.python.failure import Failure

from smtpmailer.config import Config
from smtpmailer.intake.checks import check_envelope
from smtpmailer.intake.smtp.channel import (
    CONFIG,
    READY,
    REPLY,
    ChannelError,
    Client,
    FrameReader,
    decode_reply,
    encode_log,
    encode_message,
    frame,
)
from smtpmailer.logs import log, set_level
from smtpmailer.message import Envelope, MessageError
from smtpmailer.queue import QueueError

LISTEN_FD = 3
FAMILIES = {"inet": socket.AF_INET, "inet6": socket.AF_INET6, "unix": socket.AF_UNIX}
STOP_TIMEOUT = 10.0
CONFIG_LIMIT = 1 << 24  # the daemon's frames: a pickled Config, and short replies


class DaemonChannel(Protocol):
    """The worker's end of the pipe: messages out, answers and the config in."""

    def __init__(self, on_config: Any, on_lost: Any) -> None:
        self._reader = FrameReader(CONFIG_LIMIT)
        self._pending: dict[int, Deferred[str]] = {}
        self._seq = 0
        self._on_config = on_config
        self._on_lost = on_lost
        self._idle_waiters: list[Deferred[None]] = []
        self.open = False

    def connectionMade(self) -> None:
        self.open = True

    def dataReceived(self, data: bytes) -> None:
        try:
            for payload in self._reader.feed(data):
                kind = payload[:1]
                if kind == REPLY:
                    self._answer(*decode_reply(payload))
                elif kind == CONFIG:
                    self._on_config(pickle.loads(payload[1:]))  # noqa: S301 (our parent's)
                else:
                    raise ChannelError(f"unexpected frame {kind!r} from the daemon")
        except ChannelError as error:
            log.error("submission worker: {error}", error=error)
            self.transport.loseConnection()  # type: ignore[union-attr]

    def _answer(self, seq: int, result: str | Exception) -> None:
        waiter = self._pending.pop(seq, None)
        if waiter is None:
            return
        if isinstance(result, Exception):
            waiter.errback(Failure(result))
        else:
            waiter.callback(result)
        self._maybe_idle()

    def submit(self, envelope: Envelope, client: Client) -> Deferred[str]:
        if not self.open:
            return fail(QueueError("the daemon is not answering"))
        self._seq += 1
        waiter: Deferred[str] = Deferred()
        self._pending[self._seq] = waiter
        self.transport.write(encode_message(self._seq, envelope, client))  # type: ignore[union-attr]
        return waiter

    def send(self, data: bytes) -> None:
        if self.open:
            self.transport.write(data)  # type: ignore[union-attr]

    def when_idle(self) -> Deferred[None]:
        """Fires once every message sent has its answer."""
        waiter: Deferred[None] = Deferred()
        self._idle_waiters.append(waiter)
        self._maybe_idle()
        return waiter

    def _maybe_idle(self) -> None:
        if not self._pending:
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.open = False
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.errback(Failure(QueueError("the daemon went away before it answered")))
        self._maybe_idle()
        self._on_lost()


class Worker:
    """Waits for the config, then listens on the inherited socket until told to stop."""

    def __init__(self, reactor: Any, family: int, listen_fd: int = LISTEN_FD) -> None:
        self._reactor = reactor
        self._family = family
        self._listen_fd = listen_fd
        self.channel = DaemonChannel(self.configured, self.daemon_gone)
        self.config: Config | None = None
        self.port: Any = None
        self.factory: Any = None
        self._stopping = False

    def configured(self, config: Config) -> None:
        from twisted.internet.threads import deferToThread

        from smtpmailer.intake.smtp.listener import SubmissionFactory

        self.config = config
        set_level(config.logging.level)
        # The daemon says the queued line when it commits (intake/smtp/queued_line.py).
        factory = SubmissionFactory(
            config, self.enqueue, self._reactor, deferToThread, logs_queued=False
        )
        self.factory = factory
        self.port = self._reactor.adoptStreamPort(self._listen_fd, self._family, factory)
        os.close(self._listen_fd)  # adoptStreamPort made its own copy
        self.channel.send(frame(READY))

    def enqueue(self, envelope: Envelope, peer: str) -> Deferred[str]:
        """The daemon's own checks, here, so its core only commits."""
        assert self.config is not None
        try:
            checked = check_envelope(self.config, envelope)
        except MessageError:
            return fail()
        return self.channel.submit(checked, Client(peer, envelope.sender))

    def stop(self) -> Deferred[Any]:
        """SIGTERM (a reload that replaces us, or the daemon stopping): no new connections;
        every transaction under way is finished and answered after its commit before its
        connection is closed (cutting it after DATA made the client's retry a duplicate);
        idle connections are closed with a 421. At most STOP_TIMEOUT."""
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        waits: list[Deferred[Any]] = [self.channel.when_idle()]
        if self.factory is not None:
            waits.append(self.factory.drain())
        waiting: Deferred[Any] = DeferredList(waits)
        timer = self._reactor.callLater(STOP_TIMEOUT, waiting.cancel)
        waiting.addBoth(lambda _: timer.cancel() if timer.active() else None)
        return waiting

    def daemon_gone(self) -> None:
        """stdin closed: the daemon stopped or died; nothing here can be committed now,
        so connections still open are not waited for: stop at once."""
        self._stopping = True
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        self._reactor.stop()

    def shut_down(self) -> None:
        """Stop the reactor once (SIGTERM, SIGINT or the daemon gone); ``stop`` runs
        before it ends."""
        if not self._stopping:
            self._stopping = True
            self._reactor.stop()


def channel_observer(channel: DaemonChannel) -> Any:
    """Log events go to the daemon's log through the channel, each with its level."""

    def observe(event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        ours = str(event.get("log_namespace", "")).startswith("smtpmailer")
        if level < (log.threshold if ours else LogLevel.warn) and level != LogLevel.critical:
            return  # Twisted's own chatter ("starting on 2525") is the daemon's to say
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        channel.send(encode_log(level.name, text))

    return observe


def die_with(daemon_pid: int | None) -> None:
    """Die at once when the daemon dies, even by kill -9: an orphan worker could still
    hold the listening socket beside a restarted daemon's. On Linux the kernel sends us
    SIGKILL then (PR_SET_PDEATHSIG); a daemon already gone before that was set is seen
    by our parent no longer being it. Elsewhere, the end of the channel (stdin) stops us."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if daemon_pid is not None and os.getppid() != daemon_pid:
        os._exit(0)


def call_with_logger(logger: Any, func: Any, *args: Any, **kw: Any) -> Any:
    """Twisted's ``log.callWithLogger`` without the log context it sets around the call.

    The reactor calls that for every read and write, to name the connection as the
    ``system`` of legacy log events said inside: a context dict copied and five calls an
    event. A worker never shows a system (channel_observer sends the text alone), so here
    it was only cost: end to end at 1 KB, our CPU per message went from 0.78 to 0.71 ms
    without it (4 A/B pairs). An error is still logged, with its system, as Twisted's."""
    try:
        return func(*args, **kw)
    except KeyboardInterrupt:
        raise
    except BaseException:
        try:
            system = logger.logPrefix()
        except Exception:
            system = "(buggy logPrefix method)"
        legacy_log.err(system=system)
        return None


def main(argv: list[str]) -> int:
    die_with(int(argv[2]) if len(argv) > 2 else None)
    from twisted.internet import reactor, stdio

    legacy_log.callWithLogger = call_with_logger  # the reactor looks it up at each event

    running: Any = reactor
    worker = Worker(running, FAMILIES[argv[1]])
    globalLogBeginner.beginLoggingTo(
        [channel_observer(worker.channel)], redirectStandardIO=False, discardBuffer=True
    )
    stdio.StandardIO(worker.channel, reactor=running)
    running.addSystemEventTrigger("before", "shutdown", worker.stop)
    # Our own handlers: SIGTERM and SIGINT stop gracefully, once; SIGHUP is the daemon's
    # business (it restarts us with the new config when that matters).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: running.callFromThread(worker.shut_down))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    running.run(installSignalHandlers=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
