"""Checking a SQLite queue file, and salvaging what can still be read from a damaged one.

``check`` runs SQLite's integrity check. ``salvage`` copies every message whose row,
recipients and body can still be read into a fresh queue file, message by message (a
damaged page costs the messages on it, not the rest), then puts the new file in place and
keeps the damaged one beside it. Messages that were being delivered go back to queued.
Both run with the daemon stopped (the CLI checks the state_dir lock).
"""

from __future__ import annotations

import os
import sqlite3
import time

import attrs

from smtpmailer.queue import ACTIVE, QUEUED, STATES, QueueError
from smtpmailer.queue.sqlite import SQLiteQueue

# After the last readable row, this many rowids in a row that cannot be read end the probe.
PROBE_PAST_LAST = 1000

_COLUMNS = (
    "id, state, priority, sender, created, age_from, next_attempt, attempts, "
    "lease_token, last_error, size, updated"
)


@attrs.frozen
class Salvage:
    copied: int
    lost: tuple[str, ...]  # ids whose recipients or body could not be read
    unreadable_rows: int  # rows of the messages table that could not be read at all
    kept: str  # where the damaged file now is


def check(path: str, most: int = 20) -> list[str]:
    """SQLite's integrity check of the file: [] when it is sound, else up to ``most``
    problems, each one line."""
    if not os.path.exists(path):
        raise QueueError(f"no queue database at {path}")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute(f"PRAGMA integrity_check({most})").fetchall()
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        return [str(error)]
    problems = [str(row[0]) for row in rows]
    return [] if problems == ["ok"] else problems


def _message_rows(source: sqlite3.Connection) -> tuple[list[tuple[object, ...]], int]:
    """Every messages row that can be read: by one scan, or row by row past damage."""
    try:
        return source.execute(f"SELECT {_COLUMNS} FROM messages").fetchall(), 0
    except sqlite3.DatabaseError:
        pass
    rows: list[tuple[object, ...]] = []
    unreadable = 0
    rowid, misses = 0, 0
    while misses < PROBE_PAST_LAST:
        rowid += 1
        try:
            row = source.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE rowid = ?", (rowid,)
            ).fetchone()
        except sqlite3.DatabaseError:
            unreadable += 1
            misses += 1
            continue
        if row is None:
            misses += 1
            continue
        misses = 0
        rows.append(row)
    return rows, unreadable


def salvage(path: str, now: float | None = None) -> Salvage:
    """Copy what can be read of ``path`` into a new queue file and put it in place; the
    damaged file is kept as ``PATH.damaged-TIME``."""
    now = time.time() if now is None else now
    if not os.path.exists(path):
        raise QueueError(f"no queue database at {path}")
    fresh_path = f"{path}.salvaged"
    for leftover in (fresh_path, fresh_path + "-wal", fresh_path + "-shm"):
        if os.path.exists(leftover):
            os.remove(leftover)
    source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows, unreadable = _message_rows(source)
        fresh = SQLiteQueue(fresh_path)
        copied, lost = 0, []
        try:
            db = fresh._db
            db.execute("BEGIN IMMEDIATE")
            for row in rows:
                message_id = str(row[0])
                try:
                    recipients = source.execute(
                        "SELECT position, address, state, last_error FROM recipients"
                        " WHERE message_id = ? ORDER BY position",
                        (message_id,),
                    ).fetchall()
                    body = source.execute(
                        "SELECT data FROM bodies WHERE message_id = ?", (message_id,)
                    ).fetchone()
                except sqlite3.DatabaseError:
                    lost.append(message_id)
                    continue
                state = str(row[1])
                if not recipients or (body is None and state != "sent"):
                    lost.append(message_id)
                    continue
                values = list(row)
                if state == ACTIVE:  # its attempt ended with the damage: deliver again
                    values[1], values[6], values[8] = QUEUED, now, None
                db.execute(
                    f"INSERT INTO messages ({_COLUMNS}) VALUES ({', '.join('?' * 12)})",
                    values,
                )
                db.executemany(
                    "INSERT INTO recipients (message_id, position, address, state, last_error)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(message_id, *recipient) for recipient in recipients],
                )
                if body is not None:
                    db.execute(
                        "INSERT INTO bodies (message_id, data) VALUES (?, ?)",
                        (message_id, body[0]),
                    )
                copied += 1
            db.execute(
                "UPDATE state_counts SET n = (SELECT count(*) FROM messages"
                " WHERE messages.state = state_counts.state) WHERE state IN"
                f" ({', '.join('?' * len(STATES))})",
                STATES,
            )
            db.execute("UPDATE state_counts SET n = ? WHERE state = 'accepted'", (copied,))
            db.execute("COMMIT")
        finally:
            fresh.close()
    finally:
        source.close()
    kept = f"{path}.damaged-{time.strftime('%Y%m%d%H%M%S', time.localtime(now))}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, kept + suffix)
    os.replace(fresh_path, path)
    return Salvage(copied, tuple(lost), unreadable, kept)
