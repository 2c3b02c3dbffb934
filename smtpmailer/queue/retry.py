"""When to try a deferred message again, and when to give up on it."""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from smtpmailer.config import QueueConfig

# Each delay is shortened by up to this fraction, so that a burst of deferrals spreads out
# instead of coming back in one wave. Shortening (not lengthening) keeps max_retry_delay a cap.
JITTER = 0.2


@attrs.frozen
class RetryPolicy:
    """DESIGN.md's retry rule: ``retry_delay * backoff_factor**(n-1)``, capped, with jitter.

    ``max_retries`` counts retries after the first attempt: 10 means at most 11 attempts.
    """

    retry_delay: float
    backoff_factor: float
    max_retry_delay: float
    max_retries: int
    max_age: float
    random: Callable[[], float] = attrs.field(default=random.random, eq=False)

    @classmethod
    def from_config(cls, queue: QueueConfig, rng: Callable[[], float] | None = None) -> RetryPolicy:
        return cls(
            retry_delay=queue.retry_delay,
            backoff_factor=queue.backoff_factor,
            max_retry_delay=queue.max_retry_delay,
            max_retries=queue.max_retries,
            max_age=queue.max_age,
            random=rng or random.random,
        )

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (attempts >= 1)."""
        exponent = max(0, attempts - 1)
        try:
            base = self.retry_delay * self.backoff_factor**exponent
        except OverflowError:
            base = self.max_retry_delay
        base = min(base, self.max_retry_delay)
        return base * (1.0 - JITTER * self.random())

    def give_up_reason(self, attempts: int, age_from: float, now: float) -> str | None:
        """Why a message that was just deferred must fail instead, or None to retry."""
        if attempts > self.max_retries:
            return f"retries exhausted after {attempts} attempts"
        if now - age_from >= self.max_age:
            return f"message older than max_age ({now - age_from:.0f}s)"
        return None

    def next_attempt(self, attempts: int, age_from: float, now: float) -> float:
        """The time of the next attempt; never later than the moment the message expires."""
        return min(now + self.delay(attempts), age_from + self.max_age)
