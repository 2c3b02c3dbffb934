"""``twistd smtpmailer``: Options load and check everything; makeService builds the tree."""

from __future__ import annotations

import os
from typing import IO, Any

from twisted.python import usage

from smtpmailer.config import Config, load_config
from smtpmailer.daemon import lock as daemon_lock
from smtpmailer.ini import ConfigError
from smtpmailer.logs import LogTarget
from smtpmailer.paths import default_config_path
from smtpmailer.queue import QueueError


class Options(usage.Options):
    synopsis = "[--config PATH]"
    longdesc = (
        "Deliver the smtpmailer queue through the configured relays. The config file "
        "defaults to $SMTPMAILER_CONFIG, then /etc/smtpmailer/smtpmailer.conf."
    )
    optParameters = [["config", "c", None, "path to the config file"]]

    config: Config
    lock: IO[str]
    log_target: LogTarget

    def postOptions(self) -> None:
        """Every start-up problem becomes a one-line UsageError here, before any fork."""
        try:
            self.config = load_config(self["config"] or default_config_path())
        except ConfigError as error:
            raise usage.UsageError(str(error)) from None
        self.lock = prepare_state_dir(self.config)
        check_queue(self.config)
        parent: Any = self.parent or {}
        self.log_target = LogTarget(
            logfile=parent.get("logfile") or "",
            nodaemon=bool(parent.get("nodaemon")),
            elsewhere=bool(parent.get("syslog") or parent.get("logger")),
        )


def prepare_state_dir(config: Config) -> IO[str]:
    """Create ``state_dir`` if needed and take the daemon lock in it.

    The lock (flock, inherited across twistd's fork) keeps a second daemon off the same
    queue, which lets start-up safely take back every lease a crash left behind.
    """
    state_dir = config.daemon.state_dir
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
    except OSError as error:
        raise usage.UsageError(
            f"state_dir {state_dir}: cannot create it: {error.strerror}"
        ) from None
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise usage.UsageError(f"state_dir {state_dir} is not writable by this user")
    try:
        return daemon_lock.take(state_dir)
    except daemon_lock.LockError as error:
        raise usage.UsageError(str(error)) from None


def check_queue(config: Config) -> None:
    """Open the queue once to report a corrupt or unusable file now, not after the fork."""
    from smtpmailer.queue.backends import open_store

    try:
        open_store(config).close()
    except QueueError as error:
        raise usage.UsageError(str(error)) from None


def makeService(options: Options) -> Any:
    import signal

    from twisted.internet import reactor as installed_reactor
    from twisted.internet.threads import deferToThreadPool

    from smtpmailer.daemon.service import MailerService
    from smtpmailer.daemon.systemd import Notifier
    from smtpmailer.delivery.smtp.transport import tcp_connector
    from smtpmailer.endpoints import listen_now
    from smtpmailer.queue.backends import open_store
    from smtpmailer.queue.runner import QueueThread

    reactor: Any = installed_reactor
    config = options.config
    queue_thread = QueueThread(reactor)

    def blocking(function: Any, *args: Any) -> Any:
        return deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)

    def started() -> None:
        daemon_lock.write_pid(options.lock)  # this is the process that runs, after any fork
        queue_thread.start()

    service = MailerService(
        config,
        open_store=lambda: open_store(config),
        reactor=reactor,
        run=queue_thread,
        blocking=blocking,
        connector=tcp_connector(reactor),
        on_start=started,
        on_stop=queue_thread.stop,
        install_handler=signal.signal,
        listen=lambda text, factory: listen_now(reactor, text, factory),
        notifier=Notifier(),
        spawn_worker=spawn_submission_worker(reactor),
        log_target=options.log_target,
    )
    service.lock = options.lock  # type: ignore[attr-defined]
    return service


def spawn_submission_worker(reactor: Any) -> Any:
    """Start ``python -m smtpmailer.intake.smtp.worker`` with the channel on its stdin and
    stdout and the listening socket as its file descriptor 3."""
    import sys

    import smtpmailer

    # The worker imports this very copy of smtpmailer, however the daemon found it.
    home = os.path.dirname(os.path.dirname(os.path.abspath(smtpmailer.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (home, env.get("PYTHONPATH"))))

    def spawn(protocol: Any, family: str, listen_fd: int) -> Any:
        return reactor.spawnProcess(
            protocol,
            sys.executable,
            [sys.executable, "-m", "smtpmailer.intake.smtp.worker", family, str(os.getpid())],
            env=env,
            childFDs={0: "w", 1: "r", 2: "r", 3: listen_fd},
        )

    return spawn
