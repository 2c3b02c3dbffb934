"""DeliveryService: takes leased messages and works them off over a pool of relay connections.

Up to ``max_connections`` connections run at once; each carries up to
``max_messages_per_connection`` messages and stays open briefly when idle, so a steady flow
reuses it. Relays are tried in order of ``priority``: the first that completes EHLO, TLS
and AUTH gets the work. A connection that cannot be made defers every waiting message with
the reason (the next poll tries again), instead of dialling once per message.
"""

from __future__ import annotations

import socket
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater

from smtpmailer.config import Config, RelayConfig
from smtpmailer.delivery.maildir import deliver_to_maildir, ensure_maildir
from smtpmailer.delivery.protocol import SMTPClientProtocol, SMTPProtocolError, SMTPTimeout
from smtpmailer.delivery.session import SessionError, SMTPSession
from smtpmailer.logs import log, outcome_line
from smtpmailer.metrics import Metrics
from smtpmailer.queue import Lease, Outcome, RecipientResult, Recorded
from smtpmailer.queue.runner import QueueWriter, Runner

# An idle connection is kept this long for the next message, like Postfix's connection cache.
IDLE_TIMEOUT = 2.0


def describe_error(error: BaseException) -> str:
    """One line an operator understands, for the queue's last_error and the log."""
    if isinstance(error, SessionError | SMTPTimeout | SMTPProtocolError):
        return str(error)
    if isinstance(error, net_error.ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, net_error.TimeoutError):
        return "connection timed out"
    if isinstance(error, net_error.DNSLookupError):
        return "host name lookup failed"
    name = type(error).__name__
    if name == "VerificationError":
        return f"TLS: certificate does not match the relay's host name ({error})"
    if name == "Error" and type(error).__module__.startswith("OpenSSL"):
        details = [part[-1] for part in (error.args[0] if error.args else []) if part]
        text = ", ".join(str(d) for d in details if d) or "handshake failed"
        return f"TLS: {text}"
    if isinstance(error, net_error.ConnectionDone | net_error.ConnectionLost):
        return "connection closed by the relay"
    return f"{name}: {error}" if str(error) else name


class Session(Protocol):
    """What a worker needs from a connection: deliver messages one by one, then quit."""

    label: str
    relay_name: str

    @property
    def delivered(self) -> int: ...

    def deliver(self, lease: Lease) -> Deferred[tuple[RecipientResult, ...]]: ...

    def quit(self) -> Deferred[None]: ...

    def abort(self) -> None: ...


class _SMTPConnection:
    def __init__(self, session: SMTPSession, label: str) -> None:
        self.session = session
        self.label = label
        self.relay_name = session.relay.label

    @property
    def delivered(self) -> int:
        return self.session.delivered

    def deliver(self, lease: Lease) -> Deferred[tuple[RecipientResult, ...]]:
        return Deferred.fromCoroutine(self.session.deliver(lease))

    def quit(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self.session.quit())

    def abort(self) -> None:
        self.session.protocol.abort()


class _MaildirConnection:
    """The Maildir 'connection': writes happen in a worker thread (they fsync)."""

    def __init__(self, relay: RelayConfig, blocking: Runner) -> None:
        self.path = relay.path or ""
        self.label = self.relay_name = relay.label
        self.delivered = 0
        self._blocking = blocking

    def deliver(self, lease: Lease) -> Deferred[tuple[RecipientResult, ...]]:
        self.delivered += 1
        return self._blocking(deliver_to_maildir, self.path, lease)

    def quit(self) -> Deferred[None]:
        return succeed(None)

    def abort(self) -> None:
        pass


Connector = Callable[[RelayConfig, SMTPClientProtocol], "Deferred[Any]"]


def tcp_connector(reactor: Any) -> Connector:
    """Connect for real: TCP (and implicit TLS for ``security = tls``), with a timeout."""
    from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS

    from smtpmailer.delivery.tls import client_tls_options

    def connect(relay: RelayConfig, protocol: SMTPClientProtocol) -> Deferred[Any]:
        endpoint: Any = HostnameEndpoint(reactor, relay.host, relay.port, timeout=relay.timeout)
        if relay.security == "tls":
            endpoint = wrapClientTLS(client_tls_options(relay), endpoint)
        return connectProtocol(endpoint, protocol)

    return connect


def start_tls(relay: RelayConfig) -> Callable[[SMTPClientProtocol], None]:
    def switch(protocol: SMTPClientProtocol) -> None:
        from smtpmailer.delivery.tls import client_tls_options

        transport: Any = protocol.transport
        transport.startTLS(client_tls_options(relay))

    return switch


def lease_seconds(config: Config) -> float:
    """Long enough for any attempt to end by its own timeouts before the lease runs out."""
    slowest = max(relay.timeout for relay in config.relays)
    return max(600.0, 20 * slowest)


