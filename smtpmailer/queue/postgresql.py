"""The shared queue: one PostgreSQL database, several daemons (nodes) on it.

The same states, rules and answers as the SQLite queue (the contract suite runs on both);
what differs is who may hold a lease. Each lease carries the node that took it and a
token. Nodes heartbeat (``heartbeat``); a node silent for ``lease_timeout`` loses its
leases to the others at their next ``lease``, and an outcome whose token no longer matches
is ignored (stale), never applied twice. Due mail is taken with FOR UPDATE SKIP LOCKED, so
nodes leasing at once never wait on each other or take the same message. Every commit that
adds due mail sends one NOTIFY, which wakes idle nodes (polling stays the fallback).

psycopg 3 (its binary wheel) in autocommit mode with explicit transactions; the store is
used from one thread at a time (the daemon's queue thread), like the SQLite one.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import attrs

from smtpmailer.queue import (
    ACTIVE,
    DEFERRED,
    FAILED,
    HELD,
    PENDING_STATES,
    QUEUED,
    RCPT_FAILED,
    RCPT_PENDING,
    RCPT_SENT,
    SENT,
    STATES,
    Attempt,
    Lease,
    MessageInfo,
    NewMessage,
    NoSuchMessage,
    Outcome,
    QueueError,
    QueueFull,
    Recipient,
    Recorded,
    StoreBusy,
    WrongState,
    decode_replies,
    parse_origin,
    rules,
    summary,
)
from smtpmailer.queue.events import events_of, outcome_events
from smtpmailer.queue.ids import new_lease_token, new_message_id
from smtpmailer.queue.retry import RetryPolicy

SCHEMA_VERSION = 1
CHANNEL = "smtpmailer_wakeup"
# Two nodes starting together create the schema one after the other.
SCHEMA_LOCK = 0x736D74706D  # "smtpm"
SCHEMA = """
CREATE TABLE IF NOT EXISTS smtpmailer_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    sender TEXT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    age_from DOUBLE PRECISION NOT NULL,
    next_attempt DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    lease_node TEXT,
    last_error TEXT,
    size INTEGER NOT NULL,
    updated DOUBLE PRECISION NOT NULL,
    relay TEXT,
    relay_address TEXT,
    meta TEXT
);
ALTER TABLE messages ADD COLUMN IF NOT EXISTS meta TEXT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS subject TEXT;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS header_id TEXT;
CREATE INDEX IF NOT EXISTS messages_header_id ON messages (header_id) WHERE header_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_sender_lower ON messages (lower(sender));
CREATE INDEX IF NOT EXISTS messages_run_order ON messages (state, priority DESC, created, id);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, next_attempt);
CREATE INDEX IF NOT EXISTS messages_created ON messages (created, id);
CREATE INDEX IF NOT EXISTS messages_updated ON messages (state, updated);
CREATE INDEX IF NOT EXISTS messages_lease_node ON messages (lease_node) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    last_error TEXT,
    PRIMARY KEY (message_id, position)
);
CREATE INDEX IF NOT EXISTS recipients_address_lower ON recipients (lower(address));
CREATE TABLE IF NOT EXISTS bodies (
    message_id TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
    data BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    seconds DOUBLE PRECISION,
    relay TEXT,
    relay_address TEXT,
    replies TEXT NOT NULL,
    PRIMARY KEY (message_id, number)
);
CREATE TABLE IF NOT EXISTS events (
    seq BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_cursors (name TEXT PRIMARY KEY, seq BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    name TEXT PRIMARY KEY,
    heartbeat DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS messages_accepted;
"""
_INFO = (
    "id, state, priority, sender, created, next_attempt, attempts, size, last_error,"
    " relay, relay_address, meta, subject, header_id"
)

F = TypeVar("F", bound=Callable[..., Any])


def _driver_errors(method: F) -> F:
    """psycopg's errors leave as the queue's own: the server gone is a temporary error
    (StoreBusy: submissions get 451/75/503 and are tried again), anything else QueueError."""
    import psycopg

    def translate(self: PostgreSQLQueue, error: psycopg.Error) -> QueueError:
        self._broken = isinstance(error, psycopg.OperationalError)
        text = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, psycopg.OperationalError):
            return StoreBusy(f"queue database unavailable: {text}")
        return QueueError(f"queue database: {text}")

    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(self: PostgreSQLQueue, *args: Any, **kwargs: Any) -> Any:
            try:
                yield from method(self, *args, **kwargs)
            except psycopg.Error as error:
                raise translate(self, error) from None

        return generator  # type: ignore[return-value]

    @functools.wraps(method)
    def guarded(self: PostgreSQLQueue, *args: Any, **kwargs: Any) -> Any:
        if self._broken:
            self._reconnect()
        try:
            return method(self, *args, **kwargs)
        except psycopg.Error as error:
            raise translate(self, error) from None

    return guarded  # type: ignore[return-value]


class PostgreSQLQueue:
    """QueueStore on PostgreSQL, shared by every node that names the same database."""

    def __init__(
        self,
        dsn: str,
        node: str | None = None,
        lease_timeout: float = 60.0,
        read_only: bool = False,
        connect_timeout: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.node = node or socket.gethostname()
        self.lease_timeout = lease_timeout
        self.read_only = read_only
        self._connect_timeout = connect_timeout
        self._broken = False
        self._notify = False
        self._events = False  # keep_events(): outcomes also write events for webhooks
        self._claimed: set[str] = set()  # webhooks this connection holds the lock of
        try:
            self._db = self._connect()
            if not read_only:
                self._create_schema()
            self._check_version()
        except Exception as error:
            import psycopg

            if isinstance(error, psycopg.Error):
                text = " ".join(str(error).split())
                raise QueueError(f"cannot open the queue database: {text}") from None
            raise

    # --- connection and schema ---

    def _connect(self) -> Any:
        import psycopg

        return psycopg.connect(
            self.dsn,
            autocommit=True,
            connect_timeout=max(1, int(self._connect_timeout)),
            application_name=f"smtpmailer {self.node}",
        )

    def _reconnect(self) -> None:
        """After the server went away: a new connection, or StoreBusy again."""
        import psycopg

        try:
            self._db.close()
        except psycopg.Error:
            pass
        self._claimed.clear()  # session locks go with the old connection
        try:
            self._db = self._connect()
        except psycopg.Error as error:
            text = " ".join(str(error).split())
            raise StoreBusy(f"queue database unavailable: {text}") from None
        self._broken = False

    def _create_schema(self) -> None:
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._db.execute(SCHEMA)
            self._db.execute(
                "INSERT INTO smtpmailer_meta (key, value) VALUES ('schema_version', %s)"
                " ON CONFLICT (key) DO NOTHING",
                (str(SCHEMA_VERSION),),
            )

    def _check_version(self) -> None:
        row = self._db.execute(
            "SELECT value FROM smtpmailer_meta WHERE key = 'schema_version'"
        ).fetchone()
        version = int(row[0]) if row else 0
        if version != SCHEMA_VERSION:
            raise QueueError(
                f"queue database has schema version {version}, this smtpmailer knows "
                f"{SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self._db.close()

    def _transaction(self) -> Any:
        """One transaction; the commits that add due mail wake idle nodes with one NOTIFY."""
        store = self

        class Transaction:
            def __enter__(self) -> Any:
                store._notify = False
                self._inner = store._db.transaction()
                self._inner.__enter__()
                return store._db

            def __exit__(self, kind: Any, value: Any, trace: Any) -> Any:
                if kind is None and store._notify:
                    try:
                        store._db.execute("SELECT pg_notify(%s, '')", (CHANNEL,))
                    except BaseException as error:  # roll back, then say why
                        self._inner.__exit__(type(error), error, error.__traceback__)
                        raise
                return self._inner.__exit__(kind, value, trace)

        return Transaction()

    # --- nodes ---

    @_driver_errors
    def heartbeat(self, now: float) -> None:
        """This node is alive: its leases stay its own while it says so."""
        self._db.execute(
            "INSERT INTO nodes (name, heartbeat, started) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO UPDATE SET heartbeat = excluded.heartbeat",
            (self.node, now, now),
        )

    @_driver_errors
    def nodes(self, now: float) -> list[dict[str, Any]]:
        """Every node that ever heartbeat here, with its age and the leases it holds."""
        rows = self._db.execute(
            "SELECT n.name, n.heartbeat, n.started,"
            " (SELECT count(*) FROM messages m WHERE m.state = 'active'"
            "  AND m.lease_node = n.name)"
            " FROM nodes n ORDER BY n.name"
        ).fetchall()
        return [
            {
                "node": name,
                "heartbeat_age": round(max(0.0, now - beat), 3),
                "alive": now - beat < self.lease_timeout,
                "leases": int(leases),
                "started": started,
            }
            for name, beat, started, leases in rows
        ]

    # --- input ---

    def enqueue(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        priority: int,
        now: float,
        max_queue_size: int,
        meta: str = "",
    ) -> str:
        (result,) = self.enqueue_many(
            [NewMessage(sender, tuple(recipients), data, priority, meta=meta)], now, max_queue_size
        )
        if isinstance(result, QueueError):
            raise result
        return result

    def enqueue_many(
        self, items: Sequence[NewMessage], now: float, max_queue_size: int
    ) -> list[str | QueueError]:
        return self.enqueue_and_lease(items, now, max_queue_size, 0, 0.0)[0]

    @_driver_errors
    def enqueue_and_lease(
        self,
        items: Sequence[NewMessage],
        now: float,
        max_queue_size: int,
        lease_limit: int,
        lease_seconds: float,
    ) -> tuple[list[str | QueueError], list[Lease]]:
        with self._transaction() as db:
            return self._enqueue(db, items, now, max_queue_size, lease_limit, lease_seconds)

    @_driver_errors
    def record_and_enqueue(
        self,
        outcomes: Sequence[Outcome],
        policy: RetryPolicy,
        items: Sequence[NewMessage],
        max_queue_size: int,
        lease_limit: int,
        lease_seconds: float,
        now: float,
        lease_due: bool = False,
    ) -> tuple[list[Recorded], list[str | QueueError], list[Lease]]:
        with self._transaction() as db:
            recorded = self._record(db, outcomes, now, policy) if outcomes else []
            results, leases = (
                self._enqueue(
                    db, items, now, max_queue_size, 0 if lease_due else lease_limit, lease_seconds
                )
                if items
                else ([], [])
            )
            if lease_due and lease_limit > 0:
                leases = self._lease(db, now, lease_limit, lease_seconds)
        return recorded, results, leases

    def _enqueue(
        self,
        db: Any,
        items: Sequence[NewMessage],
        now: float,
        max_queue_size: int,
        lease_limit: int,
        lease_seconds: float,
    ) -> tuple[list[str | QueueError], list[Lease]]:
        (pending,) = db.execute(
            "SELECT count(*) FROM messages WHERE state = ANY(%s)", (list(PENDING_STATES),)
        ).fetchone()
        if lease_limit > 0:
            waiting = db.execute("SELECT 1 FROM messages WHERE state = %s LIMIT 1", (QUEUED,))
            if waiting.fetchone():  # older mail is waiting: it goes first, through a poll
                lease_limit = 0
        ranked = sorted(range(len(items)), key=lambda index: -items[index].priority)
        to_lease = set(ranked[:lease_limit])
        results: list[str | QueueError] = []
        leases: list[Lease] = []
        verdicts = rules.admit(items, pending, max_queue_size)
        for index, (item, refusal) in enumerate(zip(items, verdicts, strict=True)):
            if refusal is not None:
                results.append((QueueError if not item.recipients else QueueFull)(refusal))
                continue
            lease = (new_lease_token(), now + lease_seconds) if index in to_lease else None
            message_id = self._insert(db, item, lease, now)
            results.append(message_id)
            if lease is None:
                self._notify = True
            else:
                leases.append(
                    Lease(
                        id=message_id,
                        token=lease[0],
                        sender=item.sender,
                        recipients=tuple(item.recipients),
                        data=item.data,
                        priority=item.priority,
                        attempts=0,
                        created=now,
                        due=now,
                        meta=item.meta,
                    )
                )
        leases.sort(key=lambda lease: -lease.priority)
        return results, leases

    def _insert(
        self, db: Any, item: NewMessage, lease: tuple[str, float] | None, now: float
    ) -> str:
        state, token, next_attempt = (ACTIVE, *lease) if lease else (QUEUED, None, now)
        node = self.node if lease else None
        for _ in range(5):
            message_id = new_message_id(now)
            inserted = db.execute(
                "INSERT INTO messages (id, state, priority, sender, created, age_from,"
                " next_attempt, lease_token, lease_node, size, updated, meta, subject, header_id)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (id) DO NOTHING",
                (
                    message_id,
                    state,
                    item.priority,
                    item.sender,
                    now,
                    now,
                    next_attempt,
                    token,
                    node,
                    len(item.data),
                    now,
                    item.meta or None,
                    *summary(item.data),
                ),
            )
            if inserted.rowcount == 1:
                break
        else:
            raise QueueError("could not make a unique message id")
        with db.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO recipients (message_id, position, address, state)"
                " VALUES (%s, %s, %s, %s)",
                [
                    (message_id, position, address, RCPT_PENDING)
                    for position, address in enumerate(item.recipients)
                ],
            )
        db.execute("INSERT INTO bodies (message_id, data) VALUES (%s, %s)", (message_id, item.data))
        db.execute("SELECT nextval('messages_accepted')")
        return message_id

    # --- the delivery loop ---

    @_driver_errors
    def lease(self, now: float, limit: int, lease_seconds: float) -> list[Lease]:
        """Up to ``limit`` due messages, highest priority first, oldest first. Leases whose
        time ran out, or whose node stopped heartbeating, come back first."""
        with self._transaction() as db:
            return self._lease(db, now, limit, lease_seconds)

    def _lease(self, db: Any, now: float, limit: int, lease_seconds: float) -> list[Lease]:
        db.execute(
            "UPDATE messages SET state = %s, lease_token = NULL, lease_node = NULL"
            " WHERE state = %s AND (next_attempt <= %s OR lease_node IN"
            " (SELECT name FROM nodes WHERE name != %s AND heartbeat < %s))",
            (QUEUED, ACTIVE, now, self.node, now - self.lease_timeout),
        )
        db.execute(
            "UPDATE messages SET state = %s WHERE state = %s AND next_attempt <= %s",
            (QUEUED, DEFERRED, now),
        )
        rows = db.execute(
            "UPDATE messages SET state = %s, lease_token = md5(random()::text || id),"
            " lease_node = %s, next_attempt = %s, updated = %s"
            " WHERE id IN (SELECT id FROM messages WHERE state = %s"
            "  ORDER BY priority DESC, created, id LIMIT %s FOR UPDATE SKIP LOCKED)"
            " RETURNING id, lease_token, sender, priority, attempts, created, meta",
            (ACTIVE, self.node, now + lease_seconds, now, QUEUED, limit),
        ).fetchall()
        if not rows:
            return []
        ids = [row[0] for row in rows]
        recipients: dict[str, list[str]] = {i: [] for i in ids}
        for message_id, address in db.execute(
            "SELECT message_id, address FROM recipients WHERE message_id = ANY(%s)"
            " AND state = %s ORDER BY message_id, position",
            (ids, RCPT_PENDING),
        ):
            recipients[message_id].append(address)
        bodies = dict(
            db.execute(
                "SELECT message_id, data FROM bodies WHERE message_id = ANY(%s)", (ids,)
            ).fetchall()
        )
        rows.sort(key=lambda row: (-row[3], row[5], row[0]))
        return [
            Lease(
                id=row[0],
                token=row[1],
                sender=row[2],
                recipients=tuple(recipients[row[0]]),
                data=bytes(bodies[row[0]]),
                priority=row[3],
                attempts=row[4],
                created=row[5],
                due=now,
                meta=row[6] or "",
            )
            for row in rows
        ]

    @_driver_errors
    def record(
        self, outcomes: Sequence[Outcome], now: float, policy: RetryPolicy
    ) -> list[Recorded]:
        with self._transaction() as db:
            return self._record(db, outcomes, now, policy)

    def _record(
        self, db: Any, outcomes: Sequence[Outcome], now: float, policy: RetryPolicy
    ) -> list[Recorded]:
        """Outcomes whose every recipient got its 2xx (the common case) a few statements
        for the whole batch; the rest one by one. Each statement is a round trip to the
        server: one by one, a batch of 200 would take over a thousand."""
        seen: dict[str, int] = {}
        for outcome in outcomes:
            seen[outcome.lease.id] = seen.get(outcome.lease.id, 0) + 1
        simple = [
            index
            for index, outcome in enumerate(outcomes)
            if seen[outcome.lease.id] == 1
            and outcome.results
            and all(result.status == RCPT_SENT for result in outcome.results)
            and sorted(result.address for result in outcome.results)
            == sorted(outcome.lease.recipients)
        ]
        recorded: list[Recorded | None] = [None] * len(outcomes)
        if simple:
            for index, done in zip(
                simple, self._record_all_sent(db, [outcomes[i] for i in simple], now), strict=True
            ):
                recorded[index] = done
        for index, outcome in enumerate(outcomes):
            if recorded[index] is None:
                recorded[index] = self._record_one(db, outcome, now, policy)
        return [done for done in recorded if done is not None]

    def _record_all_sent(self, db: Any, outcomes: Sequence[Outcome], now: float) -> list[Recorded]:
        ids = [outcome.lease.id for outcome in outcomes]
        rows = {
            row[0]: row[1:]
            for row in db.execute(
                "SELECT id, state, lease_token, attempts FROM messages WHERE id = ANY(%s)"
                " FOR UPDATE",
                (ids,),
            )
        }
        live = [
            o.lease.id
            for o in outcomes
            if o.lease.id in rows
            and rows[o.lease.id][0] == ACTIVE
            and rows[o.lease.id][1] == o.lease.token
        ]
        failed: set[str] = set()
        if live:
            db.execute(
                "UPDATE recipients SET state = %s, last_error = NULL"
                " WHERE message_id = ANY(%s) AND state = %s",
                (RCPT_SENT, live, RCPT_PENDING),
            )
            failed = {
                message_id
                for (message_id,) in db.execute(
                    "SELECT DISTINCT message_id FROM recipients"
                    " WHERE message_id = ANY(%s) AND state = %s",
                    (live, RCPT_FAILED),
                )
            }
            where = {o.lease.id: (o.via or None, o.relay or None) for o in outcomes}
            groups: dict[tuple[str, str | None, str | None], list[str]] = {}
            for message_id in live:
                state = rules.all_sent_state(message_id in failed)
                groups.setdefault((state, *where[message_id]), []).append(message_id)
            for (state, via, relay), group in groups.items():
                db.execute(
                    "UPDATE messages SET state = %s, attempts = attempts + 1,"
                    " next_attempt = %s, lease_token = NULL, lease_node = NULL,"
                    " last_error = NULL, updated = %s, relay = %s, relay_address = %s"
                    " WHERE id = ANY(%s)",
                    (state, now, now, via, relay, group),
                )
            sent = [message_id for message_id in live if message_id not in failed]
            if sent:
                db.execute("DELETE FROM bodies WHERE message_id = ANY(%s)", (sent,))
            taken = set(live)
            kept = [o for o in outcomes if o.lease.id in taken]
            self._keep_attempts(db, kept, now)
            if self._events:  # the attempt each was: one more than the row said
                self._add_events(db, events_of(kept, lambda o: rows[o.lease.id][2] + 1, now), now)
        done = []
        for outcome in outcomes:
            row = rows.get(outcome.lease.id)
            if outcome.lease.id not in live:
                done.append(
                    Recorded(
                        outcome, row[0] if row else "deleted", row[2] if row else 0, stale=True
                    )
                )
                continue
            assert row is not None
            state = rules.all_sent_state(outcome.lease.id in failed)
            done.append(Recorded(outcome, state, row[2] + 1))
        return done

    def _record_one(self, db: Any, outcome: Outcome, now: float, policy: RetryPolicy) -> Recorded:
        lease = outcome.lease
        row = db.execute(
            "SELECT state, lease_token, attempts, age_from FROM messages WHERE id = %s FOR UPDATE",
            (lease.id,),
        ).fetchone()
        if row is None or row[0] != ACTIVE or row[1] != lease.token:
            # Taken over by another node, or deleted: this attempt's word no longer counts.
            return Recorded(outcome, row[0] if row else "deleted", row[2] if row else 0, stale=True)
        for result in outcome.results:
            state, error = rules.recipient_update(result)
            db.execute(
                "UPDATE recipients SET state = %s, last_error = %s"
                " WHERE message_id = %s AND address = %s AND state = %s",
                (state, error, lease.id, result.address, RCPT_PENDING),
            )
        pending = [
            address
            for (address,) in db.execute(
                "SELECT address FROM recipients WHERE message_id = %s AND state = %s",
                (lease.id, RCPT_PENDING),
            )
        ]
        any_failed = db.execute(
            "SELECT 1 FROM recipients WHERE message_id = %s AND state = %s LIMIT 1",
            (lease.id, RCPT_FAILED),
        ).fetchone()
        verdict = rules.judge(
            attempts_before=row[2],
            age_from=row[3],
            results=outcome.results,
            pending=pending,
            any_failed=any_failed is not None,
            policy=policy,
            now=now,
        )
        for address, reason in verdict.expired:
            db.execute(
                "UPDATE recipients SET state = %s,"
                " last_error = coalesce(last_error || '; ', '') || %s"
                " WHERE message_id = %s AND address = %s AND state = %s",
                (RCPT_FAILED, reason, lease.id, address, RCPT_PENDING),
            )
        db.execute(
            "UPDATE messages SET state = %s, attempts = %s, next_attempt = %s,"
            " lease_token = NULL, lease_node = NULL, last_error = %s, updated = %s,"
            " relay = %s, relay_address = %s WHERE id = %s",
            (
                verdict.state,
                verdict.attempts,
                verdict.next_attempt,
                verdict.last_error,
                now,
                outcome.via or None,
                outcome.relay or None,
                lease.id,
            ),
        )
        if verdict.state == SENT:
            db.execute("DELETE FROM bodies WHERE message_id = %s", (lease.id,))
        self._keep_attempts(db, [outcome], now)
        if self._events:
            self._add_events(
                db, outcome_events(outcome, verdict.attempts, now, verdict.expired), now
            )
        return Recorded(outcome, verdict.state, verdict.attempts, verdict.expired)

    @staticmethod
    def _add_events(db: Any, rows: Sequence[tuple[str, str, str]], now: float) -> None:
        if rows:
            with db.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO events (at, kind, message_id, body) VALUES (%s, %s, %s, %s)",
                    [(now, *row) for row in rows],
                )

    # --- events for webhooks ---

    def keep_events(self, on: bool) -> None:
        self._events = on

    @_driver_errors
    def add_event(self, kind: str, message_id: str, body: str, now: float) -> None:
        with self._transaction() as db:
            self._add_events(db, [(kind, message_id, body)], now)

    @_driver_errors
    def events_after(self, seq: int, limit: int) -> list[tuple[int, str, str]]:
        return [
            (int(row[0]), row[1], row[2])
            for row in self._db.execute(
                "SELECT seq, kind, body FROM events WHERE seq > %s ORDER BY seq LIMIT %s",
                (seq, limit),
            )
        ]

    @_driver_errors
    def webhook_cursor(self, name: str) -> int:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO webhook_cursors (name, seq)"
                " SELECT %s, coalesce(max(seq), 0) FROM events ON CONFLICT (name) DO NOTHING",
                (name,),
            )
            (seq,) = db.execute(
                "SELECT seq FROM webhook_cursors WHERE name = %s", (name,)
            ).fetchone()
            return int(seq)

    @_driver_errors
    def claim_webhook(self, name: str) -> bool:
        """Whether this node is the one that tells webhook ``name`` (a session advisory
        lock: one node at a time, taken over by another when this one's connection ends)."""
        if name in self._claimed:
            return True
        key = int.from_bytes(
            hashlib.sha256(f"webhook:{name}".encode()).digest()[:8], "big", signed=True
        )
        (won,) = self._db.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if won:
            self._claimed.add(name)
        return bool(won)

    @_driver_errors
    def set_webhook_cursor(self, name: str, seq: int) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE webhook_cursors SET seq = greatest(seq, %s) WHERE name = %s", (seq, name)
            )

    @_driver_errors
    def prune_events(self, names: Sequence[str]) -> tuple[int, int]:
        with self._transaction() as db:
            (oldest,) = db.execute(
                "SELECT min(seq) FROM webhook_cursors WHERE name = ANY(%s)", (list(names),)
            ).fetchone()
            (newest,) = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            gone = db.execute(
                "DELETE FROM events WHERE seq <= %s",
                (oldest if oldest is not None else newest,),
            ).rowcount
            db.execute("DELETE FROM webhook_cursors WHERE NOT (name = ANY(%s))", (list(names),))
            return int(gone), int(newest)

    @staticmethod
    def _keep_attempts(db: Any, outcomes: Sequence[Outcome], now: float) -> None:
        """As SQLite's: numbered on from the last one kept, the oldest but the first
        forgotten past KEPT_ATTEMPTS. The messages' rows are locked by this transaction."""
        if not outcomes:
            return
        last = dict(
            db.execute(
                "SELECT message_id, max(number) FROM attempts WHERE message_id = ANY(%s)"
                " GROUP BY message_id",
                ([o.lease.id for o in outcomes],),
            ).fetchall()
        )
        rows, forget = rules.number_attempts(outcomes, last, now)
        with db.cursor() as cursor:
            if forget:
                cursor.executemany(
                    "DELETE FROM attempts WHERE message_id = %s AND number BETWEEN %s AND %s",
                    forget,
                )
            cursor.executemany(
                "INSERT INTO attempts (message_id, number, at, seconds, relay, relay_address,"
                " replies) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                rows,
            )

    @_driver_errors
    def release_leases(self, leases: Sequence[Lease]) -> int:
        released = 0
        with self._transaction() as db:
            for lease in leases:
                released += db.execute(
                    "UPDATE messages SET state = %s, lease_token = NULL, lease_node = NULL"
                    " WHERE id = %s AND state = %s AND lease_token = %s",
                    (QUEUED, lease.id, ACTIVE, lease.token),
                ).rowcount
            self._notify = released > 0
        return released

    @_driver_errors
    def recover_leases(self) -> int:
        """At start: this node's own leases only (the others' belong to live nodes, or
        are taken over when theirs stop heartbeating)."""
        with self._transaction() as db:
            reclaimed: int = db.execute(
                "UPDATE messages SET state = %s, lease_token = NULL, lease_node = NULL"
                " WHERE state = %s AND lease_node = %s",
                (QUEUED, ACTIVE, self.node),
            ).rowcount
            self._notify = reclaimed > 0
        return reclaimed

    # --- inspection ---

    @_driver_errors
    def counts(self) -> dict[str, int]:
        counts = {state: 0 for state in STATES}
        for state, n in self._db.execute("SELECT state, count(*) FROM messages GROUP BY state"):
            counts[state] = int(n)
        (accepted, called) = self._db.execute(
            "SELECT last_value, is_called FROM messages_accepted"
        ).fetchone()
        counts["accepted"] = int(accepted) if called else 0
        return counts

    @_driver_errors
    def oldest_pending(self) -> float | None:
        (oldest,) = self._db.execute(
            "SELECT min(created) FROM messages WHERE state = ANY(%s)", (list(PENDING_STATES),)
        ).fetchone()
        return float(oldest) if oldest is not None else None

    @_driver_errors
    def recent_outcomes(self, since: float) -> dict[str, int]:
        found = {state: 0 for state in (SENT, FAILED, DEFERRED)}
        for state, n in self._db.execute(
            "SELECT state, count(*) FROM messages WHERE state = ANY(%s) AND updated >= %s"
            " GROUP BY state",
            (list(found), since),
        ):
            found[state] = int(n)
        return found

    @_driver_errors
    def page(
        self, state: str | None, limit: int, after: tuple[float, str] | None = None
    ) -> list[MessageInfo]:
        return list(self.messages(state, limit, after))

    @_driver_errors
    def recent_problems(self, limit: int) -> list[MessageInfo]:
        rows = self._db.execute(
            f"SELECT {_INFO} FROM messages WHERE state = ANY(%s) ORDER BY updated DESC LIMIT %s",
            ([FAILED, DEFERRED], limit),
        ).fetchall()
        return self._infos(rows)

    @_driver_errors
    def messages(
        self,
        state: str | None = None,
        limit: int | None = None,
        after: tuple[float, str] | None = None,
    ) -> Iterator[MessageInfo]:
        """Oldest first, a page at a time: a million messages are never in memory at once."""
        page = 500 if limit is None else min(limit, 500)
        left = limit
        while left is None or left > 0:
            where: list[str] = []
            args: list[object] = []
            if state:
                where.append("state = %s")
                args.append(state)
            if after is not None:
                where.append("(created, id) > (%s, %s)")
                args += [after[0], after[1]]
            query = f"SELECT {_INFO} FROM messages"
            if where:
                query += " WHERE " + " AND ".join(where)
            wanted = page if left is None else min(page, left)
            query += " ORDER BY created, id LIMIT %s"
            rows = self._db.execute(query, (*args, wanted)).fetchall()
            yield from self._infos(rows)
            if len(rows) < wanted:
                return
            after = (rows[-1][4], rows[-1][0])
            if left is not None:
                left -= len(rows)

    def _infos(self, rows: Sequence[Any]) -> list[MessageInfo]:
        ids = [row[0] for row in rows]
        recipients: dict[str, list[Recipient]] = {i: [] for i in ids}
        if ids:
            for message_id, address, state, error in self._db.execute(
                "SELECT message_id, address, state, last_error FROM recipients"
                " WHERE message_id = ANY(%s) ORDER BY message_id, position",
                (ids,),
            ):
                recipients[message_id].append(Recipient(address, state, error))
        return [
            MessageInfo(
                id=row[0],
                state=row[1],
                priority=row[2],
                sender=row[3],
                recipients=tuple(recipients[row[0]]),
                created=row[4],
                next_attempt=row[5],
                attempts=row[6],
                size=row[7],
                last_error=row[8],
                relay=row[9],
                relay_address=row[10],
                origin=parse_origin(row[11]),
                subject=row[12],
                header_id=row[13],
            )
            for row in rows
        ]

    @_driver_errors
    def search(
        self, text: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[MessageInfo]:
        text = text.strip()
        if not text:
            return []
        found = [
            "SELECT id FROM messages WHERE id = %(text)s",
            "SELECT id FROM messages WHERE lower(sender) = lower(%(text)s)",
            "SELECT message_id FROM recipients WHERE lower(address) = lower(%(text)s)",
            "SELECT id FROM messages WHERE header_id = %(header_id)s",
        ]
        if len(text) >= 2:
            found.append("SELECT id FROM messages WHERE subject ILIKE %(like)s")
        like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = f"SELECT {_INFO} FROM messages WHERE id IN ({' UNION '.join(found)})"
        args: dict[str, object] = {"text": text, "header_id": text.strip("<>"), "like": like}
        if before is not None:
            query += " AND (created < %(created)s OR (created = %(created)s AND id < %(id)s))"
            args.update(created=before[0], id=before[1])
        query += " ORDER BY created DESC, id DESC LIMIT %(limit)s"
        args["limit"] = limit
        return self._infos(self._db.execute(query, args).fetchall())

    @_driver_errors
    def show(self, message_id: str) -> MessageInfo:
        rows = self._db.execute(
            f"SELECT {_INFO} FROM messages WHERE id = %s", (message_id,)
        ).fetchall()
        if not rows:
            raise NoSuchMessage(f"no message {message_id} in the queue")
        history = tuple(
            Attempt(number, at, seconds, relay, address, decode_replies(replies))
            for number, at, seconds, relay, address, replies in self._db.execute(
                "SELECT number, at, seconds, relay, relay_address, replies FROM attempts"
                " WHERE message_id = %s ORDER BY number",
                (message_id,),
            )
        )
        return attrs.evolve(self._infos(rows)[0], history=history)

    @_driver_errors
    def mark_delay_warned(self, message_id: str, now: float) -> bool:
        with self._transaction() as db:
            marked = db.execute(
                "UPDATE messages SET meta = (coalesce(meta, '{}')::jsonb"
                " || jsonb_build_object('delay_warned', %s::float8))::text"
                " WHERE id = %s AND (meta IS NULL OR NOT (meta::jsonb ? 'delay_warned'))",
                (now, message_id),
            )
            return bool(marked.rowcount == 1)

    @_driver_errors
    def body(self, message_id: str) -> bytes:
        row = self._db.execute(
            "SELECT data FROM bodies WHERE message_id = %s", (message_id,)
        ).fetchone()
        if row is None:
            self.show(message_id)
            raise WrongState(f"message {message_id} was sent; its content is no longer kept")
        return bytes(row[0])

    # --- moving over from SQLite (queue/migrate.py) ---

    @_driver_errors
    def import_messages(self, batch: Sequence[Any]) -> int:
        """Insert what is not here yet (by id), in one transaction; returns how many were new."""
        new = 0
        with self._transaction() as db:
            for carried in batch:
                inserted = db.execute(
                    "INSERT INTO messages (id, state, priority, sender, created, age_from,"
                    " next_attempt, attempts, last_error, size, updated)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (id) DO NOTHING",
                    carried.row,
                )
                if inserted.rowcount != 1:
                    continue
                new += 1
                message_id = carried.row[0]
                with db.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO recipients (message_id, position, address, state,"
                        " last_error) VALUES (%s, %s, %s, %s, %s)",
                        [(message_id, *recipient) for recipient in carried.recipients],
                    )
                if carried.body is not None:
                    db.execute(
                        "INSERT INTO bodies (message_id, data) VALUES (%s, %s)",
                        (message_id, carried.body),
                    )
                with db.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO attempts (message_id, number, at, seconds, relay,"
                        " relay_address, replies) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                        [(message_id, *attempt) for attempt in carried.attempts],
                    )
                db.execute("SELECT nextval('messages_accepted')")
            self._notify = new > 0
        return new

    # --- operator actions ---

    def _state_of(self, db: Any, message_id: str) -> str:
        row = db.execute(
            "SELECT state FROM messages WHERE id = %s FOR UPDATE", (message_id,)
        ).fetchone()
        if row is None:
            raise NoSuchMessage(f"no message {message_id} in the queue")
        return str(row[0])

    @_driver_errors
    def retry(self, message_id: str, now: float) -> None:
        with self._transaction() as db:
            state = self._state_of(db, message_id)
            if not rules.retry_restores_failed(message_id, state):
                db.execute(
                    "UPDATE messages SET state = %s, next_attempt = %s, updated = %s WHERE id = %s",
                    (QUEUED, now, now, message_id),
                )
            else:
                db.execute(
                    "UPDATE recipients SET state = %s WHERE message_id = %s AND state = %s",
                    (RCPT_PENDING, message_id, RCPT_FAILED),
                )
                db.execute(
                    "UPDATE messages SET state = %s, next_attempt = %s, attempts = 0,"
                    " age_from = %s, updated = %s WHERE id = %s",
                    (QUEUED, now, now, now, message_id),
                )
            self._notify = True

    @_driver_errors
    def retry_all(self, now: float) -> int:
        return self._requeue_all(DEFERRED, now)

    @_driver_errors
    def release_all(self, now: float) -> int:
        return self._requeue_all(HELD, now)

    def _requeue_all(self, state: str, now: float) -> int:
        with self._transaction() as db:
            moved: int = db.execute(
                "UPDATE messages SET state = %s, next_attempt = %s, updated = %s WHERE state = %s",
                (QUEUED, now, now, state),
            ).rowcount
            self._notify = moved > 0
        return moved

    @_driver_errors
    def hold_all(self) -> int:
        with self._transaction() as db:
            held: int = db.execute(
                "UPDATE messages SET state = %s WHERE state = ANY(%s)",
                (HELD, list(rules.HOLDABLE)),
            ).rowcount
        return held

    @_driver_errors
    def hold(self, message_id: str) -> None:
        with self._transaction() as db:
            state = self._state_of(db, message_id)
            rules.check_hold(message_id, state)
            db.execute("UPDATE messages SET state = %s WHERE id = %s", (HELD, message_id))

    @_driver_errors
    def release(self, message_id: str, now: float) -> None:
        with self._transaction() as db:
            state = self._state_of(db, message_id)
            rules.check_release(message_id, state)
            db.execute(
                "UPDATE messages SET state = %s, next_attempt = %s, updated = %s WHERE id = %s",
                (QUEUED, now, now, message_id),
            )
            self._notify = True

    @_driver_errors
    def delete(self, message_id: str) -> None:
        with self._transaction() as db:
            state = self._state_of(db, message_id)
            rules.check_delete(message_id, state)
            db.execute("DELETE FROM messages WHERE id = %s", (message_id,))

    @_driver_errors
    def purge_sent(self, before: float, limit: int) -> int:
        with self._transaction() as db:
            purged: int = db.execute(
                "DELETE FROM messages WHERE id IN (SELECT id FROM messages"
                " WHERE state = %s AND updated < %s LIMIT %s)",
                (SENT, before, limit),
            ).rowcount
        return purged


__all__ = ["CHANNEL", "PostgreSQLQueue"]
