"""``smtpmailer queue migrate --from sqlite:PATH``: a SQLite queue copied into the shared
PostgreSQL queue, message by message with its recipients, state, attempts (the count and
the history), times and body.

Resumable and idempotent: messages go over in batches, each its own transaction, and a
message already there (same id) is left as it is, so a run that stopped half-way is simply
run again. A message the SQLite daemon had leased when it stopped arrives queued (its
attempt ended with that daemon). The SQLite file is only read.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator

import attrs

from smtpmailer.queue import ACTIVE, QUEUED, QueueError

BATCH = 500
COLUMNS = (
    "id, state, priority, sender, created, age_from, next_attempt, attempts, last_error,"
    " size, updated"
)


@attrs.frozen
class MigrationReport:
    copied: int
    already_there: int

    @property
    def total(self) -> int:
        return self.copied + self.already_there


@attrs.frozen
class Carried:
    """One message as it moves: its row, its recipients, its body (None once sent) and
    the attempts kept with it (schema 5 on)."""

    row: tuple[object, ...]
    recipients: tuple[tuple[int, str, str, str | None], ...]
    body: bytes | None
    attempts: tuple[tuple[object, ...], ...] = ()


def read_sqlite(path: str) -> Iterator[list[Carried]]:
    if not os.path.exists(path):
        raise QueueError(f"no queue database at {path}")
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        history = source.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'attempts'"
        ).fetchone()
        after = ""
        while True:
            rows = source.execute(
                f"SELECT {COLUMNS} FROM messages WHERE id > ? ORDER BY id LIMIT ?",
                (after, BATCH),
            ).fetchall()
            if not rows:
                return
            batch = []
            for row in rows:
                message_id = row[0]
                recipients = tuple(
                    source.execute(
                        "SELECT position, address, state, last_error FROM recipients"
                        " WHERE message_id = ? ORDER BY position",
                        (message_id,),
                    ).fetchall()
                )
                body = source.execute(
                    "SELECT data FROM bodies WHERE message_id = ?", (message_id,)
                ).fetchone()
                attempts = tuple(
                    source.execute(
                        "SELECT number, at, seconds, relay, relay_address, replies FROM attempts"
                        " WHERE message_id = ? ORDER BY number",
                        (message_id,),
                    ).fetchall()
                    if history
                    else ()
                )
                values = list(row)
                if values[1] == ACTIVE:
                    values[1] = QUEUED
                batch.append(
                    Carried(tuple(values), recipients, bytes(body[0]) if body else None, attempts)
                )
            yield batch
            after = rows[-1][0]
    except sqlite3.DatabaseError as error:
        raise QueueError(f"cannot read {path}: {error}") from None
    finally:
        source.close()


def migrate(path: str, target: object) -> MigrationReport:
    """Copy every message of the SQLite queue at ``path`` into ``target`` (a store with
    ``import_messages``)."""
    copy = getattr(target, "import_messages", None)
    if copy is None:
        raise QueueError("queue migrate copies into a shared queue (backend = postgresql)")
    copied = seen = 0
    for batch in read_sqlite(path):
        new = copy(batch)
        copied += new
        seen += len(batch)
    return MigrationReport(copied, seen - copied)
