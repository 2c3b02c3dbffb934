"""HeartbeatService: on a shared queue, this node says it is alive every few seconds, so
the other nodes leave its leases alone; when it stops (a crash, a lost network) they take
them over after ``[Queue] lease_timeout``. A store without nodes (SQLite) needs none."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from smtpmailer.config import Config
from smtpmailer.logs import log
from smtpmailer.queue.runner import AsyncQueue

# At most this long between heartbeats, and never less than three per lease_timeout.
MOST = 10.0


def interval(config: Config) -> float:
    return min(MOST, config.queue.lease_timeout / 3)


class HeartbeatService(Service):
    name = "heartbeat"

    def __init__(self, config: Config, queue: AsyncQueue, clock: Any) -> None:
        self.config = config
        self.queue = queue
        self.clock = clock
        self._loop: LoopingCall | None = None
        self._failing = False

    def startService(self) -> None:
        super().startService()
        if not hasattr(self.queue.store, "heartbeat"):
            return
        self._loop = LoopingCall(self._beat)
        self._loop.clock = self.clock
        self._loop.start(interval(self.config), now=False).addErrback(
            lambda failure: log.failure("heartbeat stopped", failure=failure)
        )

    def _beat(self) -> Deferred[None]:
        beat: Deferred[None] = self.queue.heartbeat(self.clock.seconds())
        beat.addCallbacks(self._ok, self._failed)
        return beat

    def _ok(self, _: object) -> None:
        if self._failing:
            log.info("heartbeat: the queue database answers again")
            self._failing = False

    def _failed(self, failure: Any) -> None:
        if not self._failing:
            log.warn(
                "heartbeat failed ({error}); this node's leases go to the others after "
                "lease_timeout = {timeout:g}s",
                error=failure.getErrorMessage(),
                timeout=self.config.queue.lease_timeout,
            )
            self._failing = True

    def stopService(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        super().stopService()
