"""The SQLite backend: the queue contract, then what is SQLite's own (ids within one
millisecond, multi-row inserts, migrations, fsync per transaction, driver errors)."""

from __future__ import annotations

import os

import attrs
from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.queue import (
    STATES,
    Lease,
    NewMessage,
    Outcome,
    QueueError,
    QueueStore,
    RetryPolicy,
)
from smtpmailer.queue.ids import new_message_id
from smtpmailer.queue.sqlite import SQLiteQueue
from tests.queue_contract import POLICY, QueueContract, results


class RetryPolicyTests(SynchronousTestCase):
    def test_exponential_capped(self) -> None:
        delays = [POLICY.delay(n) for n in range(1, 8)]
        self.assertEqual(delays, [60, 120, 240, 480, 600, 600, 600])

    def test_jitter_shortens_by_at_most_a_fifth(self) -> None:
        policy = RetryPolicy(60, 2, 600, 3, 86400, random=lambda: 1.0)
        self.assertAlmostEqual(policy.delay(1), 48.0)
        self.assertAlmostEqual(policy.delay(9), 480.0)

    def test_give_up(self) -> None:
        self.assertIsNone(POLICY.give_up_reason(3, age_from=0, now=100))
        self.assertIn("retries exhausted after 4 attempts", POLICY.give_up_reason(4, 0, 100) or "")
        self.assertIn("older than max_age", POLICY.give_up_reason(1, 0, 86400) or "")

    def test_next_attempt_never_past_expiry(self) -> None:
        self.assertEqual(POLICY.next_attempt(5, age_from=0, now=86300), 86400)


class SQLiteContractTests(QueueContract, SynchronousTestCase):
    def open_store(self) -> QueueStore:
        if not hasattr(self, "path"):
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            self.path = os.path.join(directory, "queue.sqlite3")
        return SQLiteQueue(self.path)


class SQLiteStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.path = os.path.join(directory, "queue.sqlite3")
        self.store = SQLiteQueue(self.path)
        self.addCleanup(self.store.close)

    def add(self, *rcpts: str, priority: int = 5, now: float = 100.0) -> str:
        return self.store.enqueue(
            "s@x.org", list(rcpts) or ["r@y.org"], b"Subject: t\r\n\r\nb\r\n", priority, now, 1000
        )

    def stored_counts(self) -> dict[str, int]:
        return {state: n for state, n in self.store.counts().items() if state != "accepted"}

    def actual_counts(self) -> dict[str, int]:
        """What state_counts must say, counted the slow way."""
        counted = dict.fromkeys(STATES, 0)
        counted.update(
            self.store._db.execute("SELECT state, count(*) FROM messages GROUP BY state")
        )
        return counted

    def test_ids_are_unique_and_time_ordered(self) -> None:
        ids = [new_message_id(2_000_000_000.0 + i) for i in range(50)]
        self.assertEqual(len(set(ids)), 50)
        self.assertEqual(ids, sorted(ids))
        # Thousands in the same millisecond (a group commit) stay distinct and ordered.
        same = [new_message_id(2_000_001_000.0) for _ in range(5000)]
        self.assertEqual(len(set(same)), 5000)
        self.assertEqual(same, sorted(same))

    def test_a_batch_in_one_millisecond(self) -> None:
        from smtpmailer.queue import NewMessage

        batch = [NewMessage("s@x.org", ("r@y.org",), b"x", 5)] * 3000
        results = self.store.enqueue_many(batch, 500.0, 10**6)
        self.assertEqual(len(set(results)), 3000)
        self.assertEqual(self.store.counts()["queued"], 3000)

    def test_an_id_taken_by_another_process_costs_only_a_retry(self) -> None:
        """Another process may have made the same id in the same millisecond: the batch
        that meets it still goes in whole, each message with its recipients and body."""
        from smtpmailer.queue import NewMessage
        from smtpmailer.queue import sqlite as module

        taken = self.add("first@y.org")
        made = iter(["AAAAAAAAAAAAAA", taken, taken, "BBBBBBBBBBBBBB", "CCCCCCCCCCCCCC"])
        self.patch(module, "new_message_id", lambda now: next(made))
        batch = [
            NewMessage("s@x.org", ("a@y.org",), b"one", 5),
            NewMessage("s@x.org", ("b@y.org", "c@y.org"), b"two", 5),
        ]
        ids = self.store.enqueue_many(batch, 100.0, 1000)
        self.assertEqual(ids, ["BBBBBBBBBBBBBB", "CCCCCCCCCCCCCC"])
        self.assertEqual(
            [[r.address for r in self.store.show(i).recipients] for i in ids],
            [["a@y.org"], ["b@y.org", "c@y.org"]],
        )
        self.assertEqual([self.store.body(i) for i in ids], [b"one", b"two"])
        self.assertEqual(self.store.show(taken).recipients[0].address, "first@y.org")
        self.assertEqual(self.stored_counts(), self.actual_counts())

    def test_large_bodies_go_in_a_few_at_a_time(self) -> None:
        from smtpmailer.queue import NewMessage
        from smtpmailer.queue import sqlite as module

        self.patch(module, "_BODY_BYTES", 10)  # a body of 8 bytes or more fills the limit
        data = [b"a" * 8, b"b" * 8, b"c", b"d" * 30, b"e"]
        batch = [NewMessage("s@x.org", ("r@y.org",), body, 5) for body in data]
        ids = self.store.enqueue_many(batch, 100.0, 1000)
        self.assertEqual([self.store.body(i) for i in ids], data)

    def test_a_batch_of_outcomes_ends_as_one_by_one(self) -> None:
        """record() takes all-sent outcomes set by set: same rows, counts and Recorded as
        the general path taking each outcome alone, whatever the mix in the batch."""

        def play(batched: bool) -> tuple[list[object], list[object], list[object]]:
            store = SQLiteQueue(os.path.join(os.path.dirname(self.path), f"{batched}.sqlite3"))
            self.addCleanup(store.close)
            for n in range(6):
                store.enqueue("s@x.org", [f"a{n}@y.org", f"b{n}@y.org"], b"x", 5, 100.0 + n, 99)
            first = store.lease(200.0, 10, 60)
            # Message 0: b0 fails for good now; leased again below, a0 then gets sent.
            earlier = [
                Outcome(
                    first[0],
                    results(first[0], ("a0@y.org", "deferred"), ("b0@y.org", "failed")),
                    "r",
                ),
                *[Outcome(lease, results(lease), "r") for lease in first[1:]],
            ]
            store.record(earlier[:1], 210.0, POLICY)
            again = store.lease(400.0, 10, 60)
            leases = {lease.id: lease for lease in again}
            ids = [lease.id for lease in first]
            stale = attrs.evolve(leases[ids[4]], token="not-the-lease")
            outcomes = [
                Outcome(leases[ids[0]], results(leases[ids[0]], ("a0@y.org", "sent")), "r"),
                Outcome(
                    leases[ids[1]],
                    results(leases[ids[1]], ("a1@y.org", "sent"), ("b1@y.org", "sent")),
                    "r",
                ),
                Outcome(
                    leases[ids[2]],
                    results(leases[ids[2]], ("a2@y.org", "sent"), ("b2@y.org", "deferred")),
                    "r",
                ),
                Outcome(leases[ids[3]], results(leases[ids[3]], ("a3@y.org", "sent")), "r"),
                Outcome(stale, results(stale, ("a4@y.org", "sent"), ("b4@y.org", "sent")), "r"),
            ]
            if batched:
                recorded = store.record(outcomes, 500.0, POLICY)
            else:  # the general path, outcome by outcome
                with store._transaction() as db:
                    recorded = [store._record_one(db, o, 500.0, POLICY) for o in outcomes]
            db = store._db
            number = {message_id: n for n, message_id in enumerate(ids)}  # ids differ per file
            rows: list[object] = [
                (number[row[0]], *row[1:])
                for row in db.execute(
                    "SELECT id, state, attempts, next_attempt, lease_token IS NULL, last_error,"
                    " updated FROM messages ORDER BY created"
                )
            ]
            rows += [
                (number[row[0]], *row[1:])
                for row in db.execute("SELECT * FROM recipients ORDER BY message_id, position")
            ]
            rows += sorted(number[m] for (m,) in db.execute("SELECT message_id FROM bodies"))
            rows += sorted(store.counts().items())
            summary = [(r.state, r.attempts, r.stale, r.expired) for r in recorded]
            return rows, summary, [outcomes.index(r.outcome) for r in recorded]

        one, summary_one, order_one = play(False)
        many, summary_many, order_many = play(True)
        self.assertEqual(summary_many, summary_one)
        self.assertEqual(order_many, order_one)
        self.assertEqual(order_many, [0, 1, 2, 3, 4])  # each Recorded where its outcome was
        self.assertEqual(many, one)
        states = [state for state, *_ in summary_many]
        self.assertEqual(states, ["failed", "sent", "deferred", "deferred", "active"])

    def make_old_schema(self, version: int) -> None:
        """Turn the file into what smtpmailer wrote at ``version``: counts kept by triggers
        (schema 1 without the 'accepted' count), and here deliberately wrong."""
        db = self.store._db
        accepted = (
            "" if version == 1 else " UPDATE state_counts SET n = n + 1 WHERE state = 'accepted';"
        )
        db.executescript(
            "CREATE TRIGGER count_insert AFTER INSERT ON messages BEGIN"
            f" UPDATE state_counts SET n = n + 1 WHERE state = NEW.state;{accepted} END;"
            "CREATE TRIGGER count_delete AFTER DELETE ON messages BEGIN"
            " UPDATE state_counts SET n = n - 1 WHERE state = OLD.state; END;"
            "CREATE TRIGGER count_update AFTER UPDATE OF state ON messages"
            " WHEN OLD.state != NEW.state BEGIN"
            " UPDATE state_counts SET n = n - 1 WHERE state = OLD.state;"
            " UPDATE state_counts SET n = n + 1 WHERE state = NEW.state; END;"
            "UPDATE state_counts SET n = 99 WHERE state != 'accepted';"
        )
        if version == 1:
            db.execute("DELETE FROM state_counts WHERE state = 'accepted'")
        for column in ("relay", "relay_address"):  # schema 4's
            db.execute(f"ALTER TABLE messages DROP COLUMN {column}")
        db.execute("DROP TABLE attempts")  # schema 5's
        db.execute("ALTER TABLE messages DROP COLUMN meta")  # schema 6's
        db.execute("DROP INDEX messages_header_id")  # schema 7's
        db.execute("ALTER TABLE messages DROP COLUMN subject")
        db.execute("ALTER TABLE messages DROP COLUMN header_id")
        db.execute("DROP TABLE events")  # schema 8's
        db.execute("DROP TABLE webhook_cursors")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        self.store.close()

    def triggers(self) -> list[str]:
        return [
            row[0]
            for row in self.store._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            )
        ]

    def test_migration_from_schema_1_counts_what_was_accepted(self) -> None:
        self.add()
        self.add()
        self.make_old_schema(1)
        self.store = SQLiteQueue(self.path)
        self.assertEqual(self.store.counts()["accepted"], 2)
        self.assertEqual(self.stored_counts(), self.actual_counts())
        self.assertEqual(self.triggers(), [])
        self.add()
        self.assertEqual(self.store.counts()["accepted"], 3)
        self.assertEqual(self.store.counts()["queued"], 3)

    def test_migration_from_schema_2_recounts_and_drops_the_triggers(self) -> None:
        self.add()
        self.add()
        (lease, _) = self.store.lease(200, 10, 60)
        self.store.record([Outcome(lease, results(lease, ("r@y.org", "sent")), "r")], 201, POLICY)
        self.make_old_schema(2)
        self.store = SQLiteQueue(self.path)
        self.assertEqual(self.triggers(), [])
        self.assertEqual(self.stored_counts(), self.actual_counts())
        self.assertEqual((self.store.counts()["sent"], self.store.counts()["accepted"]), (1, 2))
        version = self.store._db.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        self.assertEqual(version.fetchone(), ("8",))  # through 3 to 7

    def test_triggers_an_older_smtpmailer_put_back_are_removed(self) -> None:
        """An older CLI opening the file re-creates its triggers before it refuses the
        schema; counting twice would follow. The next open removes them and recounts."""
        self.add()
        self.make_old_schema(3)
        self.store = SQLiteQueue(self.path)
        self.assertEqual(self.triggers(), [])
        self.assertEqual(self.stored_counts(), self.actual_counts())
        self.add()
        self.assertEqual(self.store.counts()["queued"], 2)

    def test_migration_from_schema_3_keeps_every_message_and_names_relays_from_then(
        self,
    ) -> None:
        self.add()
        self.add()
        (lease, _) = self.store.lease(200, 10, 60)
        self.store.record([Outcome(lease, results(lease, ("r@y.org", "sent")), "r")], 201, POLICY)
        self.make_old_schema(3)
        # A CLI upgraded before the daemon restarts can still look at the old file.
        reader = SQLiteQueue(self.path, read_only=True)
        self.assertEqual(
            sorted((m.state, m.relay) for m in reader.messages()),
            [("active", None), ("sent", None)],
        )
        reader.close()
        self.store = SQLiteQueue(self.path)
        version = self.store._db.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        self.assertEqual(version.fetchone(), ("8",))
        self.assertEqual(self.store.counts()["sent"], 1)
        (lease,) = self.store.lease(300, 10, 60)
        outcome = Outcome(
            lease, results(lease, ("r@y.org", "sent")), "smtp.example.com[192.0.2.1]:587", "main"
        )
        self.store.record([outcome], 301, POLICY)
        shown = self.store.show(lease.id)
        self.assertEqual(
            (shown.relay, shown.relay_address), ("main", "smtp.example.com[192.0.2.1]:587")
        )
        self.assertEqual(shown.as_json(301)["relay"], "main")

    def test_migration_from_schema_4_keeps_attempts_from_then(self) -> None:
        self.add()
        (lease,) = self.store.lease(200, 10, 60)
        self.store.record(
            [Outcome(lease, results(lease, ("r@y.org", "deferred")), "r")], 201, POLICY
        )
        self.store._db.execute("DROP TABLE attempts")
        self.store._db.execute("ALTER TABLE messages DROP COLUMN meta")
        self.store._db.execute("DROP INDEX messages_header_id")
        self.store._db.execute("ALTER TABLE messages DROP COLUMN subject")
        self.store._db.execute("ALTER TABLE messages DROP COLUMN header_id")
        self.store._db.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        self.store.close()
        reader = SQLiteQueue(self.path, read_only=True)
        shown = reader.show(lease.id)
        self.assertEqual((shown.attempts, shown.history), (1, ()), "no history before 5")
        reader.close()
        self.store = SQLiteQueue(self.path)
        version = self.store._db.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        self.assertEqual(version.fetchone(), ("8",))
        (lease,) = self.store.lease(10_000, 10, 60)
        self.store.record(
            [Outcome(lease, results(lease, ("r@y.org", "sent")), "r")], 10_001, POLICY
        )
        shown = self.store.show(lease.id)
        self.assertEqual([(a.number, a.at) for a in shown.history], [(1, 10_001)])

    def test_a_messages_attempts_go_with_it(self) -> None:
        kept = self.add(), self.add(), self.add()
        for lease in self.store.lease(200, 10, 60):
            status = "sent" if lease.id != kept[2] else "failed"
            self.store.record(
                [Outcome(lease, results(lease, ("r@y.org", status)), "r")], 201, POLICY
            )

        def attempts() -> int:
            return int(self.store._db.execute("SELECT count(*) FROM attempts").fetchone()[0])

        self.assertEqual(attempts(), 3)
        self.store.delete(kept[2])
        self.assertEqual(attempts(), 2)
        self.assertEqual(self.store.purge_sent(10_000, 100), 2)
        self.assertEqual(attempts(), 0)

    def test_only_turns_with_new_mail_wait_for_fsync(self) -> None:
        """A 250 waits on the commit of its message, so accepting mail waits for the disk;
        a lease is undone at every start and a lost outcome only means a second delivery,
        so a turn of outcomes and leases alone does not wait. The connection is back to
        FULL after each."""

        def turn(outcomes: list[Outcome], new: int, lease_due: bool = False) -> list[Lease]:
            items = [NewMessage("s@x.org", ("r@y.org",), b"Subject: hi\r\n\r\nhi\r\n", 5)] * new
            return self.store.record_and_enqueue(
                outcomes, POLICY, items, 100, 10, 60, 200, lease_due
            )[2]

        statements: list[str] = []
        self.store._db.set_trace_callback(statements.append)
        (lease,) = turn([], 1)  # new mail, leased in its own commit
        turn([Outcome(lease, results(lease, ("r@y.org", "sent")), "r")], 0)
        turn([], 0, lease_due=True)  # the poller's lease alone
        turn([], 1)
        self.store._db.set_trace_callback(None)
        begins = [i for i, statement in enumerate(statements) if statement == "BEGIN IMMEDIATE"]
        self.assertEqual(len(begins), 4)
        unsynced = [i for i in begins if statements[i - 1] == "PRAGMA synchronous = NORMAL"]
        self.assertEqual(unsynced, begins[1:3])  # the outcome, the lease
        for begin in unsynced:
            commit = statements.index("COMMIT", begin)
            self.assertEqual(statements[commit + 1], "PRAGMA synchronous = FULL")
        self.assertEqual(self.store._db.execute("PRAGMA synchronous").fetchone(), (2,))
        self.assertEqual(self.store.counts()["sent"], 1)  # the outcome was committed all the same

    def test_statement_journals_stay_in_memory(self) -> None:
        """A turn that records sent 10 KB messages and takes new ones has its INSERT of
        bodies journaled by SQLite; with temp files that journal cost a file a turn. The
        writer keeps it in memory, reopened or new; the read-only opening is left alone."""
        self.assertEqual(self.store._db.execute("PRAGMA temp_store").fetchone(), (2,))
        self.store.close()
        reopened = SQLiteQueue(self.path)
        self.addCleanup(reopened.close)
        self.assertEqual(reopened._db.execute("PRAGMA temp_store").fetchone(), (2,))
        looking = SQLiteQueue(self.path, read_only=True)
        self.addCleanup(looking.close)
        self.assertEqual(looking._db.execute("PRAGMA temp_store").fetchone(), (0,))

    def test_a_failed_lease_leaves_the_connection_synced(self) -> None:
        self.add()
        self.store._db.execute("DROP TABLE bodies")  # the lease fails half-way through
        self.assertRaises(QueueError, self.store.lease, 200, 10, 60)
        self.assertFalse(self.store._db.in_transaction)
        self.assertEqual(self.store.counts()["queued"], 1)  # rolled back
        self.assertEqual(self.store._db.execute("PRAGMA synchronous").fetchone(), (2,))

    def test_record_and_enqueue_is_one_transaction(self) -> None:
        """The daemon's turn: outcomes first (they free room in the queue), then the new
        messages; a failure anywhere undoes both, so the lease stays as it was."""
        from smtpmailer.queue import NewMessage

        old = self.add("a@y.org")
        (lease,) = self.store.lease(100, 10, 60)
        outcome = Outcome(lease, results(lease, ("a@y.org", "sent")), "r")
        new = [NewMessage("s@x.org", ("b@y.org",), b"new", 5), NewMessage("s@x.org", (), b"", 5)]
        self.store._db.execute("DROP TABLE bodies")  # the insert fails half-way through
        self.assertRaises(
            QueueError,  # the driver's error, as the queue's own
            self.store.record_and_enqueue,
            [outcome],
            POLICY,
            new,
            1000,
            0,
            60,
            101,
        )
        self.assertEqual(self.store.show(old).state, "active")
        self.assertEqual(self.stored_counts(), self.actual_counts())
        self.assertEqual(self.store.counts()["accepted"], 1)
        self.store._db.execute("CREATE TABLE bodies (message_id TEXT PRIMARY KEY, data BLOB)")
        # The outcome frees the one place the queue has for the new message.
        recorded, ids, leases = self.store.record_and_enqueue([outcome], POLICY, new, 1, 5, 60, 101)
        self.assertEqual([(r.outcome, r.state) for r in recorded], [(outcome, "sent")])
        self.assertIsInstance(ids[0], str)
        self.assertEqual(str(ids[1]), "a message needs at least one recipient")
        self.assertEqual([lease.id for lease in leases], [ids[0]])
        self.assertEqual(self.store.show(old).state, "sent")
        self.assertEqual(self.store.show(ids[0]).state, "active")
        self.assertEqual(self.stored_counts(), self.actual_counts())

    def test_corrupt_file_is_a_clear_error(self) -> None:
        self.store.close()
        with open(self.path, "wb") as handle:
            handle.write(b"this is not a database" * 100)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.remove(self.path + suffix)
        with self.assertRaises(QueueError) as caught:
            SQLiteQueue(self.path)
        self.assertIn(
            f"cannot open queue database {self.path}: file is not a database", str(caught.exception)
        )
        self.store = SQLiteQueue(os.path.join(os.path.dirname(self.path), "fresh.sqlite3"))

    def test_missing_directory_is_a_clear_error(self) -> None:
        with self.assertRaises(QueueError) as caught:
            SQLiteQueue("/nonexistent/dir/q.sqlite3")
        self.assertIn("queue directory /nonexistent/dir does not exist", str(caught.exception))

    # --- driver errors leave the store as the queue's own ---

    def test_a_full_disk_is_no_space_and_writes_nothing(self) -> None:
        """SQLITE_FULL, made real by capping the file's size (max_page_count)."""
        from smtpmailer.queue import NoSpace

        kept = self.add()
        (pages,) = self.store._db.execute("PRAGMA page_count").fetchone()
        self.store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
        with self.assertRaises(NoSpace) as caught:
            self.store.enqueue("s@x.org", ["r@y.org"], b"x" * 200_000, 5, 101.0, 1000)
        self.assertEqual(
            str(caught.exception),
            f"queue storage is full: no space left on device ({self.path})",
        )
        self.assertEqual(caught.exception.kind, "full")  # answered as a full queue
        self.assertEqual([m.id for m in self.store.messages()], [kept])
        self.assertEqual(self.stored_counts(), self.actual_counts())
        self.store._db.execute("PRAGMA max_page_count = 1073741823")  # space is back
        self.assertIsInstance(self.add(), str)

    def test_a_held_write_lock_is_store_busy(self) -> None:
        import sqlite3

        from smtpmailer.queue import StoreBusy

        self.store.close()
        self.store = SQLiteQueue(self.path, busy_timeout=0.05)
        other = sqlite3.connect(self.path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        self.assertRaises(StoreBusy, self.add)
        other.execute("ROLLBACK")
        self.assertIsInstance(self.add(), str)

    def test_damage_found_after_opening_is_queue_corrupt(self) -> None:
        from smtpmailer.queue import QueueCorrupt

        for n in range(50):
            self.add(now=float(n))
        self.store.close()
        with open(self.path, "r+b") as handle:  # garbage over the tables, header intact
            handle.seek(4096)
            handle.write(os.urandom(4096 * 3))
        with self.assertRaises(QueueCorrupt) as caught:
            store = SQLiteQueue(self.path)
            self.addCleanup(store.close)
            list(store.messages())
        self.assertIn(self.path, str(caught.exception))
        self.assertIn("the file is damaged", str(caught.exception))
        self.store = SQLiteQueue(os.path.join(os.path.dirname(self.path), "fresh.sqlite3"))

    def test_read_only_opens_write_nothing(self) -> None:
        message_id = self.add()
        self.store.close()
        before = os.stat(self.path).st_mtime_ns, os.path.getsize(self.path)
        reader = SQLiteQueue(self.path, read_only=True)
        self.addCleanup(reader.close)
        self.assertEqual(reader.show(message_id).state, "queued")
        self.assertRaises(QueueError, reader.hold, message_id)
        self.assertEqual((os.stat(self.path).st_mtime_ns, os.path.getsize(self.path)), before)
        missing = os.path.join(os.path.dirname(self.path), "none.sqlite3")
        empty = SQLiteQueue(missing, read_only=True)
        self.addCleanup(empty.close)
        self.assertEqual(list(empty.messages()), [])
        self.assertFalse(os.path.exists(missing))
        self.store = SQLiteQueue(self.path)

    def test_queue_files_are_private_whatever_the_umask(self) -> None:
        """The file and its -wal and -shm followed the umask (0644 under 022)."""
        self.store.close()
        os.remove(self.path)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.remove(self.path + suffix)
        old = os.umask(0o022)
        try:
            self.store = SQLiteQueue(self.path)
            self.add()
        finally:
            os.umask(old)
        for suffix in ("", "-wal", "-shm"):
            self.assertEqual(oct(os.stat(self.path + suffix).st_mode & 0o777), "0o600", suffix)
