"""The daemon's side of its submission workers (intake/smtp/worker.py): start them on the
listening socket, commit what they send, and serve in-process whenever none is ready.

The daemon's own listening port stops reading only while a worker is ready; if every
worker is gone (crashed, killed, restarting after a reload) the port reads again at once,
so a client is never left waiting for a process that is not there. A worker that dies is
started again after a delay that doubles up to a minute.
"""

from __future__ import annotations

import pickle
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from smtpmailer.config import Config
from smtpmailer.intake.smtp.channel import (
    CONFIG,
    LOG,
    MESSAGE,
    READY,
    ChannelError,
    Client,
    FrameReader,
    decode_log,
    decode_message,
    frame,
    reply_for,
)
from smtpmailer.intake.smtp.queued_line import log_queued
from smtpmailer.logs import log
from smtpmailer.message import Envelope

# spawn(protocol, family name, listening file descriptor): starts one worker process.
Spawn = Callable[[ProcessProtocol, str, int], Any]
CommitChecked = Callable[[Envelope], "Deferred[str]"]
FAMILY_NAMES = {socket.AF_INET: "inet", socket.AF_INET6: "inet6", socket.AF_UNIX: "unix"}
FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 60.0
READY_TIMEOUT = 10.0
KILL_AFTER = 15.0  # a worker owed answers gets 10 s (its STOP_TIMEOUT) to collect them


class WorkerProcess(ProcessProtocol):
    """One worker as the daemon sees it: its messages are committed and answered here."""

    def __init__(self, pool: WorkerPool, config: Config) -> None:
        self.pool = pool
        self.config = config
        self.pid: int | None = None
        self.ready = False
        self.alive = True
        self.ended: Deferred[None] = Deferred()
        # A message may be max_message_size, plus its recipients.
        self._reader = FrameReader(config.queue.max_message_size + (1 << 24))
        self._stderr = b""

    def connectionMade(self) -> None:
        self.pid = getattr(self.transport, "pid", None)
        self.transport.write(frame(CONFIG + pickle.dumps(self.config)))  # type: ignore[union-attr]

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 2:  # the interpreter's own complaints, e.g. a traceback before the channel
            self._stderr += data
            *lines, self._stderr = self._stderr.split(b"\n")
            for line in lines:
                log.error(
                    "submission worker {pid}: {line}",
                    pid=self.pid,
                    line=line.decode("utf-8", "replace"),
                )
            return
        try:
            for payload in self._reader.feed(data):
                kind = payload[:1]
                if kind == MESSAGE:
                    self._commit(*decode_message(payload))
                elif kind == LOG:
                    log.relay(*decode_log(payload))
                elif kind == READY:
                    self.ready = True
                    self.pool.worker_ready(self)
                else:
                    raise ChannelError(f"unexpected frame {kind!r}")
        except ChannelError as error:
            log.error("submission worker {pid}: {error}; stopping it", pid=self.pid, error=error)
            self.kill()

    def _commit(self, seq: int, envelope: Envelope, client: Client) -> None:
        def answer(result: str | Failure) -> None:
            value = result.value if isinstance(result, Failure) else result
            if isinstance(value, str):  # before delivery can say anything of it
                log_queued(value, client.sender, len(envelope.recipients), client.peer)
            if self.alive:
                self.transport.write(reply_for(seq, value))  # type: ignore[union-attr,arg-type]

        self.pool.commit(envelope).addBoth(answer)

    def terminate(self) -> None:
        self._signal("TERM")

    def kill(self) -> None:
        self._signal("KILL")

    def _signal(self, name: str) -> None:
        if self.alive:
            try:
                self.transport.signalProcess(name)  # type: ignore[union-attr]
            except Exception:  # already gone: processEnded is on its way
                pass

    def processEnded(self, reason: Failure) -> None:
        self.alive = False
        self.ready = False
        self.pool.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerPool:
    """``count`` workers on one listening port; the port reads itself while none is ready."""

    def __init__(self, spawn: Spawn, clock: Any, commit: CommitChecked) -> None:
        self._spawn = spawn
        self._clock = clock
        self.commit = commit
        self.workers: list[WorkerProcess] = []
        self._port: Any = None
        self._config: Config | None = None
        self._count = 0
        self._restart_delay = FIRST_RESTART_DELAY
        self._restarts: list[Any] = []

    def start(self, config: Config, port: Any, count: int) -> None:
        """Connections wait in the port's backlog until a worker is ready (or READY_TIMEOUT
        passes): one accepted here now would stay in this process for its whole life."""
        self._config, self._port, self._count = config, port, count
        port.stopReading()
        for _ in range(count):
            self._start_one()
        self._restarts.append(self._clock.callLater(READY_TIMEOUT, self._not_ready))

    def _not_ready(self) -> None:
        if self._port is not None and not any(w.ready for w in self.workers):
            log.warn(
                "no submission worker ready after {timeout:.0f}s; the daemon serves "
                "submissions itself meanwhile",
                timeout=READY_TIMEOUT,
            )
            self._port.startReading()

    def _start_one(self) -> None:
        assert self._config is not None and self._port is not None
        worker = WorkerProcess(self, self._config)
        family = FAMILY_NAMES[self._port.socket.family]
        self._spawn(worker, family, self._port.fileno())
        self.workers.append(worker)
        log.info("submission worker {pid} started", pid=worker.pid)

    def worker_ready(self, worker: WorkerProcess) -> None:
        self._restart_delay = FIRST_RESTART_DELAY
        if self._port is not None:
            self._port.stopReading()  # the workers accept from here on
        log.info("submission worker {pid} accepting", pid=worker.pid)

    def worker_ended(self, worker: WorkerProcess, reason: Failure) -> None:
        if worker in self.workers:
            self.workers.remove(worker)
        if self._port is not None and not any(w.ready for w in self.workers):
            self._port.startReading()  # serve in-process until a worker is ready again
        if self._config is None:  # stopping: expected
            return
        log.warn(
            "submission worker {pid} ended ({reason}); the daemon serves submissions itself "
            "until a new one is ready in {delay:.0f}s",
            pid=worker.pid,
            reason=reason.getErrorMessage(),
            delay=self._restart_delay,
        )
        self._restarts = [call for call in self._restarts if call.active()]
        self._restarts.append(self._clock.callLater(self._restart_delay, self._restart))
        self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_DELAY)

    def _restart(self) -> None:
        if self._config is not None and len(self.workers) < self._count:
            self._start_one()

    def stop(self, keep_port: bool = False) -> Deferred[Any]:
        """SIGTERM to every worker; each answers what it owes, then exits (killed after
        KILL_AFTER). With ``keep_port`` the daemon goes on serving the port itself."""
        self._config = None
        if not keep_port:
            self._port = None
        for call in self._restarts:
            if call.active():
                call.cancel()
        self._restarts = []
        if not self.workers:
            return succeed(None)
        ended = []
        for worker in list(self.workers):
            worker.terminate()
            timer = self._clock.callLater(KILL_AFTER, worker.kill)

            def cancel(result: object, timer: Any = timer) -> object:
                if timer.active():
                    timer.cancel()
                return result

            ended.append(worker.ended.addBoth(cancel))
        return DeferredList(ended)
