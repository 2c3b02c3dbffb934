"""QueuePoller: leases due messages, highest priority first, and hands them to delivery.

It ticks every ``poll_interval`` but is also woken at once: by the CLI after it commits a
message (a datagram on the wakeup socket), and by delivery when it has room again while
more mail is due. So the poll interval is a safety net, not the latency floor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from smtpmailer.config import Config
from smtpmailer.delivery.service import DeliveryService
from smtpmailer.logs import log
from smtpmailer.queue import Lease, QueueError
from smtpmailer.queue.runner import AsyncQueue
from smtpmailer.timers import set_interval

# Sent messages are forgotten in slices, so one tick never holds the queue for long.
PURGE_SLICE = 500
PURGE_EVERY = 60.0
# The same queue error is logged again at most this often while it lasts.
REPEAT_EVERY = 60.0
# (now, limit, lease_seconds) -> the leases made
LeaseCall = Callable[[float, int, float], "Deferred[list[Lease]]"]


class QueuePoller(TimerService):
    name = "poller"

    def __init__(
        self,
        config: Config,
        queue: AsyncQueue,
        delivery: DeliveryService,
        clock: IReactorTime,
        lease: LeaseCall | None = None,
    ) -> None:
        """``lease``: how a poll leases (the queue's own call unless given; the daemon
        gives the Dispatcher's, which makes the lease in the next turn's commit)."""
        super().__init__(config.queue.poll_interval, self.tick)
        self.clock = self._clock = clock
        self.config = config
        self._queue = queue
        self._delivery = delivery
        self._lease = lease or queue.lease
        self._busy = False
        self._again = False
        self._idle_waiters: list[Deferred[None]] = []
        self._wakeup: IDelayedCall | None = None
        self._last_purge = -PURGE_EVERY
        self.last_batch_full = False
        self._last_error: str | None = None
        self._last_error_at = 0.0
        self.ticks = 0
        self.lag = 0.0
        self.paused = False
        self.metrics = delivery.metrics

    def wake(self) -> None:
        """Poll as soon as the reactor is free (many wake-ups in a row make one poll)."""
        if not self.running:
            return
        if self._busy:
            self._again = True
            return
        if self._wakeup is None or not self._wakeup.active():
            self._wakeup = self._clock.callLater(0, self.tick)

    def wake_if_more(self) -> None:
        if self.last_batch_full:
            self.wake()

    def tick(self) -> Deferred[None]:
        """One poll. Never raises and never overlaps another (a TimerService whose call
        fails stops for good)."""
        if self._busy:
            self._again = True
            return succeed(None)
        self._busy = True
        self.ticks += 1
        result = Deferred.fromCoroutine(self._poll())
        result.addErrback(self._failed)

        def done(_: Any) -> None:
            self._busy = False
            waiters, self._idle_waiters = self._idle_waiters, []
            for waiter in waiters:
                waiter.callback(None)
            if self._again:
                self._again = False
                self.wake()

        result.addBoth(done)
        return result

    def _failed(self, failure: Failure) -> None:
        """The queue's own errors (disk full, busy, a damaged file) are one line that says
        what is wrong, repeated at most every REPEAT_EVERY while it lasts (not every poll);
        anything else is a bug and gets its traceback."""
        if not failure.check(QueueError):
            log.failure("queue poll failed", failure=failure)
            return
        text, now = str(failure.value), self._clock.seconds()
        if text != self._last_error or now - self._last_error_at >= REPEAT_EVERY:
            self._last_error, self._last_error_at = text, now
            log.error("queue poll failed: {error}", error=text)

    async def _poll(self) -> None:
        capacity = 0 if self.paused else self._delivery.capacity()
        limit = min(self.config.queue.batch_size, capacity)
        if limit <= 0:
            self.last_batch_full = True  # no room to look: assume more is due
        else:
            now = self._clock.seconds()
            leases = await self._lease(now, limit, self._delivery.lease_seconds)
            self.last_batch_full = len(leases) == limit
            if leases:
                self.lag = max(0.0, now - min(lease.due for lease in leases))
                if self.metrics is not None:
                    self.metrics.poller_lag.set(self.lag)
                log.debug("leased {n} message(s)", n=len(leases))
                self._delivery.submit(leases)
        now = self._clock.seconds()
        if now - self._last_purge >= PURGE_EVERY:
            self._last_purge = now
            purged = await self._queue.purge_sent(now - self.config.queue.keep_sent, PURGE_SLICE)
            if purged:
                log.debug("forgot {n} sent message(s)", n=purged)
        self._last_error = None  # a poll that worked: the next error is news again

    def reconfigure(self, config: Config) -> None:
        """poll_interval and batch_size apply from the next tick."""
        self.config = config
        if config.queue.poll_interval != self.step:
            self.step = config.queue.poll_interval
            set_interval(self, self.step)

    def stopService(self) -> Deferred[Any]:
        """Stop ticking, and wait for a poll under way: the leases it takes reach
        delivery, which gives back what it has not started when it stops next."""
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        stopped = super().stopService()
        if not self._busy:
            return stopped
        idle: Deferred[None] = Deferred()
        self._idle_waiters.append(idle)
        return DeferredList([stopped, idle])
