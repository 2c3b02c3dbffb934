"""The embedded queue: one SQLite file in WAL mode, every commit fsync'd before it counts."""

from __future__ import annotations

import functools
import inspect
import os
import sqlite3
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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
    NoSpace,
    NoSuchMessage,
    Outcome,
    QueueCorrupt,
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

SCHEMA_VERSION = 8
# The oldest schema a read-only look (queue list, show) still reads: the daemon migrates at
# its next start, and a CLI upgraded before that can still look.
READABLE_SINCE = 3
# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xff).
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 5, 6, 8
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 11, 13, 26
_COUNTED = ", ".join(f"('{state}', 0)" for state in (*STATES, "accepted"))
# While a message is active, next_attempt holds its lease expiry: one index serves both
# "deferred and due" and "active and expired".
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    sender TEXT NOT NULL,
    created REAL NOT NULL,
    age_from REAL NOT NULL,
    next_attempt REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease_token TEXT,
    last_error TEXT,
    size INTEGER NOT NULL,
    updated REAL NOT NULL,
    relay TEXT,
    relay_address TEXT,
    meta TEXT,
    subject TEXT,
    header_id TEXT
);
CREATE INDEX IF NOT EXISTS messages_run_order ON messages (state, priority DESC, created, id);
CREATE INDEX IF NOT EXISTS messages_due ON messages (state, next_attempt);
CREATE INDEX IF NOT EXISTS messages_age ON messages (state, created);
CREATE INDEX IF NOT EXISTS messages_created ON messages (created);
CREATE INDEX IF NOT EXISTS messages_updated ON messages (state, updated);
CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL,
    position INTEGER NOT NULL,
    address TEXT NOT NULL,
    state TEXT NOT NULL,
    last_error TEXT,
    PRIMARY KEY (message_id, position)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recipients_address ON recipients (address COLLATE NOCASE);
