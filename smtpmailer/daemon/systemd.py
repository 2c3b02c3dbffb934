"""systemd readiness: READY, RELOADING, STOPPING and WATCHDOG notifications (sd_notify)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from smtpmailer.logs import log


class Notifier:
    """Sends sd_notify datagrams to $NOTIFY_SOCKET; does nothing when it is not set."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        path = environ.get("NOTIFY_SOCKET", "")
        # "@name" is a socket in the abstract namespace.
        self.address = "\0" + path[1:] if path.startswith("@") else path
        usec = environ.get("WATCHDOG_USEC", "")
        watchdog_pid = environ.get("WATCHDOG_PID", "")
        mine = not watchdog_pid or watchdog_pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and mine else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, *fields: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(fields).encode())
        except OSError as error:
            log.warn("systemd notification failed: {error}", error=error)
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1", f"MAINPID={os.getpid()}", "STATUS=delivering")

    def reloading(self) -> bool:
        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1", "STATUS=stopping")


class SystemdService(Service):
    """READY=1 once the reactor runs (every child has started and bound its listeners),
    STOPPING=1 on stop, and WATCHDOG=1 at half of WATCHDOG_USEC."""

    name = "systemd"

    def __init__(self, notifier: Notifier, reactor: Any) -> None:
        self.notifier = notifier
        self._reactor = reactor
        self._watchdog: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        if not self.notifier.enabled:
            return
        self._reactor.callWhenRunning(self.notifier.ready)
        if self.notifier.watchdog_interval:
            self._watchdog = LoopingCall(self.notifier.notify, "WATCHDOG=1")
            self._watchdog.clock = self._reactor
            self._watchdog.start(self.notifier.watchdog_interval, now=True)

    def stopService(self) -> None:
        super().stopService()
        if self._watchdog is not None and self._watchdog.running:
            self._watchdog.stop()
        self.notifier.stopping()