class RateLimiter:
    """Spaces messages evenly: ``100/m`` lets one start every 0.6 s."""

    def __init__(self, clock: IReactorTime, rate: tuple[int, float] | None) -> None:
        self._clock = clock
        self.interval = rate[1] / rate[0] if rate else 0.0
        self._next = 0.0

    def delay(self) -> float:
        if not self.interval:
            return 0.0
        now = self._clock.seconds()
        start = max(self._next, now)
        self._next = start + self.interval
        return start - now


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


class DeliveryService(Service):
    """Delivers leased messages; records every outcome through the QueueWriter."""

    name = "delivery"

    def __init__(
        self,
        config: Config,
        writer: QueueWriter,
        release: Callable[[list[Lease]], Deferred[Any]],
        clock: IReactorTime,
        connector: Connector | None = None,
        blocking: Runner | None = None,
        helo_name: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self._writer = writer
        self._release = release
        self._clock = clock
        self._connector = connector
        self._blocking = blocking
        self._helo = helo_name or socket.gethostname()
        self._pending: deque[Lease] = deque()
        self._idle: deque[tuple[Deferred[Lease | None], IDelayedCall]] = deque()
        self._workers = 0
        self._working = 0
        self._sessions: set[Session] = set()
        self._stopping = False
        self.immediate = False
        self._rate_waits: set[Deferred[None]] = set()
        self._stopped_waiters: list[Deferred[None]] = []
        self._limiter = RateLimiter(clock, config.relays[0].rate_limit)
        self.on_capacity: Callable[[], None] = lambda: None
        self.metrics = metrics
        self.relays: dict[str, RelayState] = {}
        self.last_success: float | None = None
        self.lease_seconds = lease_seconds(config)
        self.counters: Counter[str] = Counter()
        if config.relays[0].transport == "maildir":
            assert config.relays[0].path
            ensure_maildir(config.relays[0].path)

    # --- what the poller sees ---

    @property
    def max_connections(self) -> int:
        return self.config.relays[0].max_connections

    def capacity(self) -> int:
        """How many more leases are welcome: enough to keep every connection busy, but no
        more than the rate limit lets start within half a lease (a lease that ran out while
        its message waited here would let the poller hand the message out twice)."""
        if self._stopping or not self.running:
            return 0
        target = max(self.config.queue.batch_size, 2 * self.max_connections)
        if self._limiter.interval:
            startable = int(self.lease_seconds / 2 / self._limiter.interval)
            target = min(target, max(1, startable))
        return max(0, target - len(self._pending) - self._working)

    @property
    def busy(self) -> int:
        return len(self._pending) + self._working

    def submit(self, leases: list[Lease]) -> None:
        for lease in leases:
            if self._idle:
                waiter, timer = self._idle.popleft()
                timer.cancel()
                self._working += 1
                waiter.callback(lease)
            else:
                self._pending.append(lease)
        self._dispatch()

    # --- workers ---

    def _dispatch(self) -> None:
        while self._pending and self._workers < self.max_connections and not self._stopping:
            lease = self._pending.popleft()
            self._working += 1
            self._workers += 1
            Deferred.fromCoroutine(self._work(lease)).addErrback(
                lambda f: log.failure("delivery worker crashed", failure=f)
            )

    def _take(self) -> Deferred[Lease | None]:
        """The next lease for an open connection: at once, or when one arrives, or None."""
        if self._stopping:
            return succeed(None)
        if self._pending:
            self._working += 1
            return succeed(self._pending.popleft())
        waiter: Deferred[Lease | None] = Deferred()

        def give_up() -> None:
            self._idle.remove(entry)
            waiter.callback(None)

        timer = self._clock.callLater(IDLE_TIMEOUT, give_up)
        entry = (waiter, timer)
        self._idle.append(entry)
        return waiter

    async def _open(self) -> Session:
        first = self.config.relays[0]
        if first.transport == "maildir":
            assert self._blocking is not None
            return _MaildirConnection(first, self._blocking)
        assert self._connector is not None
        problems = []
        for relay in self.config.relays:
            protocol = SMTPClientProtocol(self._clock, relay.timeout)
            try:
                await self._connector(relay, protocol)
                peer = protocol.transport.getPeer()  # type: ignore[union-attr]
                label = f"{relay.host}[{getattr(peer, 'host', '?')}]:{relay.port}"
                session = SMTPSession(protocol, relay, relay.helo or self._helo, start_tls(relay))
                connection = _SMTPConnection(session, label)
                self._sessions.add(connection)
                try:
                    await session.open()
                except BaseException:
                    self._sessions.discard(connection)
                    raise
                return connection
            except Exception as error:
                protocol.abort()
                problem = describe_error(error)
                self._relay_failed(relay.label, problem)
                problems.append(f"{relay.host}:{relay.port}: {problem}")
        raise SessionError("; ".join(problems))

    def relay_state(self, name: str) -> RelayState:
        if name not in self.relays:
            self.relays[name] = RelayState(name)
        return self.relays[name]

    def _relay_failed(self, name: str, problem: str) -> None:
        state = self.relay_state(name)
        state.last_error, state.last_error_at = problem, self._clock.seconds()
        if self.metrics is not None:
            self.metrics.connection_failures.labels(name).inc()

    def _connections_changed(self, name: str, delta: int) -> None:
        state = self.relay_state(name)
        state.connections += delta
        if self.metrics is not None:
            self.metrics.connections.labels(name).set(state.connections)

    async def _work(self, lease: Lease | None) -> None:
        connection: Session | None = None
        try:
            try:
                connection = await self._open()
            except Exception as error:
                assert lease is not None
                self._defer_waiting(lease, describe_error(error))
                return
            self._sessions.add(connection)
            self._connections_changed(connection.relay_name, +1)
            relays = self.config.relays
            limit = relays[0].max_messages_per_connection
            while lease is not None:
                if not await self._rate_wait():
                    # Stopping while the rate limit held this message back: give it back.
                    self._working -= 1
                    await self._release([lease])
                    break
                began = self._clock.seconds()
                try:
                    results = await connection.deliver(lease)
                    if self.metrics is not None:
                        self.metrics.delivery_seconds.labels(connection.relay_name).observe(
                            self._clock.seconds() - began
                        )
                except Exception as error:
                    if self.immediate:
                        # Cut off by SIGINT: not an attempt, back to the queue untouched.
                        self._working -= 1
                        await self._release([lease])
                        return
                    reason = describe_error(error)
                    self._finish(
                        lease,
                        self._all(lease, "deferred", reason),
                        connection.label,
                        connection.relay_name,
                    )
                    connection.abort()
                    return
                self._finish(lease, results, connection.label, connection.relay_name)
                lease = None
                if connection.delivered >= limit or self.config.relays != relays:
                    break  # renewed, or the relay settings changed under a reload
                lease = await self._take()
            await connection.quit()
        finally:
            if connection is not None:
                self._sessions.discard(connection)
                self._connections_changed(connection.relay_name, -1)
            self._workers -= 1
            self._dispatch()
            self._check_stopped()

    async def _rate_wait(self) -> bool:
        """Wait for the rate limit; False if the service stopped meanwhile."""
        wait = self._limiter.delay()
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

    @staticmethod
    def _all(lease: Lease, status: str, reason: str) -> tuple[RecipientResult, ...]:
        return tuple(RecipientResult(r, status, reason) for r in lease.recipients)

    def _defer_waiting(self, lease: Lease, reason: str) -> None:
        """No relay could be reached: every message waiting now would meet the same fate."""
        relay = self.config.relays[0]
        waiting = [lease, *self._pending]
        self._working += len(self._pending)
        self._pending.clear()
        for each in waiting:
            self._finish(
                each, self._all(each, "deferred", reason), f"{relay.host}[none]", relay.label
            )

    def _finish(
        self, lease: Lease, results: tuple[RecipientResult, ...], relay: str, relay_name: str
    ) -> None:
        self._working -= 1
        sent_at = self._clock.seconds()
        recording = self._writer.record(Outcome(lease, results, relay))
        recording.addCallback(self._log_outcome, sent_at, relay_name)
        recording.addErrback(
            lambda f: log.failure("could not record the outcome of {id}", failure=f, id=lease.id)
        )
        if len(self._pending) < self.max_connections:
            self.on_capacity()

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
            self.metrics.recipients.labels(relay_name, status).inc()

    # --- reload ---

    def reconfigure(self, config: Config) -> None:
        """New relay settings apply to new connections; connections open now finish the
        message they carry on the old settings, then close instead of taking another."""
        old = self.config
        self.config = config
        if old.relays[0].rate_limit != config.relays[0].rate_limit:
            self._limiter = RateLimiter(self._clock, config.relays[0].rate_limit)
        self.lease_seconds = lease_seconds(config)
        if config.relays[0].transport == "maildir" and config.relays[0].path:
            ensure_maildir(config.relays[0].path)
        if old.relays != config.relays:
            while self._idle:  # idle connections to the old relay: close them now
                waiter, timer = self._idle.popleft()
                timer.cancel()
                waiter.callback(None)
        self._dispatch()

    # --- service ---

    def stopService(self) -> Deferred[None]:
        """Take no new work, give back what has not started, bound the rest by
        ``shutdown_timeout``, and return once every outcome is committed."""
        super().stopService()
        self._stopping = True
        unstarted, self._pending = list(self._pending), deque()
        released = self._release(unstarted) if unstarted else succeed(None)
        while self._idle:
            waiter, timer = self._idle.popleft()
            timer.cancel()
            waiter.callback(None)
        for waiting in list(self._rate_waits):
            waiting.cancel()
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
        finished.addCallback(lambda _: self._writer.flush())
        return finished

    def _abort_all(self) -> None:
        if self._sessions and not self.immediate:
            log.warn("shutdown_timeout reached: aborting {n} connection(s)", n=len(self._sessions))
        for connection in list(self._sessions):
            connection.abort()

    def _check_stopped(self) -> None:
        if self._stopping and self._workers == 0:
            waiters, self._stopped_waiters = self._stopped_waiters, []
            for waiter in waiters:
                waiter.callback(None)
