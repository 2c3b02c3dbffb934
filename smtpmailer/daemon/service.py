"""MailerService: the daemon's MultiService, with its named children and their start/stop order."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred

from smtpmailer import __version__
from smtpmailer.bounce.notifier import Bouncer
from smtpmailer.config import Config
from smtpmailer.daemon.heartbeat import HeartbeatService
from smtpmailer.daemon.reload import ReloadService
from smtpmailer.daemon.stats import StatsService
from smtpmailer.daemon.systemd import Notifier, SystemdService
from smtpmailer.delivery.service import DeliveryService
from smtpmailer.delivery.smtp.transport import Connector
from smtpmailer.dispatch.poller import QueuePoller
from smtpmailer.dispatch.turns import Dispatcher
from smtpmailer.intake.sendmail.handover import SendmailSocketService
from smtpmailer.intake.smtp.listener import SubmissionService
from smtpmailer.intake.smtp.worker_pool import Spawn, WorkerPool
from smtpmailer.listening import listen_unix_socket
from smtpmailer.logs import LogTarget, log, observer_for, set_level
from smtpmailer.manhole import ManholeService
from smtpmailer.message import Envelope
from smtpmailer.metrics import Metrics
from smtpmailer.oauth2.endpoint import Poster
from smtpmailer.queue import (
    PRIORITY_NAMES,
    QueueStore,
    backends,
)
from smtpmailer.queue.runner import AsyncQueue, Runner
from smtpmailer.web.service import StatusService
from smtpmailer.webhooks.service import WebhookService


class MailerService(MultiService):
    """Delivery, poller, stats, reload and systemd as named children over one queue.

    ``open_store`` runs at start (after twistd forked); ``run`` moves store calls off the
    reactor thread; signal installation and systemd notification are injected, so tests
    run everything in memory without patching.
    """

    def __init__(
        self,
        config: Config,
        open_store: Callable[[], QueueStore],
        reactor: Any,
        run: Runner,
        blocking: Runner,
        connector: Connector | None = None,
        listen_wakeup: bool = True,
        on_start: Callable[[], None] | None = None,
        on_stop: Callable[[], None] | None = None,
        install_handler: Callable[[int, Any], Any] | None = None,
        notifier: Notifier | None = None,
        log_target: LogTarget | None = None,
        listen: Callable[[str, Any], Any] | None = None,
        spawn_worker: Spawn | None = None,
        token_poster: Poster | None = None,
        http_client: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._open_store = open_store
        self._reactor = reactor
        self._listen_wakeup = listen_wakeup
        self._on_start = on_start
        self._on_stop = on_stop
        self._install = install_handler
        self._log_target = log_target
        self._wakeups = backends.wakeups_for(config)
        self._wakeup_port: Any = None
        self.metrics = Metrics()
        self.metrics.info.labels(
            __version__.public(), config.queue.backend, config.queue.node or ""
        ).set(1)
        self.queue = AsyncQueue(run)
        # Submissions (SMTP, HTTP, sendmail) and delivery outcomes that arrive together
        # share one commit: the Dispatcher's.
        self.dispatcher = Dispatcher(config, self.queue, reactor)
        self.webhooks = WebhookService(config, self.queue, reactor, http_client, self.metrics)
        self.bouncer = Bouncer(
            config,
            self.queue,
            self.dispatcher.submit,
            reactor,
            socket.gethostname(),
            lambda result: self.metrics.bounces.labels(result).inc(),
        )
        self.delivery = DeliveryService(
            config,
            self.dispatcher,
            release=self.queue.release_leases,
            clock=reactor,
            connector=connector,
            blocking=blocking,
            metrics=self.metrics,
            on_capacity=self.dispatcher.room_freed,
            token_poster=token_poster,
            http_client=http_client,
            on_recorded=self.bouncer.recorded,
        )
        self.poller = QueuePoller(
            config, self.queue, self.delivery, reactor, lease=self.dispatcher.lease
        )
        self.dispatcher.serve(self.delivery, self.poller)
        self.stats = StatsService(config, self.queue, self.delivery, reactor)
        self.heartbeat = HeartbeatService(config, self.queue, reactor)
        notifier = notifier or Notifier({})
        self.reload = ReloadService(
            self,
            schedule=getattr(reactor, "callFromThread", lambda function: function()),
            install_handler=install_handler or (lambda signum, handler: None),
            notifier=notifier,
        )
        self.systemd = SystemdService(notifier, reactor)
        self.status = StatusService(
            config,
            self.queue,
            self.poller,
            self.delivery,
            self.metrics,
            reactor,
            listen,
            submit=self.submit,
            submit_batch=self.dispatcher.submit_batch,
            more_problems=self.webhooks.problems,
        )
        self.manhole = ManholeService(
            config, self, listen, blocking, lambda: backends.open_store(self.config)
        )
        workers = WorkerPool(spawn_worker, reactor, self.commit_checked) if spawn_worker else None
        self.submission = SubmissionService(
            config, self.submit, reactor, blocking, listen, workers=workers
        )
        self.sendmail_socket = SendmailSocketService(
            config,
            self.submit,
            reactor,
            blocking,
            listen_unix_socket(reactor, mode=0o660) if listen_wakeup else None,
        )
        # Listeners bind early in startService (see there); systemd's READY comes last.
        for child in (
            self.webhooks,  # first: outcomes write events from the first one on
            self.delivery,
            self.poller,
            self.stats,
            self.heartbeat,
            self.status,
            self.manhole,
            self.submission,
            self.sendmail_socket,
            self.reload,
            self.systemd,
        ):
            child.setServiceParent(self)

    @property
    def store(self) -> QueueStore | None:
        return self.queue.store

    def setServiceParent(self, parent: Any) -> None:
        """twistd hands us its Application here: we give it our log observer, which twistd
        then uses in place of its own (JSON, or its text lines written faster), unless it
        was told to log through syslog or a ``--logger`` of the user's."""
        if hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            observer = observer_for(self.config.logging.format, self._log_target or LogTarget())
            if observer is not None:
                parent.setComponent(ILogObserver, observer)
        super().setServiceParent(parent)

    # --- start and stop ---

    def startService(self) -> None:
        set_level(self.config.logging.level)
        for warning in self.config.warnings:
            log.warn("config: {detail}", detail=warning)
        store: QueueStore = self._open_store()
        self.queue.attach(store)
        beat = getattr(store, "heartbeat", None)
        if beat is not None:
            beat(self._reactor.seconds())  # alive before anything is leased
        reclaimed = store.recover_leases()
        if reclaimed:
            log.warn(
                "{n} message(s) were being delivered when the daemon last stopped; "
                "they are queued again",
                n=reclaimed,
            )
        if self._listen_wakeup:
            self._wakeup_port = self._wakeups.listen(self._reactor, self.poller.wake)
        if self._install is not None and hasattr(self._reactor, "callWhenRunning"):
            # After twistd's own handlers, which the reactor installs as it starts.
            self._reactor.callWhenRunning(self._install, signal.SIGINT, self._interrupt)
        counts = store.counts()
        relays = ", ".join(relay.where for relay in self.config.relays)
        # Listeners bind first (a port that cannot be bound fails the start), threads start
        # last: a thread left running by a failed start would keep the process alive.
        try:
            self.status.bind()
            self.manhole.bind()
            self.submission.bind()
            self.sendmail_socket.bind()
        except Exception:
            self._abandon_start()
            raise
        if self._on_start is not None:
            self._on_start()
        log.info(
            "smtpmailer {version} ready: queue={queue} relay={relays} queued={queued} "
            "deferred={deferred} held={held}",
            version=__version__.public(),
            queue=self.config.queue.where,
            relays=relays,
            queued=counts.get("queued", 0),
            deferred=counts.get("deferred", 0),
            held=counts.get("held", 0),
        )
        super().startService()

    def _abandon_start(self) -> None:
        """Undo what a failed start did, so the process can exit."""
        for port in (
            self.status.port,
            self.manhole.port,
            self.submission.port,
            self.sendmail_socket.port,
            self._wakeup_port,
        ):
            if port is not None:
                port.stopListening()
        if self.queue.store is not None:
            self.queue.store.close()

    def _interrupt(self, signum: int, frame: Any) -> None:
        """SIGINT: stop now. Messages on the wire go back to the queue, unfinished."""
        self.delivery.immediate = True
        self._reactor.callFromThread(self._reactor.stop)

    def stopService(self) -> Deferred[None]:
        """Stop leasing first, then let delivery finish (bounded), then close the queue."""
        self.running = False
        log.info("smtpmailer stopping{how}", how=" now" if self.delivery.immediate else "")

        async def stop() -> None:
            first: list[Deferred[Any]] = [
                maybeDeferred(child.stopService)
                for child in (
                    self.reload,
                    self.systemd,
                    self.status,
                    self.manhole,
                    self.submission,
                    self.sendmail_socket,
                    self.stats,
                    self.poller,
                )
            ]
            await DeferredList(first)
            await maybeDeferred(self.delivery.stopService)
            # After delivery's last outcome (its events stay in the queue for next time).
            await maybeDeferred(self.webhooks.stopService)
            # The last heartbeat after the last delivery: leases stay ours until then.
            await maybeDeferred(self.heartbeat.stopService)
            if self._wakeup_port is not None:
                await self._wakeups.stop(self._wakeup_port)
            await self.dispatcher.flush()
            if self._on_stop is not None:
                self._on_stop()
            if self.queue.store is not None:
                self.queue.store.close()
            log.info("smtpmailer stopped")

        return Deferred.fromCoroutine(stop())

    # --- input: the Dispatcher's, for the ways in and the tests ---

    def submit(self, envelope: Envelope, priority: int = PRIORITY_NAMES["normal"]) -> Deferred[str]:
        return self.dispatcher.submit(envelope, priority)

    def commit_checked(
        self, envelope: Envelope, priority: int = PRIORITY_NAMES["normal"]
    ) -> Deferred[str]:
        return self.dispatcher.commit_checked(envelope, priority)

    # --- reload ---

    async def reconfigure(self, config: Config) -> None:
        """Hand a validated Config to every child; ours is replaced only at the end."""
        set_level(config.logging.level)
        self.dispatcher.reconfigure(config)
        self.bouncer.reconfigure(config)
        await self.webhooks.reconfigure(config)
        for child in (self.delivery, self.poller, self.stats):
            child.reconfigure(config)
        for listener in (self.status, self.manhole, self.submission, self.sendmail_socket):
            await listener.reconfigure(config)
        self.config = config
