"""StatsService: a statistics line every ``stats_interval``, like Postfix's anvil summaries."""

from __future__ import annotations

from collections import Counter

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from smtpmailer.config import Config
from smtpmailer.delivery.service import DeliveryService
from smtpmailer.logs import log
from smtpmailer.queue import STATES
from smtpmailer.queue.runner import AsyncQueue
from smtpmailer.timers import set_interval


def stats_line(
    counts: dict[str, int], oldest_age: float | None, outcomes: Counter[str], interval: float
) -> str:
    """``stats: queued=3 deferred=1 ... oldest=42s sent_per_min=12.0 ...``"""
    parts = [f"{state}={counts.get(state, 0)}" for state in STATES]
    parts.append(f"oldest={oldest_age:.0f}s" if oldest_age is not None else "oldest=-")
    minutes = interval / 60 if interval > 0 else 1
    for status in ("sent", "deferred", "failed"):
        parts.append(f"{status}_per_min={outcomes.get(status, 0) / minutes:.1f}")
    return "stats: " + " ".join(parts)


class StatsService(TimerService):
    name = "stats"

    def __init__(
        self,
        config: Config,
        queue: AsyncQueue,
        delivery: DeliveryService,
        clock: IReactorTime,
    ) -> None:
        # A zero interval turns the line off; TimerService needs a positive step anyway.
        self.enabled = config.logging.stats_interval > 0
        super().__init__(config.logging.stats_interval or 3600.0, self.tick)
        self.clock = self._clock = clock
        self.config = config
        self._queue = queue
        self._delivery = delivery
        self._previous: Counter[str] = Counter()
        self._first = True

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.enabled = config.logging.stats_interval > 0
        step = config.logging.stats_interval or 3600.0
        if step != self.step:
            self.step = step
            set_interval(self, step)

    def tick(self) -> Deferred[None] | None:
        if self._first:
            # TimerService calls at once on start; the first line is due one interval later.
            self._first = False
            self._previous = Counter(self._delivery.counters)
            return None
        if not self.enabled:
            return None
        result = Deferred.fromCoroutine(self._log())
        result.addErrback(lambda failure: log.failure("statistics failed", failure=failure))
        return result

    async def _log(self) -> None:
        counts = await self._queue.counts()
        oldest = await self._queue.oldest_pending()
        now = self._clock.seconds()
        current = Counter(self._delivery.counters)
        outcomes = current - self._previous
        self._previous = current
        age = now - oldest if oldest is not None else None
        log.info("{line}", line=stats_line(counts, age, outcomes, self.step))
