"""DeliveryService: routes each leased message to a relay's pool, and records the outcome.

Every relay has its own RelayPool with its own limits. A message goes to the relays of the
first ``[Route:NAME]`` its sender matches, else to every relay in ``priority`` order: one
that cannot be reached, or refuses TLS or AUTH, hands it to the next at once; a reply to
the message itself is the message's outcome. When no relay is left to try, the message is
deferred with what each of them said.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from smtpmailer.config import Config, RelayConfig
from smtpmailer.config.sections import OAuth2Config
from smtpmailer.delivery.pool import IDLE_TIMEOUT, Job, RelayPool
from smtpmailer.delivery.transport import OpenError, TransportContext, make_transport
from smtpmailer.logs import log, outcome_line
from smtpmailer.metrics import Metrics
from smtpmailer.oauth2.endpoint import HTTPPoster, Poster
from smtpmailer.oauth2.source import TokenSource, TokenSources
from smtpmailer.proxy import proxy_settings
from smtpmailer.queue import Lease, Outcome, QueueError, RecipientResult, Recorded
from smtpmailer.queue.runner import Runner, synchronous_runner

__all__ = ["IDLE_TIMEOUT", "DeliveryService", "RelayState", "lease_seconds"]


def lease_seconds(config: Config) -> float:
    """Long enough for any attempt to end by its own timeouts before the lease runs out."""
    slowest = max(relay.timeout for relay in config.relays)
    return max(600.0, 20 * slowest)


@attrs.define
class RelayState:
    """What the dashboard and /health show about one relay."""

    name: str
    connections: int = 0
    last_success: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None

    def as_json(self) -> dict[str, object]:
        return attrs.asdict(self)


class Recorder(Protocol):
    """Where outcomes are committed (the Dispatcher)."""

    def record(self, outcome: Outcome) -> Deferred[Recorded]: ...

    def flush(self) -> Deferred[None]: ...


class DeliveryService(Service):
    """Delivers leased messages; records every outcome through its Recorder.

    ``on_capacity`` is called when a pool runs low on waiting work, so that whoever feeds
    delivery (the poller) can look for more.
    """

    name = "delivery"

    def __init__(
        self,
        config: Config,
        recorder: Recorder,
        release: Callable[[list[Lease]], Deferred[Any]],
        clock: IReactorTime,
        connector: Callable[..., Deferred[Any]] | None = None,
        blocking: Runner | None = None,
        helo_name: str | None = None,
        metrics: Metrics | None = None,
        on_capacity: Callable[[], None] = lambda: None,
        token_poster: Poster | None = None,
        http_client: Callable[..., Deferred[Any]] | None = None,
        on_recorded: Callable[[Recorded], None] = lambda recorded: None,
    ) -> None:
        self.config = config
        self._recorder = recorder
        self._release = release
        self._clock = clock
        self._token_poster = token_poster
        self._blocking = blocking
        self.tokens = TokenSources(self._token_source)
        self.tokens.configure(config.oauth2)
        proxy, no_proxy = proxy_settings(config.daemon)
        self._context = TransportContext(
            clock=clock,
            helo_name=helo_name or socket.gethostname(),
            connector=connector,
            blocking=blocking,
            tokens=self.tokens.get,
            http=http_client,
            http_observed=self._http_observed,
            proxy=proxy,
            no_proxy=no_proxy,
        )
        # Relays whose credentials were refused, and what they said, until one delivers.
        self.credential_problems: dict[str, str] = {}
        self._on_capacity = on_capacity
        self._on_recorded = on_recorded
        self._jobs = 0  # accepted and not yet finished or given back
        self._stopping = False
        self.immediate = False
        self._stopped_waiters: list[Deferred[None]] = []
        self.metrics = metrics
        self.relays: dict[str, RelayState] = {}
        self.last_success: float | None = None
        self.lease_seconds = lease_seconds(config)
        self.counters: Counter[str] = Counter()
        self.pools: dict[str, RelayPool] = {}
        # Outcomes the store refused, each waiting to be recorded again.
        self._unrecorded: dict[str, IDelayedCall] = {}
        # Messages waiting for the last relay on their path to come back from a pause.
        self._held: dict[str, tuple[Job, IDelayedCall]] = {}
        self._retired: set[RelayPool] = set()
        # Until when each relay was last told to pause, for the paused-time metric.
        self._paused_until: dict[str, float] = {}
        self._set_relays(config.relays)

    def _token_source(self, section: OAuth2Config) -> TokenSource:
        if self._token_poster is None:
            from twisted.internet import reactor

            self._token_poster = HTTPPoster(reactor, self.config.daemon)
        return TokenSource(
            section,
            self.config.daemon.state_dir,
            self._clock,
            self._token_poster,
            self._blocking or synchronous_runner,
            self._token_counted,
        )

    def _http_observed(self, label: str, status: int | None, seconds: float) -> None:
        if self.metrics is not None:
            answer = f"{status // 100}xx" if status is not None else "none"
            self.metrics.api_requests.labels(label, answer).inc()
            self.metrics.api_request_seconds.labels(label).observe(seconds)

    def _count_pause(self, label: str, until: float) -> None:
        """Count the time a pause adds beyond the one already under way."""
        now = self._clock.seconds()
        start = max(now, self._paused_until.get(label, 0.0))
        if until > start:
            self._paused_until[label] = until
            if self.metrics is not None:
                self.metrics.relay_paused_seconds.labels(label).inc(until - start)

    def _token_counted(self, section: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.oauth2_refreshes.labels(section, result).inc()
            self.metrics.oauth2_ok.labels(section).set(1 if result == "ok" else 0)

    def _set_relays(self, relays: Sequence[RelayConfig]) -> None:
        """One pool per relay: kept where a relay is unchanged, told of new settings where
        it changed, closed where it is gone (its waiting mail goes to the others)."""
        pools: dict[str, RelayPool] = {}
        for relay in relays:
            pool = self.pools.pop(relay.name, None)
            if pool is None:
                pool = RelayPool(relay, make_transport(relay, self._context), self._clock, self)
            elif pool.relay != relay:
                pool.reconfigure(relay, make_transport(relay, self._context))
            pools[relay.name] = pool
        gone, self.pools = self.pools, pools
        self._order = tuple(relay.name for relay in relays)
        for pool in gone.values():
            self._retired.add(pool)
            for job in pool.close():
                job.path = self.config.relays_for(job.lease.sender)
                self._route(job)
        self._retired = {pool for pool in self._retired if pool.workers}

    # --- what the poller sees ---

    def _primary(self) -> RelayPool:
        """The pool that new mail goes to first: the first relay that is not down."""
        pools = [self.pools[name] for name in self._order]
        return next((pool for pool in pools if not pool.down()), pools[0])

    def capacity(self) -> int:
        """How many more leases are welcome: enough to keep every connection busy, but no
        more than the rate limit lets start within half a lease (a lease that ran out while
        its message waited here would let the poller hand the message out twice)."""
        if self._stopping or not self.running:
            return 0
        primary = self._primary()
        target = max(self.config.queue.batch_size, 2 * primary.relay.max_connections)
        if primary.limiter.limited:
            startable = primary.limiter.startable_within(self.lease_seconds / 2)
            target = min(target, max(1, startable))
        return max(0, target - self._jobs)

    def submit(self, leases: list[Lease]) -> None:
        for lease in leases:
            self._jobs += 1
            self._route(Job(lease, self.config.relays_for(lease.sender)))

    # --- routing ---

    def _route(self, job: Job) -> None:
        """To the first relay left on the job's path; one marked down is skipped while
        another is left to try."""
        while job.path:
            pool = self.pools.get(job.path[0])
            if pool is None or pool.closing:
                job.path = job.path[1:]
                continue
            if pool.down() and len(job.path) > 1 and pool.last_open_error is not None:
                job.problems.append(str(pool.last_open_error))
                job.label, job.relay = pool.last_open_error.label, pool.relay.label
                job.path = job.path[1:]
                continue
            pool.submit(job)
            return
        reason = "; ".join(job.problems) or "no relay to deliver to"
        self._finish(job, self._all(job.lease, "deferred", reason), job.label)

    # --- what the pools report (PoolOwner) ---

    def finished(
        self,
        pool: RelayPool,
        job: Job,
        results: tuple[RecipientResult, ...],
        label: str,
        seconds: float,
    ) -> None:
        if self.metrics is not None:
            self.metrics.child(self.metrics.delivery_seconds, pool.relay.label).observe(seconds)
        self.credential_problems.pop(pool.relay.label, None)  # it took our credentials
        self._finish(job, results, label, pool, seconds)

    def broken(self, pool: RelayPool, job: Job, error: BaseException, label: str) -> None:
        if self.immediate:
            # Cut off by SIGINT: not an attempt, back to the queue untouched.
            self.give_back([job])
            return
        reason = pool.transport.describe(error)
        self._finish(job, self._all(job.lease, "deferred", reason), label, pool)

    def unreachable(self, pool: RelayPool, jobs: list[Job], error: OpenError) -> None:
        self._relay_failed(pool.relay.label, error.problem)
        if error.credentials:
            self.credential_problems[pool.relay.label] = str(error)
            if self.metrics is not None:
                self.metrics.auth_failures.labels(pool.relay.label).inc()
        if error.pause_until:
            self._count_pause(pool.relay.label, error.pause_until)
        if self._stopping:
            self.give_back(jobs)
            return
        wait = (error.pause_until or 0.0) - self._clock.seconds()
        for job in jobs:
            if len(job.path) == 1 and 0 < wait <= self.lease_seconds / 2:
                # The last relay left said when to come back (a 429's reset): the message
                # waits for it here, leased, instead of spending an attempt.
                self._hold(job, wait)
                continue
            job.problems.append(str(error))
            job.label, job.relay = error.label, pool.relay.label
            job.path = job.path[1:]
            self._route(job)

    def limited(self, pool: RelayPool, error: OpenError, held_for: float) -> None:
        self._relay_failed(pool.relay.label, error.problem)
        log.warn(
            "relay {relay} turned a connection away while {open} other(s) of ours were "
            "open or opening ({problem}); no more than {open} for {seconds:g}s",
            relay=pool.relay.label,
            open=pool.held_at,
            problem=error.problem,
            seconds=held_for,
        )

    def _hold(self, job: Job, wait: float) -> None:
        def resume() -> None:
            self._held.pop(job.lease.id, None)
            self._route(job)

        self._held[job.lease.id] = (job, self._clock.callLater(wait, resume))

    def give_back(self, jobs: Sequence[Job]) -> Deferred[Any]:
        if not jobs:
            return succeed(None)
        self._jobs -= len(jobs)
        return self._release([job.lease for job in jobs])

    def connections_changed(self, pool: RelayPool, delta: int) -> None:
        state = self.relay_state(pool.relay.label)
        state.connections += delta
        if self.metrics is not None:
            self.metrics.connections.labels(pool.relay.label).set(state.connections)

    def worker_done(self) -> None:
        self._retired = {pool for pool in self._retired if pool.workers}
        self._check_stopped()

    # --- outcomes ---

    def relay_state(self, name: str) -> RelayState:
        if name not in self.relays:
            self.relays[name] = RelayState(name)
        return self.relays[name]

    def _relay_failed(self, name: str, problem: str) -> None:
        state = self.relay_state(name)
        state.last_error, state.last_error_at = problem, self._clock.seconds()
        if self.metrics is not None:
            self.metrics.connection_failures.labels(name).inc()

    @staticmethod
    def _all(lease: Lease, status: str, reason: str) -> tuple[RecipientResult, ...]:
        return tuple(RecipientResult(r, status, reason) for r in lease.recipients)

    def _finish(
        self,
        job: Job,
        results: tuple[RecipientResult, ...],
        label: str,
        pool: RelayPool | None = None,
        seconds: float | None = None,
    ) -> None:
        """``pool`` is the relay that answered, or None when no relay could be reached;
        ``seconds`` how long the relay took with the message."""
        self._jobs -= 1
        lease = job.lease
        sent_at = self._clock.seconds()
        relay_name = pool.relay.label if pool is not None else job.relay
        outcome = Outcome(lease, results, label, relay_name, seconds)
        self._record(outcome, sent_at, relay_name)
        if pool is None or pool.pending < pool.relay.max_connections:
            self._on_capacity()

    def _record(self, outcome: Outcome, sent_at: float, relay_name: str) -> None:
        self._unrecorded.pop(outcome.lease.id, None)
        recording = self._recorder.record(outcome)
        recording.addCallback(self._log_outcome, sent_at, relay_name)
        recording.addErrback(self._not_recorded, outcome, sent_at, relay_name)

    def _not_recorded(
        self, failure: Failure, outcome: Outcome, sent_at: float, relay_name: str
    ) -> None:
        """The store refused the outcome (disk full, busy): keep it and try again every
        poll interval, so delivery resumes by itself once the store takes it, instead of
        the message staying active until its lease runs out."""
        message_id = outcome.lease.id
        if not failure.check(QueueError):
            log.failure("could not record the outcome of {id}", failure=failure, id=message_id)
            return
        if self._stopping:
            log.warn(
                "id={id} outcome not recorded ({error}); the message is delivered again "
                "after the next start",
                id=message_id,
                error=failure.value,
            )
            return
        wait = self.config.queue.poll_interval
        log.warn(
            "id={id} outcome not recorded yet ({error}); trying again in {wait:g}s",
            id=message_id,
            error=failure.value,
            wait=wait,
        )
        self._unrecorded[message_id] = self._clock.callLater(
            wait, self._record, outcome, sent_at, relay_name
        )

    def _log_outcome(self, recorded: Recorded, sent_at: float, relay_name: str) -> None:
        outcome = recorded.outcome
        lease = outcome.lease
        if recorded.stale:
            log.warn(
                "id={id} outcome not recorded: the message is {state} now (lease lost)",
                id=lease.id,
                state=recorded.state,
            )
            return
        if recorded.state == "sent" and self.metrics is not None:
            self.metrics.residence_seconds.observe(sent_at - lease.created)
        self._on_recorded(recorded)
        expired = dict(recorded.expired)
        for result in outcome.results:
            status, reply = result.status, result.reply
            if result.address in expired:
                status, reply = "failed", f"{reply}; {expired[result.address]}"
            self.counters[status] += 1
            self._count(relay_name, status, reply, sent_at)
            delay = sent_at - lease.created
            line = outcome_line(
                lease.id, result.address, outcome.relay, delay, recorded.attempts, status, reply
            )
            (log.info if status == "sent" else log.warn)(
                "{line}",
                line=line,
                id=lease.id,
                to=result.address,
                relay=outcome.relay,
                delay=round(delay, 3),
                attempts=recorded.attempts,
                status=status,
                reply=reply,
            )

    def _count(self, relay_name: str, status: str, reply: str, at: float) -> None:
        state = self.relay_state(relay_name)
        if status == "sent":
            state.last_success = self.last_success = at
        else:
            state.last_error, state.last_error_at = reply, at
        if self.metrics is not None:
            self.metrics.child(self.metrics.recipients, relay_name, status).inc()

    # --- reload ---

    def reconfigure(self, config: Config) -> None:
        """New relay settings apply to new connections; connections open now finish the
        message they carry on the old settings, then close instead of taking another."""
        self.config = config
        self.lease_seconds = lease_seconds(config)
        self.tokens.configure(config.oauth2)
        self._set_relays(config.relays)

    # --- service ---

    def stopService(self) -> Deferred[None]:
        """Take no new work, give back what has not started, bound the rest by
        ``shutdown_timeout``, and return once every outcome is committed."""
        super().stopService()
        self._stopping = True
        unstarted = [job for pool in self._all_pools() for job in pool.close()]
        for message_id, retry in list(self._unrecorded.items()):
            retry.cancel()  # its lease runs out, or the next start requeues it
            log.warn("id={id} outcome not recorded before the stop", id=message_id)
        self._unrecorded.clear()
        for job, resume in self._held.values():
            resume.cancel()
            unstarted.append(job)
        self._held.clear()
        released = self.give_back(unstarted)
        finished: Deferred[None] = Deferred()
        self._stopped_waiters.append(finished)
        grace = 0 if self.immediate else self.config.daemon.shutdown_timeout
        timer = self._clock.callLater(grace, self._abort_all)
        self._check_stopped()

        def cancel_timer(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        finished.addBoth(cancel_timer)
        finished.addCallback(lambda _: released)
        finished.addCallback(lambda _: self._recorder.flush())
        return finished

    def _all_pools(self) -> list[RelayPool]:
        return [*self.pools.values(), *self._retired]

    def _abort_all(self) -> None:
        cut = sum(pool.abort() for pool in self._all_pools())
        if cut and not self.immediate:
            log.warn("shutdown_timeout reached: aborting {n} connection(s)", n=cut)

    def _check_stopped(self) -> None:
        if self._stopping and not any(pool.workers for pool in self._all_pools()):
            waiters, self._stopped_waiters = self._stopped_waiters, []
            for waiter in waiters:
                waiter.callback(None)