CREATE TABLE IF NOT EXISTS bodies (message_id TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS attempts (
    message_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    at REAL NOT NULL,
    seconds REAL,
    relay TEXT,
    relay_address TEXT,
    replies TEXT NOT NULL,
    PRIMARY KEY (message_id, number)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS state_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL)
    WITHOUT ROWID;
INSERT OR IGNORE INTO state_counts (state, n) VALUES {_COUNTED};
"""
# state_counts is kept by _transaction from the moves each transaction records, one UPDATE
# per state at commit. Schema 2 kept it with triggers, but a statement that fires a trigger
# needs a statement journal: ~13 extra writes per message delivered (measured with strace).
COUNT_TRIGGERS = ("count_insert", "count_delete", "count_update")
_CHUNK = 500  # ids in one IN (...): far below SQLite's limit on parameters
_ROWS = 100  # rows in one multi-row INSERT (up to 1,000 parameters)
_BODY_BYTES = 4 << 20  # message bodies in one INSERT, unless one alone is larger
_ATTEMPT_COLUMNS = ("message_id", "number", "at", "seconds", "relay", "relay_address", "replies")
_MESSAGE_COLUMNS = (
    "id",
    "state",
    "priority",
    "sender",
    "created",
    "age_from",
    "next_attempt",
    "lease_token",
    "size",
    "updated",
    "meta",
    "subject",
    "header_id",
)


def _insert_rows(
    db: sqlite3.Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    """One INSERT statement for all ``rows``: one step, where executemany takes one a row."""
    if not rows:
        return
    one = "(" + ", ".join("?" for _ in columns) + ")"
    db.execute(
        f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([one] * len(rows))}",
        [value for row in rows for value in row],
    )


Method = TypeVar("Method", bound=Callable[..., Any])


def keep_private(path: str) -> None:
    """The queue holds mail: its file is 0600 whatever the umask, and so are the -wal and
    -shm files, which SQLite creates with the database file's mode. Files made by an
    older smtpmailer are tightened where this user owns them."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
    except OSError:
        pass  # not ours (root running `queue` on the daemon's file): leave it as it is
    finally:
        os.close(descriptor)
    for suffix in ("-wal", "-shm"):
        try:
            os.chmod(path + suffix, 0o600)
        except OSError:
            pass  # not there yet, or not ours


def _driver_errors(method: Method) -> Method:
    """A public method of SQLiteQueue: sqlite3's errors leave it as the queue's own
    (NoSpace, StoreBusy, QueueCorrupt, QueueError), never as ``sqlite3.*``."""
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def streamed(self: SQLiteQueue, *args: Any, **kwargs: Any) -> Any:
            try:
                yield from method(self, *args, **kwargs)
            except sqlite3.Error as error:
                raise self._translate(error) from None

        return streamed  # type: ignore[return-value]

    @functools.wraps(method)
    def guarded(self: SQLiteQueue, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise self._translate(error) from None

    return guarded  # type: ignore[return-value]


class SQLiteQueue:
    """QueueStore on SQLite. Use from one thread at a time (the daemon's queue thread)."""

    def __init__(self, path: str, busy_timeout: float = 30.0, read_only: bool = False) -> None:
        """Open (creating and migrating it if needed) the queue file at ``path``.

        ``read_only`` opens it for looking only (``queue list``, ``stats``): no schema
        script, no write lock, so it never competes with the daemon; a file that does not
        exist yet is an empty queue, and nothing is created.
        """
        self.path = path
        self.read_only = read_only
        self._count_changes: Counter[str] = Counter()
        self._relay_columns = "relay, relay_address, meta, subject, header_id"
        self._has_history = True
        # Whether outcomes also write events (a webhook is configured): keep_events().
        self._events = False
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise QueueError(f"queue directory {directory} does not exist")
        try:
            if read_only:
                self._db = self._open_read_only(path, busy_timeout)
                return
            keep_private(path)
            self._db = sqlite3.connect(
                path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
            fresh = not self._db.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'messages'"
            ).fetchone()
            self._db.executescript(SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION if fresh else 1),),
            )
            version = self._schema_version()
            if version == 1:
                version = self._migrate_to_2()
            if version == 2:
                version = self._migrate_to_3()
            elif version >= 3 and self._has_count_triggers():
                # An older smtpmailer opened this file and put its triggers back.
                self._count_without_triggers()
            if version == 3:
                version = self._migrate_to_4()
            if version == 4:
                version = self._migrate_to_5()
            if version == 5:
                version = self._migrate_to_6()
            if version == 6:
                version = self._migrate_to_7()
            if version == 7:
                version = self._migrate_to_8()
            if version == SCHEMA_VERSION:  # on a column the migrations may have added
                self._db.execute(
                    "CREATE INDEX IF NOT EXISTS messages_header_id ON messages (header_id)"
                    " WHERE header_id IS NOT NULL"
                )
            # A turn's INSERT of bodies reuses pages its DELETE of sent bodies just freed,
            # so SQLite journals the statement; past 64 KiB that journal went to a new temp
            # file each turn (an open, an unlink and two writes a page). It only serves to
            # undo the statement inside its transaction, never durability: kept in memory.
            # Set after the migrations, whose index builds may sort more than memory holds.
            self._db.execute("PRAGMA temp_store = MEMORY")
        except sqlite3.Error as error:
            raise self._translate(error, f"cannot open queue database {path}") from None
        self._check_version(version)

    def _open_read_only(self, path: str, busy_timeout: float) -> sqlite3.Connection:
        if not os.path.exists(path):
            db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            db.executescript(SCHEMA)
            return db
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
        db = sqlite3.connect(
            uri, uri=True, timeout=busy_timeout, isolation_level=None, check_same_thread=False
        )
        self._db = db
        version = self._schema_version()
        if READABLE_SINCE <= version < SCHEMA_VERSION:
            self._has_history = version >= 5
            later = ["relay", "relay_address", "meta", "subject", "header_id"]
            since = {"relay": 4, "relay_address": 4, "meta": 6, "subject": 7, "header_id": 7}
            self._relay_columns = ", ".join(c if version >= since[c] else "NULL" for c in later)
        else:
            self._check_version(version)
        return db

    def _schema_version(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _check_version(self, version: int) -> None:
        if version != SCHEMA_VERSION:
            raise QueueError(
                f"queue database {self.path} has schema version {version}, this smtpmailer "
                f"knows {SCHEMA_VERSION}"
            )

    def _translate(self, error: sqlite3.Error, doing: str | None = None) -> QueueError:
        """The queue's own error for a driver error: disk full, busy, damaged, or other."""
        code = getattr(error, "sqlite_errorcode", 0) & 0xFF
        where = doing or f"queue database {self.path}"
        if code == _SQLITE_FULL:
            return NoSpace(f"queue storage is full: no space left on device ({self.path})")
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return StoreBusy(f"queue database {self.path} is busy: {error}")
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            return QueueCorrupt(
                f"{where}: {error}; the file is damaged: stop the daemon and run "
                "smtpmailer queue salvage (it keeps the damaged file)"
            )
        if code == _SQLITE_READONLY:
            return QueueError(f"{where}: the file is read-only for this user")
        return QueueError(f"{where}: {error}")

    def _migrate_to_2(self) -> int:
        """Version 2 counts every message ever accepted (for the metrics)."""
        with self._transaction() as db:
            db.execute("DROP TRIGGER IF EXISTS count_insert")
            db.execute(
                "CREATE TRIGGER count_insert AFTER INSERT ON messages BEGIN"
                " UPDATE state_counts SET n = n + 1 WHERE state = NEW.state;"
                " UPDATE state_counts SET n = n + 1 WHERE state = 'accepted'; END"
            )
            db.execute(
                "INSERT OR REPLACE INTO state_counts (state, n)"
                " SELECT 'accepted', count(*) FROM messages"
            )
            db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        return 2

    def _has_count_triggers(self) -> bool:
        marks = ", ".join("?" for _ in COUNT_TRIGGERS)
        return bool(
            self._db.execute(
                f"SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name IN ({marks})",
                COUNT_TRIGGERS,
            ).fetchone()
        )

    def _migrate_to_3(self) -> int:
        """Version 3 keeps the counts without triggers; they are counted afresh here."""
        self._count_without_triggers()
        with self._transaction() as db:
            db.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
        return 3

    def _count_without_triggers(self) -> None:
        with self._transaction() as db:
            for trigger in COUNT_TRIGGERS:
                db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            db.execute(
                "UPDATE state_counts SET n = (SELECT count(*) FROM messages"
                " WHERE messages.state = state_counts.state) WHERE state != 'accepted'"
            )

    def _migrate_to_4(self) -> int:
        """Version 4 names the relay that took each message (its last attempt)."""
        with self._transaction() as db:
            present = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            for column in ("relay", "relay_address"):
                if column not in present:
                    db.execute(f"ALTER TABLE messages ADD COLUMN {column} TEXT")
            db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        return 4

    def _migrate_to_5(self) -> int:
        """Version 5 keeps each attempt (the table is made by the schema script); messages
        from before it have no history."""
        with self._transaction() as db:
            db.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
        return 5

    def _migrate_to_6(self) -> int:
        """Version 6 keeps what built a message (a template and its variables)."""
        with self._transaction() as db:
            present = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            if "meta" not in present:
                db.execute("ALTER TABLE messages ADD COLUMN meta TEXT")
            db.execute("UPDATE meta SET value = '6' WHERE key = 'schema_version'")
        return 6

    def _migrate_to_7(self) -> int:
        """Version 7 keeps each message's Subject and Message-ID for search; messages from
        before it are found by their id, sender and recipients."""
        with self._transaction() as db:
            present = {row[1] for row in db.execute("PRAGMA table_info(messages)")}
            for column in ("subject", "header_id"):
                if column not in present:
                    db.execute(f"ALTER TABLE messages ADD COLUMN {column} TEXT")
            db.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
        return 7

    def _migrate_to_8(self) -> int:
        """Version 8 keeps events for webhooks (the tables come with the schema script)."""
        with self._transaction() as db:
            db.execute("UPDATE meta SET value = '8' WHERE key = 'schema_version'")
        return 8

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self, synced: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: take the write lock up front, so no transaction has to retry.
        The state moves recorded with _moved go into state_counts in the same commit.

        ``synced=False`` commits without waiting for fsync (synchronous = NORMAL), for
        leases and outcomes only: record_and_enqueue says why that loses nothing."""
        if not synced:
            self._db.execute("PRAGMA synchronous = NORMAL")
        try:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as error:
                raise self._translate(error) from None
            self._count_changes.clear()
            try:
                yield self._db
                changes = [(n, state) for state, n in self._count_changes.items() if n]
                if changes:
                    self._db.executemany(
                        "UPDATE state_counts SET n = n + ? WHERE state = ?", changes
                    )
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite has already rolled back after some errors (a full disk): a second
                # ROLLBACK would fail and hide the first error.
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
        finally:
            if not synced:
                self._db.execute("PRAGMA synchronous = FULL")

    def _moved(self, old: str | None, new: str | None, n: int = 1) -> None:
        """``n`` messages went from state ``old`` to ``new`` (None: inserted, deleted).
        Every statement that changes messages.state must say so here."""
        if old == new or n == 0:
            return
        if old is None:
            self._count_changes["accepted"] += n
        else:
            self._count_changes[old] -= n
        if new is not None:
            self._count_changes[new] += n

    # --- input ---

    @_driver_errors
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

    @_driver_errors
    def enqueue_many(
        self, items: Sequence[NewMessage], now: float, max_queue_size: int
    ) -> list[str | QueueError]:
        """Many messages in one transaction (one fsync): group commit for submissions.
        Each gets its id, or the error that refused it alone (a full queue, no recipient)."""
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
        """enqueue_many, and when nothing else is queued, up to ``lease_limit`` of the new
        messages (highest priority first) are leased in the same commit and returned for
        delivery: one transaction and one fsync fewer per message than a later poll."""
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
        """record, then enqueue_and_lease, in one transaction: the daemon's queue thread
        writes everything that arrived during its last turn with one fsync. With
        ``lease_due``, up to ``lease_limit`` messages are leased as ``lease`` leases them
        (due mail of any age, the new messages among it): the poller's lease rides the
        turn's commit instead of a transaction of its own.

        Only a turn with new mail waits for fsync: someone waits on its 250. A turn of
        outcomes and leases alone is written, not synced (Postfix does not sync the
        removal of a delivered queue file either). kill -9 cannot lose it: it is in the
        kernel's hands. A power cut can, and leaves those messages as they were before:
        leased, so recover_leases gives them back at the next start and they go again (a
        duplicate, never a loss: delivery is at least once). The WAL is one file written
        in order, so the next synced commit carries it to disk, and a commit that lasts
        (a DSN queued for a failure, a webhook's cursor) never outlives the outcome it
        follows. End to end, a third of the turns held no new mail, each paying 0.4 ms
        of fsync."""
        with self._transaction(synced=bool(items)) as db:
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
        db: sqlite3.Connection,
        items: Sequence[NewMessage],
        now: float,
        max_queue_size: int,
        lease_limit: int,
        lease_seconds: float,
    ) -> tuple[list[str | QueueError], list[Lease]]:
        results: list[str | QueueError] = []
        leases: list[Lease] = []
        placeholders = ", ".join("?" for _ in PENDING_STATES)
        # state_counts takes this transaction's moves only at its end: add them here.
        (pending,) = db.execute(
            f"SELECT sum(n) FROM state_counts WHERE state IN ({placeholders})",
            PENDING_STATES,
        ).fetchone()
        pending += sum(self._count_changes[state] for state in PENDING_STATES)
        if lease_limit > 0:
            (queued,) = db.execute(
                "SELECT n FROM state_counts WHERE state = ?", (QUEUED,)
            ).fetchone()
            queued += self._count_changes[QUEUED]
            if queued:  # older mail is waiting: it goes first, through the poller
                lease_limit = 0
        ranked = sorted(range(len(items)), key=lambda index: -items[index].priority)
        to_lease = set(ranked[:lease_limit])
        accepted: list[tuple[int, NewMessage, tuple[str, float] | None]] = []
        for index, (item, refusal) in enumerate(
            zip(items, rules.admit(items, pending, max_queue_size), strict=True)
        ):
            if refusal is not None:
                kind = QueueError if not item.recipients else QueueFull
                results.append(kind(refusal))
            else:
                lease = (new_lease_token(), now + lease_seconds) if index in to_lease else None
                accepted.append((index, item, lease))
                results.append("")  # the id, below
        ids = self._insert_many(db, [(item, lease) for _, item, lease in accepted], now)
        for (index, item, lease), message_id in zip(accepted, ids, strict=True):
            results[index] = message_id
            if lease is not None:
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
        leases.sort(key=lambda lease: -lease.priority)  # delivery starts with the most urgent
        return results, leases

    def _insert_many(
        self,
        db: sqlite3.Connection,
        messages: Sequence[tuple[NewMessage, tuple[str, float] | None]],
        now: float,
    ) -> list[str]:
        """Insert each message queued, or active under its lease (token, expiry), and
        return their ids. One multi-row INSERT per table for a chunk of messages: every
        statement step hands the GIL to the reactor thread and waits to get it back, and
        a plain INSERT takes a step per row."""
        ids: list[str] = []
        for start in range(0, len(messages), _ROWS):
            chunk = messages[start : start + _ROWS]
            chunk_ids = [new_message_id(now) for _ in chunk]
            rows = [
                self._message_row(message_id, item, lease, now)
                for message_id, (item, lease) in zip(chunk_ids, chunk, strict=True)
            ]
            try:
                _insert_rows(db, "messages", _MESSAGE_COLUMNS, rows)
            except sqlite3.IntegrityError:
                # An id another process made in the same millisecond: the statement
                # failed as a whole, so this chunk goes in one message at a time.
                chunk_ids = [self._insert_message(db, item, lease, now) for item, lease in chunk]
            recipients = [
                (message_id, position, address, RCPT_PENDING)
                for message_id, (item, _) in zip(chunk_ids, chunk, strict=True)
                for position, address in enumerate(item.recipients)
            ]
            for first in range(0, len(recipients), _ROWS):
                _insert_rows(
                    db,
                    "recipients",
                    ("message_id", "position", "address", "state"),
                    recipients[first : first + _ROWS],
                )
            # SQLite copies what it binds: bodies go in a few megabytes at a time, so a
            # batch of large messages is not held twice in memory all at once.
            bodies: list[tuple[str, bytes]] = []
            size = 0
            for message_id, (item, _) in zip(chunk_ids, chunk, strict=True):
                if bodies and size + len(item.data) > _BODY_BYTES:
                    _insert_rows(db, "bodies", ("message_id", "data"), bodies)
                    bodies, size = [], 0
                bodies.append((message_id, item.data))
                size += len(item.data)
            _insert_rows(db, "bodies", ("message_id", "data"), bodies)
            for _, lease in chunk:
                self._moved(None, ACTIVE if lease else QUEUED)
            ids.extend(chunk_ids)
        return ids

    @staticmethod
    def _message_row(
        message_id: str, item: NewMessage, lease: tuple[str, float] | None, now: float
    ) -> tuple[Any, ...]:
        state, token, next_attempt = (ACTIVE, *lease) if lease else (QUEUED, None, now)
        return (
            message_id,
            state,
            item.priority,
            item.sender,
            now,
            now,
            next_attempt,
            token,
            len(item.data),
            now,
            item.meta or None,
            *summary(item.data),
        )

    def _insert_message(
        self, db: sqlite3.Connection, item: NewMessage, lease: tuple[str, float] | None, now: float
    ) -> str:
        """The messages row alone, with a fresh id until one is free."""
        for _ in range(5):
            message_id = new_message_id(now)
            try:
                _insert_rows(
                    db,
                    "messages",
                    _MESSAGE_COLUMNS,
                    [self._message_row(message_id, item, lease, now)],
                )
                return message_id
            except sqlite3.IntegrityError:
                continue
        raise QueueError("could not make a unique message id")

    # --- the delivery loop ---

    @_driver_errors
    def lease(self, now: float, limit: int, lease_seconds: float) -> list[Lease]:
        """Hand out up to ``limit`` due messages, highest priority first, oldest first."""
        with self._transaction(synced=False) as db:
            return self._lease(db, now, limit, lease_seconds)

    def _lease(
        self, db: sqlite3.Connection, now: float, limit: int, lease_seconds: float
    ) -> list[Lease]:
        expired = db.execute(
            "UPDATE messages SET state = ?, lease_token = NULL"
            " WHERE state = ? AND next_attempt <= ?",
            (QUEUED, ACTIVE, now),
        )
        self._moved(ACTIVE, QUEUED, expired.rowcount)
        due = db.execute(
            "UPDATE messages SET state = ? WHERE state = ? AND next_attempt <= ?",
            (QUEUED, DEFERRED, now),
        )
        self._moved(DEFERRED, QUEUED, due.rowcount)
        rows = db.execute(
            "SELECT id, sender, priority, attempts, created, next_attempt, meta FROM messages"
            " WHERE state = ? ORDER BY priority DESC, created, id LIMIT ?",
            (QUEUED, limit),
        ).fetchall()
        if not rows:
            return []
        # One token for the batch, made each lease's own by its id: one statement where a
        # token each took a statement each (and a hand-over of the GIL each).
        batch = new_lease_token() + ":"
        ids = [row[0] for row in rows]
        marks = ", ".join("?" for _ in ids)
        leased = db.execute(
            f"UPDATE messages SET state = ?, lease_token = ? || id, next_attempt = ?,"
            f" updated = ? WHERE id IN ({marks})",
            (ACTIVE, batch, now + lease_seconds, now, *ids),
        )
        self._moved(QUEUED, ACTIVE, leased.rowcount)
        recipients: dict[str, list[str]] = {i: [] for i in ids}
        for message_id, address in db.execute(
            f"SELECT message_id, address FROM recipients WHERE message_id IN ({marks})"
            f" AND state = ? ORDER BY message_id, position",
            (*ids, RCPT_PENDING),
        ):
            recipients[message_id].append(address)
        bodies = dict(
            db.execute(f"SELECT message_id, data FROM bodies WHERE message_id IN ({marks})", ids)
        )
        return [
            Lease(
                id=row[0],
                token=batch + row[0],
                sender=row[1],
                recipients=tuple(recipients[row[0]]),
                data=bytes(bodies[row[0]]),
                priority=row[2],
                attempts=row[3],
                created=row[4],
                due=row[5],
                meta=row[6] or "",
            )
            for row in rows
        ]

    @_driver_errors
    def record(
        self, outcomes: Sequence[Outcome], now: float, policy: RetryPolicy
    ) -> list[Recorded]:
        """Write the outcomes of many attempts in one transaction (one fsync for all)."""
        with self._transaction() as db:
            return self._record(db, outcomes, now, policy)

    def _record(
        self,
        db: sqlite3.Connection,
        outcomes: Sequence[Outcome],
        now: float,
        policy: RetryPolicy,
    ) -> list[Recorded]:
        recorded: list[Recorded | None] = [None] * len(outcomes)
        # Every recipient sent, the common case: a few statements for the whole batch.
        # The rest one by one. (Each statement hands the GIL to the reactor and back.)
        seen = Counter(outcome.lease.id for outcome in outcomes)
        simple = [
            index
            for index, outcome in enumerate(outcomes)
            if seen[outcome.lease.id] == 1
            and outcome.results
            and all(result.status == RCPT_SENT for result in outcome.results)
            and sorted(result.address for result in outcome.results)
            == sorted(outcome.lease.recipients)
        ]
        for start in range(0, len(simple), _CHUNK):
            chunk = simple[start : start + _CHUNK]
            for index, done in zip(
                chunk, self._record_all_sent(db, [outcomes[i] for i in chunk], now), strict=True
            ):
                recorded[index] = done
        for index, outcome in enumerate(outcomes):
            if recorded[index] is None:
                recorded[index] = self._record_one(db, outcome, now, policy)
        return [done for done in recorded if done is not None]

    def _record_all_sent(
        self, db: sqlite3.Connection, outcomes: Sequence[Outcome], now: float
    ) -> list[Recorded]:
        """_record_one for outcomes whose every recipient got its 2xx, set by set. A
        message with a recipient that failed in an earlier attempt ends ``failed``."""
        ids = [outcome.lease.id for outcome in outcomes]
        marks = ", ".join("?" for _ in ids)
        rows = {
            row[0]: row[1:]
            for row in db.execute(
                f"SELECT id, state, lease_token, attempts FROM messages WHERE id IN ({marks})",
                ids,
            )
        }
        live = [
            outcome.lease.id
            for outcome in outcomes
            if outcome.lease.id in rows
            and rows[outcome.lease.id][0] == ACTIVE
            and rows[outcome.lease.id][1] == outcome.lease.token
        ]
        failed: set[str] = set()
        if live:
            live_marks = ", ".join("?" for _ in live)
            db.execute(
                f"UPDATE recipients SET state = ?, last_error = NULL"
                f" WHERE message_id IN ({live_marks}) AND state = ?",
                (RCPT_SENT, *live, RCPT_PENDING),
            )
            failed = {
                message_id
                for (message_id,) in db.execute(
                    f"SELECT DISTINCT message_id FROM recipients"
                    f" WHERE message_id IN ({live_marks}) AND state = ?",
                    (*live, RCPT_FAILED),
                )
            }
            # One statement per state and relay (a batch comes from a few connections).
            where: dict[str, tuple[str | None, str | None]] = {
                outcome.lease.id: (outcome.via or None, outcome.relay or None)
                for outcome in outcomes
            }
            for state, group in (
                (rules.all_sent_state(False), [i for i in live if i not in failed]),
                (rules.all_sent_state(True), sorted(failed)),
            ):
                by_relay: dict[tuple[str | None, str | None], list[str]] = {}
                for message_id in group:
                    by_relay.setdefault(where[message_id], []).append(message_id)
                for (via, relay), ids_here in by_relay.items():
                    group_marks = ", ".join("?" for _ in ids_here)
                    db.execute(
                        f"UPDATE messages SET state = ?, attempts = attempts + 1,"
                        f" next_attempt = ?, lease_token = NULL, last_error = NULL,"
                        f" updated = ?, relay = ?, relay_address = ?"
                        f" WHERE id IN ({group_marks})",
                        (state, now, now, via, relay, *ids_here),
                    )
                    if state == SENT:
                        db.execute(
                            f"DELETE FROM bodies WHERE message_id IN ({group_marks})", ids_here
                        )
                self._moved(ACTIVE, state, len(group))
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
            else:
                state = rules.all_sent_state(outcome.lease.id in failed)
                done.append(Recorded(outcome, state, row[2] + 1))  # type: ignore[index]
        return done

    def _record_one(
        self, db: sqlite3.Connection, outcome: Outcome, now: float, policy: RetryPolicy
    ) -> Recorded:
        lease = outcome.lease
        row = db.execute(
            "SELECT state, lease_token, attempts, age_from FROM messages WHERE id = ?",
            (lease.id,),
        ).fetchone()
        if row is None or row[0] != ACTIVE or row[1] != lease.token:
            # The lease expired and someone else has the message now, or an operator
            # deleted it: this attempt's word no longer counts.
            return Recorded(outcome, row[0] if row else "deleted", row[2] if row else 0, stale=True)
        for result in outcome.results:
            state, error = rules.recipient_update(result)
            db.execute(
                "UPDATE recipients SET state = ?, last_error = ?"
                " WHERE message_id = ? AND address = ? AND state = ?",
                (state, error, lease.id, result.address, RCPT_PENDING),
            )
        pending = [
            address
            for (address,) in db.execute(
                "SELECT address FROM recipients WHERE message_id = ? AND state = ?",
                (lease.id, RCPT_PENDING),
            )
        ]
        any_failed = db.execute(
            "SELECT 1 FROM recipients WHERE message_id = ? AND state = ? LIMIT 1",
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
                "UPDATE recipients SET state = ?,"
                " last_error = coalesce(last_error || '; ', '') || ?"
                " WHERE message_id = ? AND address = ? AND state = ?",
                (RCPT_FAILED, reason, lease.id, address, RCPT_PENDING),
            )
        db.execute(
            "UPDATE messages SET state = ?, attempts = ?, next_attempt = ?, lease_token = NULL,"
            " last_error = ?, updated = ?, relay = ?, relay_address = ? WHERE id = ?",
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
        self._moved(ACTIVE, verdict.state)
        self._keep_attempts(db, [outcome], now)
        if self._events:
            self._add_events(
                db, outcome_events(outcome, verdict.attempts, now, verdict.expired), now
            )
        if verdict.state == SENT:
            db.execute("DELETE FROM bodies WHERE message_id = ?", (lease.id,))
        return Recorded(outcome, verdict.state, verdict.attempts, verdict.expired)

    @staticmethod
    def _keep_attempts(db: sqlite3.Connection, outcomes: Sequence[Outcome], now: float) -> None:
        """Each attempt with its message, numbered on from the last one kept (a retried
        message's attempt count starts again; its history does not). Past KEPT_ATTEMPTS,
        the oldest but the first are forgotten."""
        if not outcomes:
            return
        ids = [outcome.lease.id for outcome in outcomes]
        last = dict(
            db.execute(
                f"SELECT message_id, max(number) FROM attempts"
                f" WHERE message_id IN ({', '.join('?' for _ in ids)}) GROUP BY message_id",
                ids,
            ).fetchall()
        )
        rows, forget = rules.number_attempts(outcomes, last, now)
        db.executemany(
            "DELETE FROM attempts WHERE message_id = ? AND number BETWEEN ? AND ?", forget
        )
        for start in range(0, len(rows), _ROWS):
            _insert_rows(db, "attempts", _ATTEMPT_COLUMNS, rows[start : start + _ROWS])

    @staticmethod
    def _add_events(
        db: sqlite3.Connection, rows: Sequence[tuple[str, str, str]], now: float
    ) -> None:
        for start in range(0, len(rows), _ROWS):
            _insert_rows(
                db,
                "events",
                ("at", "kind", "message_id", "body"),
                [(now, *row) for row in rows[start : start + _ROWS]],
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
            (row[0], row[1], row[2])
            for row in self._db.execute(
                "SELECT seq, kind, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            )
        ]

    @_driver_errors
    def webhook_cursor(self, name: str) -> int:
        """Where a webhook stands; a new one starts at the newest event (it is told what
        happens from now on, not the past)."""
        with self._transaction() as db:
            row = db.execute("SELECT seq FROM webhook_cursors WHERE name = ?", (name,)).fetchone()
            if row is not None:
                return int(row[0])
            (newest,) = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            db.execute("INSERT INTO webhook_cursors (name, seq) VALUES (?, ?)", (name, newest))
            return int(newest)

    def claim_webhook(self, name: str) -> bool:
        """Always ours: one daemon per queue file."""
        return True

    @_driver_errors
    def set_webhook_cursor(self, name: str, seq: int) -> None:
        with self._transaction(synced=False) as db:
            db.execute("UPDATE webhook_cursors SET seq = max(seq, ?) WHERE name = ?", (seq, name))

    @_driver_errors
    def prune_events(self, names: Sequence[str]) -> tuple[int, int]:
        """Forget the events every webhook in ``names`` has sent; (forgotten, newest)."""
        with self._transaction() as db:
            marks = ", ".join("?" for _ in names)
            (oldest,) = (
                db.execute(
                    f"SELECT coalesce(min(seq), 0) FROM webhook_cursors WHERE name IN ({marks})",
                    list(names),
                ).fetchone()
                if names
                else (None,)
            )
            (newest,) = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
            if oldest is None:
                oldest = newest
            gone = db.execute("DELETE FROM events WHERE seq <= ?", (oldest,)).rowcount
            db.execute(
                f"DELETE FROM webhook_cursors WHERE name NOT IN ({marks})"
                if names
                else "DELETE FROM webhook_cursors",
                list(names),
            )
            return int(gone), int(newest)

    @_driver_errors
    def release_leases(self, leases: Sequence[Lease]) -> int:
        """Give back leases that were never attempted (a stop before their turn)."""
        with self._transaction() as db:
            cursor = db.executemany(
                "UPDATE messages SET state = ?, lease_token = NULL"
                " WHERE id = ? AND state = ? AND lease_token = ?",
                [(QUEUED, lease.id, ACTIVE, lease.token) for lease in leases],
            )
            self._moved(ACTIVE, QUEUED, cursor.rowcount)
            return cursor.rowcount

    @_driver_errors
    def recover_leases(self) -> int:
        """At daemon start, under the daemon's lock on state_dir: that lock proves every
        earlier owner of a lease is gone, so every active lease is a crashed attempt's."""
        with self._transaction() as db:
            reclaimed = db.execute(
                "UPDATE messages SET state = ?, lease_token = NULL WHERE state = ?",
                (QUEUED, ACTIVE),
            ).rowcount
            self._moved(ACTIVE, QUEUED, reclaimed)
            return reclaimed

    # --- inspection ---

    @_driver_errors
    def counts(self) -> dict[str, int]:
        """Messages by state, and under "accepted" how many were ever queued (O(1))."""
        return dict(self._db.execute("SELECT state, n FROM state_counts").fetchall())

    @_driver_errors
    def oldest_pending(self) -> float | None:
        oldest = None
        for state in PENDING_STATES:
            (created,) = self._db.execute(
                "SELECT min(created) FROM messages WHERE state = ?", (state,)
            ).fetchone()
            if created is not None and (oldest is None or created < oldest):
                oldest = created
        return oldest

    @_driver_errors
    def recent_outcomes(self, since: float) -> dict[str, int]:
        """How many messages became sent, failed or deferred since ``since`` (index ranges)."""
        return {
            state: self._db.execute(
                "SELECT count(*) FROM messages WHERE state = ? AND updated >= ?", (state, since)
            ).fetchone()[0]
            for state in (SENT, FAILED, DEFERRED)
        }

    @_driver_errors
    def page(
        self, state: str | None, limit: int, after: tuple[float, str] | None = None
    ) -> list[MessageInfo]:
        """One page of ``messages()``: oldest first, starting after (created, id)."""
        return list(self.messages(state, limit, after))

    @_driver_errors
    def recent_problems(self, limit: int) -> list[MessageInfo]:
        """The messages that most recently failed or were deferred, newest first."""
        rows = []
        for state in (FAILED, DEFERRED):
            rows += self._db.execute(
                "SELECT id, state, priority, sender, created, next_attempt, attempts, size,"
                f" last_error, {self._relay_columns}, updated FROM messages WHERE state = ?"
                " ORDER BY updated DESC LIMIT ?",
                (state, limit),
            ).fetchall()
        rows.sort(key=lambda row: row[14], reverse=True)
        return [self._info(row[:14]) for row in rows[:limit]]

    @_driver_errors
    def messages(
        self,
        state: str | None = None,
        limit: int | None = None,
        after: tuple[float, str] | None = None,
    ) -> Iterator[MessageInfo]:
        """Oldest first; streamed, so a million-message queue is never in memory at once."""
        query = (
            "SELECT id, state, priority, sender, created, next_attempt, attempts, size,"
            f" last_error, {self._relay_columns} FROM messages"
        )
        args: list[object] = []
        where = []
        if state:
            where.append("state = ?")
            args.append(state)
        if after is not None:
            where.append("(created > ? OR (created = ? AND id > ?))")
            args += [after[0], after[0], after[1]]
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY created, id"
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        # A cursor of its own, so that the recipient look-ups below do not disturb it.
        cursor = self._db.cursor()
        cursor.arraysize = 500
        for row in cursor.execute(query, args):
            yield self._info(row)

    def _info(self, row: tuple[Any, ...]) -> MessageInfo:
        recipients = tuple(
            Recipient(address, state, error)
            for address, state, error in self._db.execute(
                "SELECT address, state, last_error FROM recipients WHERE message_id = ?"
                " ORDER BY position",
                (row[0],),
            )
        )
        return MessageInfo(
            id=row[0],
            state=row[1],
            priority=row[2],
            sender=row[3],
            recipients=recipients,
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

    @_driver_errors
    def search(
        self, text: str, limit: int, before: tuple[float, str] | None = None
    ) -> list[MessageInfo]:
        text = text.strip()
        if not text:
            return []
        found = [
            "SELECT id FROM messages WHERE id = :text",
            "SELECT id FROM messages WHERE sender = :text COLLATE NOCASE",
            "SELECT message_id FROM recipients WHERE address = :text COLLATE NOCASE",
        ]
        if self._relay_columns.endswith("header_id"):  # schema 7 (a read-only look at 6-)
            found.append("SELECT id FROM messages WHERE header_id = :header_id")
            if len(text) >= 2:
                found.append("SELECT id FROM messages WHERE subject LIKE :like ESCAPE '\\'")
        like = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = (
            "SELECT id, state, priority, sender, created, next_attempt, attempts, size,"
            f" last_error, {self._relay_columns} FROM messages"
            f" WHERE id IN ({' UNION '.join(found)})"
        )
        args: dict[str, object] = {
            "text": text,
            "header_id": text.strip("<>"),
            "like": like,
            "limit": limit,
        }
        if before is not None:
            query += " AND (created < :created OR (created = :created AND id < :id))"
            args.update(created=before[0], id=before[1])
        query += " ORDER BY created DESC, id DESC LIMIT :limit"
        return [self._info(row) for row in self._db.execute(query, args).fetchall()]

    @_driver_errors
    def show(self, message_id: str) -> MessageInfo:
        row = self._db.execute(
            "SELECT id, state, priority, sender, created, next_attempt, attempts, size,"
            f" last_error, {self._relay_columns} FROM messages WHERE id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            raise NoSuchMessage(f"no message {message_id} in the queue")
        return attrs.evolve(self._info(row), history=self._history(message_id))

    def _history(self, message_id: str) -> tuple[Attempt, ...]:
        if not self._has_history:
            return ()
        return tuple(
            Attempt(number, at, seconds, relay, address, decode_replies(replies))
            for number, at, seconds, relay, address, replies in self._db.execute(
                "SELECT number, at, seconds, relay, relay_address, replies FROM attempts"
                " WHERE message_id = ? ORDER BY number",
                (message_id,),
            )
        )

    @_driver_errors
    def mark_delay_warned(self, message_id: str, now: float) -> bool:
        with self._transaction() as db:
            marked = db.execute(
                "UPDATE messages SET meta = json_set(coalesce(meta, '{}'), '$.delay_warned', ?)"
                " WHERE id = ? AND (meta IS NULL OR json_extract(meta, '$.delay_warned') IS NULL)",
                (now, message_id),
            )
            return marked.rowcount == 1

    @_driver_errors
    def body(self, message_id: str) -> bytes:
        row = self._db.execute(
            "SELECT data FROM bodies WHERE message_id = ?", (message_id,)
        ).fetchone()
        if row is None:
            self.show(message_id)  # raises NoSuchMessage when the message itself is gone
            raise WrongState(f"message {message_id} was sent; its content is no longer kept")
        return bytes(row[0])

    # --- operator actions ---

    def _state_of(self, db: sqlite3.Connection, message_id: str) -> str:
        row = db.execute("SELECT state FROM messages WHERE id = ?", (message_id,)).fetchone()
        if row is None:
            raise NoSuchMessage(f"no message {message_id} in the queue")
        return str(row[0])

    @_driver_errors
    def retry(self, message_id: str, now: float) -> None:
        """Attempt again now. A failed message gets its failed recipients back, not the sent."""
        with self._transaction() as db:
            state = self._state_of(db, message_id)
            if not rules.retry_restores_failed(message_id, state):
                db.execute(
                    "UPDATE messages SET state = ?, next_attempt = ?, updated = ? WHERE id = ?",
                    (QUEUED, now, now, message_id),
                )
                self._moved(state, QUEUED)
            else:
                db.execute(
                    "UPDATE recipients SET state = ? WHERE message_id = ? AND state = ?",
                    (RCPT_PENDING, message_id, RCPT_FAILED),
                )
                db.execute(
                    "UPDATE messages SET state = ?, next_attempt = ?, attempts = 0, age_from = ?,"
                    " updated = ? WHERE id = ?",
                    (QUEUED, now, now, now, message_id),
                )
                self._moved(FAILED, QUEUED)

    @_driver_errors
    def retry_all(self, now: float) -> int:
        """The flush: every deferred message becomes due now."""
        return self._requeue_all(DEFERRED, now)

    @_driver_errors
    def release_all(self, now: float) -> int:
        """Every held message becomes due now (postsuper -H ALL)."""
        return self._requeue_all(HELD, now)

    def _requeue_all(self, state: str, now: float) -> int:
        with self._transaction() as db:
            moved = db.execute(
                "UPDATE messages SET state = ?, next_attempt = ?, updated = ? WHERE state = ?",
                (QUEUED, now, now, state),
            ).rowcount
            self._moved(state, QUEUED, moved)
            return moved

    @_driver_errors
    def hold_all(self) -> int:
        """Every queued or deferred message is held (postsuper -h ALL)."""
        held = 0
        with self._transaction() as db:
            for state in rules.HOLDABLE:
                n = db.execute(
                    "UPDATE messages SET state = ? WHERE state = ?", (HELD, state)
                ).rowcount
                self._moved(state, HELD, n)
                held += n
        return held

    @_driver_errors
    def hold(self, message_id: str) -> None:
        with self._transaction() as db:
            state = self._state_of(db, message_id)
            rules.check_hold(message_id, state)
            db.execute("UPDATE messages SET state = ? WHERE id = ?", (HELD, message_id))
            self._moved(state, HELD)

    @_driver_errors
    def release(self, message_id: str, now: float) -> None:
        with self._transaction() as db:
            state = self._state_of(db, message_id)
            rules.check_release(message_id, state)
            db.execute(
                "UPDATE messages SET state = ?, next_attempt = ?, updated = ? WHERE id = ?",
                (QUEUED, now, now, message_id),
            )
            self._moved(HELD, QUEUED)

    @_driver_errors
    def delete(self, message_id: str) -> None:
        with self._transaction() as db:
            state = self._state_of(db, message_id)
            rules.check_delete(message_id, state)
            self._delete_rows(db, [message_id])
            self._moved(state, None)

    @staticmethod
    def _delete_rows(db: sqlite3.Connection, ids: Sequence[str]) -> None:
        rows = [(i,) for i in ids]
        db.executemany("DELETE FROM recipients WHERE message_id = ?", rows)
        db.executemany("DELETE FROM bodies WHERE message_id = ?", rows)
        db.executemany("DELETE FROM attempts WHERE message_id = ?", rows)
        db.executemany("DELETE FROM messages WHERE id = ?", rows)

    @_driver_errors
    def purge_sent(self, before: float, limit: int) -> int:
        """Forget up to ``limit`` messages that were sent before ``before``."""
        with self._transaction() as db:
            ids = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM messages WHERE state = ? AND updated < ? LIMIT ?",
                    (SENT, before, limit),
                )
            ]
            self._delete_rows(db, ids)
            self._moved(SENT, None, len(ids))
        return len(ids)


__all__ = ["SQLiteQueue"]
