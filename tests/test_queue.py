"""The SQLite queue: every state transition, ordering, leases, per-recipient outcomes."""

from __future__ import annotations

import os
import sqlite3

import attrs
from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.queue import (
    STATES,
    NoSuchMessage,
    Outcome,
    QueueError,
    QueueFull,
    RecipientResult,
    RetryPolicy,
    WrongState,
)
from smtpmailer.queue.sqlite import SQLiteQueue, new_message_id

POLICY = RetryPolicy(
    retry_delay=60,
    backoff_factor=2,
    max_retry_delay=600,
    max_retries=3,
    max_age=86400,
    random=lambda: 0.0,
)


def results(lease: object, *pairs: tuple[str, str]) -> tuple[RecipientResult, ...]:
    return tuple(
        RecipientResult(address, status, reply)
        for address, status, reply in [
            (a, s, f"{'250' if s == 'sent' else '451' if s == 'deferred' else '550'} x")
            for a, s in pairs
        ]
    )


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


class StoreTests(SynchronousTestCase):
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

    def test_enqueue_and_counts(self) -> None:
        message_id = self.add("a@y.org", "b@y.org")
        info = self.store.show(message_id)
        self.assertEqual(info.state, "queued")
        self.assertEqual([r.address for r in info.recipients], ["a@y.org", "b@y.org"])
        self.assertEqual(self.store.counts()["queued"], 1)
        self.assertEqual(self.store.body(message_id), b"Subject: t\r\n\r\nb\r\n")

    def test_queue_full_writes_nothing(self) -> None:
        self.store.enqueue("s@x.org", ["r@y.org"], b"x", 5, 1.0, 2)
        self.store.enqueue("s@x.org", ["r@y.org"], b"x", 5, 1.0, 2)
        with self.assertRaises(QueueFull) as caught:
            self.store.enqueue("s@x.org", ["r@y.org"], b"x", 5, 1.0, 2)
        self.assertIn("max_queue_size = 2", str(caught.exception))
        self.assertEqual(sum(1 for _ in self.store.messages()), 2)

    def test_priority_first_then_oldest(self) -> None:
        low = self.add(priority=1, now=1)
        old_normal = self.add(priority=5, now=2)
        new_normal = self.add(priority=5, now=3)
        high = self.add(priority=9, now=4)
        leases = self.store.lease(now=10, limit=3, lease_seconds=60)
        self.assertEqual([lease.id for lease in leases], [high, old_normal, new_normal])
        self.assertEqual([lease.id for lease in self.store.lease(10, 10, 60)], [low])
        self.assertEqual(self.store.lease(10, 10, 60), [])

    def test_sent(self) -> None:
        message_id = self.add("a@y.org")
        (lease,) = self.store.lease(200, 10, 60)
        self.assertEqual(self.store.show(message_id).state, "active")
        (recorded,) = self.store.record(
            [Outcome(lease, results(lease, ("a@y.org", "sent")), "r")], 201, POLICY
        )
        self.assertEqual((recorded.state, recorded.attempts), ("sent", 1))
        self.assertEqual(self.store.counts()["sent"], 1)
        self.assertRaises(WrongState, self.store.body, message_id)  # content is not kept

    def test_deferred_recipients_only_are_retried(self) -> None:
        message_id = self.add("a@y.org", "b@y.org", "c@y.org")
        (lease,) = self.store.lease(200, 10, 60)
        outcome = results(
            lease, ("a@y.org", "sent"), ("b@y.org", "deferred"), ("c@y.org", "failed")
        )
        (recorded,) = self.store.record([Outcome(lease, outcome, "r")], 200, POLICY)
        self.assertEqual(recorded.state, "deferred")
        info = self.store.show(message_id)
        self.assertEqual(info.next_attempt, 260)
        self.assertEqual(
            {r.address: r.state for r in info.recipients},
            {"a@y.org": "sent", "b@y.org": "pending", "c@y.org": "failed"},
        )
        self.assertEqual(self.store.lease(259, 10, 60), [])  # not due yet
        (again,) = self.store.lease(260, 10, 60)
        self.assertEqual(again.recipients, ("b@y.org",))
        self.store.record([Outcome(again, results(again, ("b@y.org", "sent")), "r")], 261, POLICY)
        self.assertEqual(self.store.show(message_id).state, "failed")  # c failed for good

    def test_backoff_between_attempts(self) -> None:
        message_id = self.add()
        now = 200.0
        for expected_delay in (60, 120, 240):
            (lease,) = self.store.lease(now, 10, 60)
            self.store.record(
                [Outcome(lease, results(lease, ("r@y.org", "deferred")), "r")], now, POLICY
            )
            info = self.store.show(message_id)
            self.assertEqual(info.next_attempt - now, expected_delay)
            now = info.next_attempt

    def test_max_retries_ends_in_failed(self) -> None:
        message_id = self.add()
        now = 200.0
        for _ in range(4):  # the first attempt and max_retries = 3 retries
            (lease,) = self.store.lease(now, 10, 60)
            (recorded,) = self.store.record(
                [Outcome(lease, results(lease, ("r@y.org", "deferred")), "r")], now, POLICY
            )
            now += 10_000
        self.assertEqual(recorded.state, "failed")
        self.assertEqual(recorded.expired[0][0], "r@y.org")
        info = self.store.show(message_id)
        self.assertIn("retries exhausted after 4 attempts", info.last_error or "")
        self.assertIn("451 x", info.recipients[0].last_error or "")

    def test_max_age_ends_in_failed(self) -> None:
        self.add(now=0)
        (lease,) = self.store.lease(86400, 10, 60)
        (recorded,) = self.store.record(
            [Outcome(lease, results(lease, ("r@y.org", "deferred")), "r")], 86400, POLICY
        )
        self.assertEqual(recorded.state, "failed")

    def test_expired_lease_returns(self) -> None:
        message_id = self.add()
        (first,) = self.store.lease(200, 10, lease_seconds=60)
        self.assertEqual(self.store.lease(259, 10, 60), [])
        (second,) = self.store.lease(261, 10, 60)
        self.assertEqual(second.id, message_id)
        self.assertNotEqual(first.token, second.token)
        # The first attempt's late word is ignored: the lease is no longer its own.
        (stale,) = self.store.record(
            [Outcome(first, results(first, ("r@y.org", "sent")), "r")], 262, POLICY
        )
        self.assertTrue(stale.stale)
        self.assertEqual(self.store.show(message_id).state, "active")

    def test_reclaim_and_release(self) -> None:
        a, b = self.add(now=1), self.add(now=2)
        leases = self.store.lease(10, 10, 600)
        self.assertEqual(self.store.release_leases(leases[:1]), 1)
        self.assertEqual(self.store.show(a).state, "queued")
        self.assertEqual(self.store.reclaim_all_leases(), 1)
        self.assertEqual(self.store.show(b).state, "queued")

    def test_counts_survive_reopen(self) -> None:
        self.add()
        self.add()
        (lease, _) = self.store.lease(200, 10, 60)
        self.store.record([Outcome(lease, results(lease, ("r@y.org", "sent")), "r")], 201, POLICY)
        self.store.close()
        self.store = SQLiteQueue(self.path)
        self.assertEqual(
            self.store.counts(),
            {
                "queued": 0,
                "deferred": 0,
                "active": 1,
                "held": 0,
                "failed": 0,
                "sent": 1,
                "accepted": 2,
            },
        )

    def actual_counts(self) -> dict[str, int]:
        """What state_counts must say, counted the slow way."""
        counted = dict.fromkeys(STATES, 0)
        counted.update(
            self.store._db.execute("SELECT state, count(*) FROM messages GROUP BY state")
        )
        return counted

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

    def stored_counts(self) -> dict[str, int]:
        return {state: n for state, n in self.store.counts().items() if state != "accepted"}

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
        self.assertEqual(version.fetchone(), ("3",))

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

    def test_counts_match_the_messages_after_every_operation(self) -> None:
        """Every statement that moves a message between states keeps state_counts right."""
        checks = 0

        def check() -> None:
            nonlocal checks
            checks += 1
            self.assertEqual(self.stored_counts(), self.actual_counts())

        ids = [self.add("a@y.org", "b@y.org", now=100 + i) for i in range(8)]
        check()
        self.store.hold(ids[0])
        check()
        self.assertEqual(self.store.hold_all(), 7)
        check()
        self.store.release(ids[0], 150)
        check()
        self.assertEqual(self.store.release_all(150), 7)
        check()
        leases = self.store.lease(200, 6, 60)
        check()
        self.assertEqual(self.store.release_leases(leases[:1]), 1)
        check()
        outcomes = [
            Outcome(leases[1], results(leases[1], ("a@y.org", "sent"), ("b@y.org", "sent")), "r"),
            Outcome(leases[2], results(leases[2], ("a@y.org", "sent"), ("b@y.org", "failed")), "r"),
            Outcome(
                leases[3], results(leases[3], ("a@y.org", "deferred"), ("b@y.org", "sent")), "r"
            ),
        ]
        self.store.record(outcomes, 201, POLICY)
        check()
        self.store.record(outcomes[:1], 202, POLICY)  # stale: already recorded
        check()
        self.assertEqual(len(self.store.lease(10_000, 10, 60)), 6)  # expired and due come back
        check()
        self.assertEqual(self.store.reclaim_all_leases(), 6)
        check()
        self.store.retry(outcomes[1].lease.id, 10_001)  # failed -> queued
        check()
        deferred = self.store.lease(10_002, 1, 60)
        self.store.record(
            [Outcome(deferred[0], results(deferred[0], ("a@y.org", "deferred")), "r")],
            10_002,
            POLICY,
        )
        check()
        self.store.retry(deferred[0].id, 10_003)  # deferred -> queued
        check()
        self.store.hold(deferred[0].id)
        self.assertGreater(self.store.retry_all(10_004), -1)
        check()
        self.store.delete(deferred[0].id)
        check()
        self.assertEqual(self.store.purge_sent(before=10**6, limit=10), 1)
        check()
        self.assertEqual(self.store.counts()["accepted"], 8)
        self.assertEqual(checks, 17)

    def test_only_leases_commit_without_waiting_for_fsync(self) -> None:
        """A lease is undone at every start, so it need not wait for the disk; accepting
        mail and recording outcomes must, and the connection is back to FULL after."""
        statements: list[str] = []
        self.store._db.set_trace_callback(statements.append)
        self.add()
        (lease,) = self.store.lease(200, 10, 60)
        self.store.record([Outcome(lease, results(lease, ("r@y.org", "sent")), "r")], 201, POLICY)
        self.store._db.set_trace_callback(None)
        begins = [i for i, statement in enumerate(statements) if statement == "BEGIN IMMEDIATE"]
        self.assertEqual(len(begins), 3)  # enqueue, lease, record
        unsynced = [
            statements[i + 1] for i in begins if statements[i - 1] == "PRAGMA synchronous = NORMAL"
        ]
        self.assertEqual(len(unsynced), 1)
        self.assertIn("WHERE state = 'active' AND next_attempt <= 200", unsynced[0])  # the lease
        lease_commit = statements.index("COMMIT", begins[1])
        self.assertEqual(statements[lease_commit + 1], "PRAGMA synchronous = FULL")
        self.assertEqual(self.store._db.execute("PRAGMA synchronous").fetchone(), (2,))

    def test_a_failed_lease_leaves_the_connection_synced(self) -> None:
        self.add()
        self.store._db.execute("DROP TABLE bodies")  # the lease fails half-way through
        self.assertRaises(sqlite3.OperationalError, self.store.lease, 200, 10, 60)
        self.assertFalse(self.store._db.in_transaction)
        self.assertEqual(self.store.counts()["queued"], 1)  # rolled back
        self.assertEqual(self.store._db.execute("PRAGMA synchronous").fetchone(), (2,))

    def test_enqueue_and_lease_hands_new_mail_straight_to_delivery(self) -> None:
        from smtpmailer.queue import NewMessage

        items = [
            NewMessage("s@x.org", ("a@y.org",), b"low", 1),
            NewMessage("s@x.org", ("b@y.org",), b"high", 9),
            NewMessage("s@x.org", ("c@y.org",), b"normal", 5),
        ]
        ids, leases = self.store.enqueue_and_lease(items, 100.0, 1000, 2, 60)
        self.assertEqual([lease.data for lease in leases], [b"high", b"normal"])  # by priority
        self.assertEqual([self.store.show(i).state for i in ids], ["queued", "active", "active"])
        self.assertEqual(self.stored_counts(), self.actual_counts())
        self.assertEqual(self.store.counts()["accepted"], 3)
        # The leases are real: their outcomes are recorded, and they expire like any other.
        self.store.record(
            [Outcome(leases[0], results(leases[0], ("b@y.org", "sent")), "r")], 101, POLICY
        )
        self.assertEqual(self.store.show(ids[1]).state, "sent")
        self.assertEqual({lease.id for lease in self.store.lease(161, 10, 60)}, {ids[0], ids[2]})

    def test_enqueue_and_lease_leaves_new_mail_behind_older_queued_mail(self) -> None:
        from smtpmailer.queue import NewMessage

        older = self.add()
        _, leases = self.store.enqueue_and_lease(
            [NewMessage("s@x.org", ("a@y.org",), b"new", 9)], 100.0, 1000, 5, 60
        )
        self.assertEqual(leases, [])
        self.assertEqual(self.store.show(older).state, "queued")
        self.assertEqual(self.store.counts()["queued"], 2)

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
            sqlite3.OperationalError,
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

    def test_hold_release_retry_delete(self) -> None:
        message_id = self.add()
        self.store.hold(message_id)
        self.assertEqual(self.store.lease(200, 10, 60), [])
        self.assertRaises(WrongState, self.store.hold, message_id)
        self.store.release(message_id, 300)
        self.assertRaises(WrongState, self.store.release, message_id, 300)
        (lease,) = self.store.lease(300, 10, 60)
        self.assertRaises(WrongState, self.store.delete, message_id)  # being delivered
        self.assertRaises(WrongState, self.store.hold, message_id)
        self.store.record([Outcome(lease, results(lease, ("r@y.org", "failed")), "r")], 301, POLICY)
        self.store.retry(message_id, 400)
        info = self.store.show(message_id)
        self.assertEqual((info.state, info.attempts), ("queued", 0))
        self.assertEqual(info.recipients[0].state, "pending")
        self.store.delete(message_id)
        self.assertRaises(NoSuchMessage, self.store.show, message_id)
        counts = self.store.counts()
        self.assertEqual(sum(counts[state] for state in STATES), 0)
        self.assertEqual(counts["accepted"], 1)  # history: it was accepted once

    def test_retry_all_flushes_deferred(self) -> None:
        for _ in range(3):
            self.add()
        for lease in self.store.lease(200, 10, 60):
            self.store.record(
                [Outcome(lease, results(lease, ("r@y.org", "deferred")), "r")], 200, POLICY
            )
        self.assertEqual(self.store.lease(201, 10, 60), [])
        self.assertEqual(self.store.retry_all(201), 3)
        self.assertEqual(len(self.store.lease(201, 10, 60)), 3)

    def test_purge_sent(self) -> None:
        self.add()
        (lease,) = self.store.lease(200, 10, 60)
        self.store.record([Outcome(lease, results(lease, ("r@y.org", "sent")), "r")], 201, POLICY)
        self.assertEqual(self.store.purge_sent(before=201, limit=10), 0)
        self.assertEqual(self.store.purge_sent(before=202, limit=10), 1)
        self.assertEqual(self.store.counts()["sent"], 0)

    def test_recent_outcomes_and_oldest(self) -> None:
        self.add(now=50)
        self.add(now=60)
        (lease, _) = self.store.lease(200, 10, 60)
        self.store.record([Outcome(lease, results(lease, ("r@y.org", "sent")), "r")], 201, POLICY)
        self.assertEqual(
            self.store.recent_outcomes(since=100), {"sent": 1, "failed": 0, "deferred": 0}
        )
        self.assertEqual(self.store.oldest_pending(), 60)

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


class EnqueueManyTests(StoreTests):
    def test_one_transaction_each_item_its_own_answer(self) -> None:
        from smtpmailer.queue import NewMessage

        items = [
            NewMessage("s@x.org", ("a@y.org",), b"one", 5),
            NewMessage("s@x.org", (), b"no recipients", 5),
            NewMessage("s@x.org", ("b@y.org",), b"two", 9),
            NewMessage("s@x.org", ("c@y.org",), b"over the limit", 5),
        ]
        results = self.store.enqueue_many(items, 100.0, max_queue_size=2)
        self.assertIsInstance(results[0], str)
        self.assertEqual(str(results[1]), "a message needs at least one recipient")
        self.assertIsInstance(results[2], str)
        self.assertIsInstance(results[3], QueueFull)
        self.assertEqual(self.store.counts()["queued"], 2)
        self.assertEqual(self.store.body(results[2]), b"two")  # type: ignore[arg-type]
