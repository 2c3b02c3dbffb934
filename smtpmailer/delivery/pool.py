"""RelayPool: the connections to one relay, with that relay's own limits.

Up to ``max_connections`` sessions run at once; each carries up to
``max_messages_per_connection`` messages and stays open briefly when idle, so a steady flow
reuses it; ``rate_limit`` bounds how many start per period. A session that cannot
be opened hands every message waiting here back to its owner at once (which tries the next
relay or defers them), instead of dialling once per message, and marks the relay down for
a while so that new mail goes straight to the next one. A relay that greets one more
session with a 421 while others of ours are open or opening is not down: it limits connections
(Postfix's ``smtpd_client_connection_count_limit``, Exim's ``smtp_accept_max_per_host``),
so the pool holds at the sessions it has for a while and they carry the mail. Exchange
Online says the same later, after a message's content (``432 4.3.2``): the session ends
as one that did not open, and the message is no attempt.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater

from smtpmailer.config import RelayConfig
from smtpmailer.delivery.transport import OpenError, Session, Transport
from smtpmailer.logs import log
from smtpmailer.queue import Lease, RecipientResult

# An idle connection is kept this long for the next message, like Postfix's connection cache.
IDLE_TIMEOUT = 2.0
# After a failed open, new mail skips this relay (when another is left to try) this long.
DOWN_FOR = 30.0
# After the relay refused one more session, the pool opens no more than it had this long.
HOLD_FOR = 30.0


@attrs.define
class Job:
    """A leased message on its way: the relays still to try, and what the others said."""

    lease: Lease
    path: tuple[str, ...]
    problems: list[str] = attrs.Factory(list)
    # Where the last attempt went: for log lines (``HOST[none]``: no connection was made)
    # and, by relay name, for metrics.
    label: str = ""
    relay: str = ""


class PoolOwner(Protocol):
    """What a pool reports to (the DeliveryService): it decides what each outcome means."""

    def finished(
        self,
        pool: RelayPool,
        job: Job,
        results: tuple[RecipientResult, ...],
        label: str,
        seconds: float,
    ) -> None:
        """The relay answered for every recipient, after ``seconds`` on the wire."""

    def broken(self, pool: RelayPool, job: Job, error: BaseException, label: str) -> None:
        """The session failed while it carried the message."""

    def unreachable(self, pool: RelayPool, jobs: list[Job], error: OpenError) -> None:
        """No session could be opened; these jobs never reached the relay."""

    def limited(self, pool: RelayPool, error: OpenError, held_for: float) -> None:
        """The relay turned one more session away while ``pool.held_at`` others were open
        or opening: the pool holds at those for ``held_for`` seconds; no job was handed
        back."""

    def give_back(self, jobs: Sequence[Job]) -> Deferred[Any]:
        """Jobs that will not be attempted (stopping): back to the queue, untouched."""

    def connections_changed(self, pool: RelayPool, delta: int) -> None: ...

    def worker_done(self) -> None: ...


class RateLimiter:
    """``rate_limit = N/period`` as a token bucket of N tokens, each one back a full period
    after it was spent: a burst of up to N goes at once, and no window of one period ever
    carries more than N (Microsoft 365's 30 messages a minute holds however the window is
    laid). A classic bucket refilled at N/period would let almost 2N through one window.
    Reservations are made when a message is about to start and waited for by the caller."""

    def __init__(self, clock: IReactorTime, rate: tuple[int, float] | None) -> None:
        self._clock = clock
        self.count, self.period = rate if rate else (0, 0.0)
        self._starts: deque[float] = deque()  # the last ``count`` starts, in order

    @property
    def limited(self) -> bool:
        return self.count > 0

    def delay(self) -> float:
        """Reserve the next start; how long to wait for it."""
        if not self.limited:
            return 0.0
        now = self._clock.seconds()
        start = now
        if len(self._starts) >= self.count:
            start = max(now, self._starts[-self.count] + self.period)
        self._starts.append(start)
        while len(self._starts) > self.count:
            self._starts.popleft()
        return start - now

    def startable_within(self, seconds: float) -> int:
        """How many more messages could start within ``seconds`` from now."""
        if not self.limited:
            return 1 << 30
        now = self._clock.seconds()
        free = sum(1 for start in self._starts if start + self.period <= now)
        free += self.count - len(self._starts)
        return free + self.count * int(seconds / self.period)


class RelayPool:
    def __init__(
        self, relay: RelayConfig, transport: Transport, clock: IReactorTime, owner: PoolOwner
    ) -> None:
        self.relay = relay
        self.transport = transport
        self._clock = clock
        self._owner = owner
        self.limiter = RateLimiter(clock, relay.rate_limit)
        self._pending: deque[Job] = deque()
        self._idle: deque[tuple[Deferred[Job | None], IDelayedCall]] = deque()
        self._sessions: set[Session] = set()
        self._opening: set[Deferred[Session]] = set()
        self._rate_waits: set[Deferred[None]] = set()
        self.workers = 0
        self.closing = False
        self.down_until = 0.0
        self.last_open_error: OpenError | None = None
        # While the clock is before held_until, at most held_at sessions (see _held_back).
        self.held_at = 0
        self.held_until = 0.0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def down(self) -> bool:
        return self._clock.seconds() < self.down_until

    def submit(self, job: Job) -> None:
        if self._give_idle(job):
            return
        self._pending.append(job)
        self._dispatch()

    def _give_idle(self, job: Job) -> bool:
        """Hand the job to a session waiting idle for one, if there is such a session."""
        if not self._idle:
            return False
        waiter, timer = self._idle.popleft()
        timer.cancel()
        waiter.callback(job)
        return True

    def room(self) -> int:
        """How many sessions may run at once now: max_connections, or fewer for a while
        after the relay refused one more."""
        if self._clock.seconds() < self.held_until:
            return min(self.held_at, self.relay.max_connections)
        return self.relay.max_connections

    def _dispatch(self) -> None:
        while self._pending and self.workers < self.room() and not self.closing:
            job = self._pending.popleft()
            self.workers += 1
            Deferred.fromCoroutine(self._work(job)).addErrback(
                lambda f: log.failure("delivery worker crashed", failure=f)
            )

    def _take(self) -> Deferred[Job | None]:
        """The next job for an open session: at once, or when one arrives, or None."""
        if self.closing:
            return succeed(None)
        if self._pending:
            return succeed(self._pending.popleft())
        waiter: Deferred[Job | None] = Deferred()

        def give_up() -> None:
            self._idle.remove(entry)
            waiter.callback(None)

        timer = self._clock.callLater(IDLE_TIMEOUT, give_up)
        entry = (waiter, timer)
        self._idle.append(entry)
        return waiter

    async def _open(self) -> Session:
        opening = self.transport.open()
        self._opening.add(opening)
        try:
            return await opening
        except OpenError:
            raise
        except Exception as error:
            problem = self.transport.describe(error)
            raise OpenError(problem, self.relay.label, self.relay.label) from None
        finally:
            self._opening.discard(opening)

    async def _work(self, job: Job | None) -> None:
        session: Session | None = None
        relay = self.relay  # the settings this session was opened with
        try:
            try:
                session = await self._open()
            except OpenError as error:
                assert job is not None
                if error.busy and self.workers > 1:
                    self._held_back(job, error)
                else:
                    self._unreachable(job, error)
                return
            self.down_until = 0.0
            self._sessions.add(session)
            self._owner.connections_changed(self, +1)
            followed: list[Job] = []
            carrier: Session = session

            def spent() -> bool:
                """Renewed, or the relay's settings changed under a reload."""
                return carrier.delivered >= relay.max_messages_per_connection or (
                    self.relay is not relay and self.relay != relay
                )

            def follow() -> Lease | None:
                """The next job, to pipeline behind the one on the wire: only one that
                is waiting now, and only when this session may carry it."""
                if followed or not self._pending or self.closing or self.limiter.limited or spent():
                    return None
                followed.append(self._pending.popleft())
                return followed[0].lease

            while job is not None:
                if not followed and not await self._rate_wait():
                    # Stopping while the rate limit held this message back: give it back.
                    await self._owner.give_back([job])
                    break
                followed.clear()
                began = self._clock.seconds()
                try:
                    results = await session.deliver(job.lease, follow)
                except OpenError as error:
                    # The relay cannot take mail now (an API's 5xx or 429), or not on this
                    # connection (busy: over its limit of sessions, see _held_back): this
                    # job and the ones waiting go on as if no session could be opened.
                    session.abort()
                    self._not_carried(followed)
                    if error.busy and self.workers > 1:
                        self._held_back(job, error)
                    else:
                        self._unreachable(job, error)
                    return
                except Exception as error:
                    self._owner.broken(self, job, error, session.label)
                    session.abort()
                    self._not_carried(followed)
                    return
                elapsed = self._clock.seconds() - began
                self._owner.finished(self, job, results, session.label, elapsed)
                job = None
                if followed:
                    job = followed[0]  # under way here already: limits were checked
                    continue
                if spent():
                    break
                job = await self._take()
            await session.quit()
        finally:
            if session is not None:
                self._sessions.discard(session)
                self._owner.connections_changed(self, -1)
            self.workers -= 1
            self._dispatch()
            self._owner.worker_done()

    def _not_carried(self, jobs: list[Job]) -> None:
        """A job pipelined behind one whose connection failed never got its DATA through:
        first in line again here (another connection takes it), or given back when the
        pool is closing."""
        if not jobs:
            return
        if self.closing:
            self._owner.give_back(jobs)
            return
        self._pending.extendleft(reversed(jobs))

    def _held_back(self, job: Job, error: OpenError) -> None:
        """The relay turned a session away while others of ours were open or opening: it
        limits connections rather than being down. Marking it down would defer every
        waiting message (or send them to the next relay) while the sessions it took could
        carry them; instead hold at those for HOLD_FOR and give the job to the first that
        is free. Should the others fail too, the last one finds the relay down as ever."""
        self.held_at = self.workers - 1  # the others; this one is about to end
        self.held_until = self._clock.seconds() + HOLD_FOR
        self.last_open_error = error
        self._owner.limited(self, error, HOLD_FOR)
        if not self._give_idle(job):
            self._pending.appendleft(job)  # first in line: it was due before the rest

    def _unreachable(self, job: Job, error: OpenError) -> None:
        """Mark the relay down (until it said, or DOWN_FOR) and hand back every job here."""
        now = self._clock.seconds()
        self.down_until = max(error.pause_until or 0.0, now + DOWN_FOR)
        self.held_until = 0.0
        self.last_open_error = error
        jobs = [job, *self._pending]
        self._pending.clear()
        self._owner.unreachable(self, jobs, error)

    async def _rate_wait(self) -> bool:
        """Wait for the rate limit; False if the pool closed meanwhile."""
        wait = self.limiter.delay()
        if wait <= 0:
            return True
        waiting: Deferred[None] = deferLater(self._clock, wait)
        self._rate_waits.add(waiting)
        try:
            await waiting
        except CancelledError:
            return False
        finally:
            self._rate_waits.discard(waiting)
        return True

    def _close_idle(self) -> None:
        while self._idle:
            waiter, timer = self._idle.popleft()
            timer.cancel()
            waiter.callback(None)

    def reconfigure(self, relay: RelayConfig, transport: Transport) -> None:
        """New settings for new sessions; sessions open now finish the message they carry
        on the old ones, then close instead of taking another."""
        if relay.rate_limit != self.relay.rate_limit:
            self.limiter = RateLimiter(self._clock, relay.rate_limit)
        self.relay = relay
        retired, self.transport = self.transport, transport
        retired.retire()
        self.down_until = self.held_until = 0.0
        self._close_idle()
        self._dispatch()

    def close(self) -> list[Job]:
        """Take no new work; returns the jobs that had not started."""
        self.closing = True
        self.transport.retire()
        unstarted, self._pending = list(self._pending), deque()
        self._close_idle()
        for waiting in list(self._rate_waits):
            waiting.cancel()
        return unstarted

    def abort(self) -> int:
        """Cut every session and attempt to open one; returns how many sessions were cut."""
        cut = len(self._sessions)
        for opening in list(self._opening):
            opening.cancel()
        for session in list(self._sessions):
            session.abort()
        return cut
