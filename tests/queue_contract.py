"""The queue contract: what every QueueStore backend must do, written once.

Every state transition, leases and their tokens, expiry, priorities and order, counts,
max_queue_size, per-recipient outcomes, hold/release, retry of failed recipients only.
A backend's test module defines a TestCase that mixes QueueContract in and says how to
open, reopen and close its store (``open_store``); nothing here knows which backend runs.
"""

from __future__ import annotations

from typing import Any

import attrs

from smtpmailer.queue import (
    STATES,
    NoSuchMessage,
    Outcome,
    QueueFull,
    QueueStore,
    RecipientResult,
    RetryPolicy,
    WrongState,
)

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


class QueueContract:
    """Mixed into a SynchronousTestCase; ``open_store`` opens the backend's store on the
    same queue each time it is called (a reopen sees what was committed)."""

    store: QueueStore

    def open_store(self) -> QueueStore:
        raise NotImplementedError

    def setUp(self) -> None:
        self.store = self.open_store()
        self.addCleanup(lambda: self.store.close())  # type: ignore[attr-defined]

    def reopen(self) -> None:
        self.store.close()
        self.store = self.open_store()

    def actual_counts(self) -> dict[str, int]:
        """What counts() must say, counted the slow way, through the public interface."""
        counted = dict.fromkeys(STATES, 0)
        for info in self.store.messages():
            counted[info.state] += 1
        return counted

    def add(self, *rcpts: str, priority: int = 5, now: float = 100.0) -> str:
        return self.store.enqueue(
            "s@x.org", list(rcpts) or ["r@y.org"], b"Subject: t\r\n\r\nb\r\n", priority, now, 1000
        )

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

    def test_a_batch_is_taken_whole_or_not_at_all(self) -> None:
        from smtpmailer.queue import NewMessage

        self.add()

        def batch(name: str, size: int) -> list[NewMessage]:
            return [
                NewMessage("s@x.org", (f"{name}{n}@y.org",), b"x", 5, batch=name)
                for n in range(size)
            ]

        single = NewMessage("s@x.org", ("one@y.org",), b"x", 5)
        results = self.store.enqueue_many([*batch("a", 3), single, *batch("b", 3)], 1.0, 6)
        self.assertEqual([isinstance(r, str) for r in results], [True] * 4 + [False] * 3)
        self.assertIsInstance(results[4], QueueFull)
        self.assertIn("a batch of 3 does not fit", str(results[4]))
        addresses = {info.recipients[0].address for info in self.store.messages()}
        self.assertEqual(addresses, {"r@y.org", "a0@y.org", "a1@y.org", "a2@y.org", "one@y.org"})

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
        self.assertEqual(self.store.recover_leases(), 1)
        self.assertEqual(self.store.show(b).state, "queued")

    def test_counts_survive_reopen(self) -> None:
        self.add()
        self.add()
        (lease, _) = self.store.lease(200, 10, 60)
        self.store.record([Outcome(lease, results(lease, ("r@y.org", "sent")), "r")], 201, POLICY)
        self.reopen()
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

    def stored_counts(self) -> dict[str, int]:
        return {state: n for state, n in self.store.counts().items() if state != "accepted"}

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
        self.assertEqual(self.store.recover_leases(), 6)
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

    def test_a_turn_can_make_the_pollers_lease(self) -> None:
        """record_and_enqueue with lease_due: the outcome is recorded, the new message
        queued, and the lease takes due mail in the poller's order (priority, then age;
        deferred mail that is due and expired leases included), new mail among it."""
        from smtpmailer.queue import NewMessage

        deferred = self.add("d@y.org", priority=5, now=10)
        (first,) = self.store.lease(20, 10, 60)
        self.store.record(
            [Outcome(first, results(first, ("d@y.org", "deferred")), "r")], 20, POLICY
        )
        self.assertEqual(self.store.show(deferred).state, "deferred")  # due again at 80
        sending = self.add("s@y.org", priority=5, now=30)
        (lease,) = self.store.lease(30, 10, 600)
        expired = self.add("e@y.org", priority=5, now=40)
        (stale,) = self.store.lease(40, 10, 10)  # its lease ends at 50
        low = self.add("l@y.org", priority=1, now=45)
        recorded, ids, leases = self.store.record_and_enqueue(
            [Outcome(lease, results(lease, ("s@y.org", "sent")), "r")],
            POLICY,
            [NewMessage("s@x.org", ("n@y.org",), b"new", 9)],
            1000,
            3,
            60,
            100.0,
            True,
        )
        self.assertEqual([r.state for r in recorded], ["sent"])
        self.assertEqual(self.store.show(sending).state, "sent")
        self.assertEqual([lease.id for lease in leases], [ids[0], deferred, expired])
        self.assertNotEqual(leases[2].token, stale.token)
        self.assertEqual(self.store.show(low).state, "queued")  # past the limit
        self.assertEqual([self.store.show(i).state for i in ids], ["active"])
        self.assertEqual(self.stored_counts(), self.actual_counts())
        # Each lease is its own: an outcome for one is recorded against that one only.
        self.store.record(
            [Outcome(leases[1], results(leases[1], ("d@y.org", "sent")), "r")], 101, POLICY
        )
        self.assertEqual(self.store.show(deferred).state, "sent")
        self.assertEqual(self.store.show(expired).state, "active")
        (late,) = self.store.record(
            [Outcome(stale, results(stale, ("e@y.org", "sent")), "r")], 101, POLICY
        )
        self.assertTrue(late.stale)
        # A turn with nothing but the lease: the rest of what is due.
        _, _, rest = self.store.record_and_enqueue([], POLICY, [], 1000, 5, 60, 102, True)
        self.assertEqual([lease.id for lease in rest], [low])
        self.assertEqual(
            self.store.record_and_enqueue([], POLICY, [], 1000, 5, 60, 102, True)[2], []
        )

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

    # --- leases and their tokens ---

    def test_a_lease_is_given_back_only_with_its_token(self) -> None:
        message_id = self.add()
        (lease,) = self.store.lease(200, 10, 60)
        forged = attrs.evolve(lease, token="not-the-lease")
        self.assertEqual(self.store.release_leases([forged]), 0)
        self.assertEqual(self.store.show(message_id).state, "active")
        self.assertEqual(self.store.release_leases([lease]), 1)
        self.assertEqual(self.store.show(message_id).state, "queued")
        self.assertEqual(self.store.release_leases([lease]), 0)  # once only

    def test_a_stale_lease_never_fails_or_deletes_a_message(self) -> None:
        message_id = self.add()
        (first,) = self.store.lease(200, 10, 60)
        (second,) = self.store.lease(300, 10, 60)  # the first expired and was taken again
        (recorded,) = self.store.record(
            [Outcome(first, results(first, ("r@y.org", "failed")), "r")], 301, POLICY
        )
        self.assertTrue(recorded.stale)
        info = self.store.show(message_id)
        self.assertEqual((info.state, info.attempts), ("active", 0))
        self.assertEqual(info.recipients[0].state, "pending")
        self.store.record([Outcome(second, results(second, ("r@y.org", "sent")), "r")], 302, POLICY)
        self.assertEqual(self.store.show(message_id).state, "sent")

    def test_an_outcome_for_a_deleted_message_is_stale(self) -> None:
        message_id = self.add()
        self.store.hold(message_id)
        self.store.release(message_id, 150)
        (lease,) = self.store.lease(200, 10, 60)
        self.store.release_leases([lease])
        self.store.delete(message_id)
        (recorded,) = self.store.record(
            [Outcome(lease, results(lease, ("r@y.org", "sent")), "r")], 201, POLICY
        )
        self.assertTrue(recorded.stale)
        self.assertEqual(sum(1 for _ in self.store.messages()), 0)

    def test_leases_are_limited_and_carry_the_message(self) -> None:
        ids = [self.add("a@y.org", "b@y.org", now=10 + i) for i in range(5)]
        leases = self.store.lease(200, 2, 60)
        self.assertEqual([lease.id for lease in leases], ids[:2])
        lease = leases[0]
        self.assertEqual(lease.sender, "s@x.org")
        self.assertEqual(lease.recipients, ("a@y.org", "b@y.org"))
        self.assertEqual(lease.data, b"Subject: t\r\n\r\nb\r\n")
        self.assertEqual((lease.attempts, lease.created, lease.priority), (0, 10, 5))
        self.assertEqual(len({lease.token for lease in leases}), 2)
        self.assertEqual(self.store.counts()["active"], 2)

    # --- what counts against max_queue_size ---

    def test_max_queue_size_counts_mail_still_owed(self) -> None:
        """Queued, deferred, active and held count; sent and failed do not."""
        queued, deferred, active, held, sent, failed = (self.add(now=i) for i in range(6))
        self.store.hold(held)
        leases = {lease.id: lease for lease in self.store.lease(100, 10, 60)}
        for message_id, status in ((deferred, "deferred"), (sent, "sent"), (failed, "failed")):
            lease = leases[message_id]
            self.store.record(
                [Outcome(lease, results(lease, ("r@y.org", status)), "r")], 101, POLICY
            )
        self.store.release_leases([leases[queued]])
        self.assertEqual(
            {self.store.show(i).state for i in (queued, deferred, active, held, sent, failed)},
            {"queued", "deferred", "active", "held", "sent", "failed"},
        )
        self.assertRaises(QueueFull, self.store.enqueue, "s@x.org", ["r@y.org"], b"x", 5, 102.0, 4)
        self.assertIsInstance(self.store.enqueue("s@x.org", ["r@y.org"], b"x", 5, 102.0, 5), str)

    # --- operator actions ---

    def test_retry_gives_back_the_failed_recipients_only(self) -> None:
        message_id = self.add("a@y.org", "b@y.org")
        (lease,) = self.store.lease(200, 10, 60)
        self.store.record(
            [Outcome(lease, results(lease, ("a@y.org", "sent"), ("b@y.org", "failed")), "r")],
            201,
            POLICY,
        )
        self.assertEqual(self.store.show(message_id).state, "failed")
        self.store.retry(message_id, 300)
        info = self.store.show(message_id)
        self.assertEqual(info.state, "queued")
        self.assertEqual(
            {r.address: r.state for r in info.recipients},
            {"a@y.org": "sent", "b@y.org": "pending"},
        )
        (again,) = self.store.lease(300, 10, 60)
        self.assertEqual(again.recipients, ("b@y.org",))

    def test_every_attempt_is_kept_with_each_recipients_reply(self) -> None:
        message_id = self.add("a@y.org", "b@y.org")
        (lease,) = self.store.lease(200, 10, 60)
        first = (
            RecipientResult("a@y.org", "sent", "HTTP 202 sg-1", "sg-1"),
            RecipientResult("b@y.org", "deferred", "451 4.3.0 try later"),
        )
        self.store.record(
            [Outcome(lease, first, "smtp.example.com[192.0.2.1]:587", "main", 0.25)], 201, POLICY
        )
        (again,) = self.store.lease(300, 10, 60)
        self.store.record([Outcome(again, results(again, ("b@y.org", "sent")), "r")], 302, POLICY)
        info = self.store.show(message_id)
        self.assertEqual([a.number for a in info.history], [1, 2])
        one, two = info.history
        self.assertEqual(
            (one.at, one.seconds, one.relay, one.relay_address),
            (201, 0.25, "main", "smtp.example.com[192.0.2.1]:587"),
        )
        self.assertEqual(one.replies, first)
        self.assertEqual((two.at, two.seconds, two.relay), (302, None, None))
        self.assertEqual(two.replies, (RecipientResult("b@y.org", "sent", "250 x"),))
        shown = info.as_json(400, with_history=True)
        self.assertEqual(shown["attempt_count"], 2)
        self.assertEqual(
            shown["attempts"][0]["replies"],  # type: ignore[index]
            [
                {
                    "recipient": "a@y.org",
                    "status": "sent",
                    "code": 202,
                    "text": "HTTP 202 sg-1",
                    "remote_id": "sg-1",
                },
                {
                    "recipient": "b@y.org",
                    "status": "deferred",
                    "code": 451,
                    "text": "451 4.3.0 try later",
                },
            ],
        )
        self.assertEqual(shown["attempts"][0]["at"], "1970-01-01T00:03:21+00:00")  # type: ignore[index]
        self.assertEqual(info.as_json(400)["attempts"], 2, "a list shows the count")

    def test_a_batch_of_sent_messages_keeps_an_attempt_each(self) -> None:
        ids = [self.add(f"r{n}@y.org") for n in range(5)]
        leases = self.store.lease(200, 10, 60)
        self.store.record(
            [
                Outcome(lease, results(lease, (lease.recipients[0], "sent")), "r")
                for lease in leases
            ],
            201,
            POLICY,
        )
        for message_id in ids:
            (attempt,) = self.store.show(message_id).history
            self.assertEqual((attempt.number, attempt.replies[0].status), (1, "sent"))

    def test_the_history_keeps_the_first_and_the_last_attempts(self) -> None:
        from smtpmailer.queue.rules import KEPT_ATTEMPTS

        message_id = self.add()
        patient = attrs.evolve(POLICY, max_retries=100, max_age=10**9)
        now = 200.0
        for _ in range(KEPT_ATTEMPTS + 10):
            (lease,) = self.store.lease(now, 10, 60)
            self.store.record(
                [Outcome(lease, results(lease, ("r@y.org", "deferred")), "r")], now, patient
            )
            now += 10_000
        numbers = [a.number for a in self.store.show(message_id).history]
        self.assertEqual(numbers, [1, *range(12, KEPT_ATTEMPTS + 11)])

    def test_a_retried_message_numbers_its_attempts_on(self) -> None:
        message_id = self.add()
        (lease,) = self.store.lease(200, 10, 60)
        self.store.record([Outcome(lease, results(lease, ("r@y.org", "failed")), "r")], 201, POLICY)
        self.store.retry(message_id, 300)  # its attempt count starts again
        (again,) = self.store.lease(300, 10, 60)
        self.store.record([Outcome(again, results(again, ("r@y.org", "sent")), "r")], 301, POLICY)
        info = self.store.show(message_id)
        self.assertEqual(info.attempts, 1)
        self.assertEqual(
            [(a.number, a.replies[0].status) for a in info.history], [(1, "failed"), (2, "sent")]
        )

    def test_a_stale_outcome_is_no_attempt_of_the_message(self) -> None:
        message_id = self.add()
        (first,) = self.store.lease(200, 10, 60)
        (second,) = self.store.lease(261, 10, 60)  # the first lease expired
        self.store.record([Outcome(first, results(first, ("r@y.org", "sent")), "r")], 262, POLICY)
        self.assertEqual(self.store.show(message_id).history, ())
        self.store.record([Outcome(second, results(second, ("r@y.org", "sent")), "r")], 263, POLICY)
        self.assertEqual([a.at for a in self.store.show(message_id).history], [263])

    def test_a_delay_warning_is_noted_once_beside_the_origin(self) -> None:
        origin = '{"template": "receipt", "vars": {"name": "Ann"}}'
        message_id = self.store.enqueue("s@x.org", ["r@y.org"], b"x", 5, 1.0, 10, meta=origin)
        self.assertTrue(self.store.mark_delay_warned(message_id, 5.0))
        self.assertFalse(self.store.mark_delay_warned(message_id, 6.0))
        self.assertEqual(
            self.store.show(message_id).origin, {"template": "receipt", "vars": {"name": "Ann"}}
        )
        plain = self.add()
        self.assertTrue(self.store.mark_delay_warned(plain, 5.0))
        self.assertIsNone(self.store.show(plain).origin)

    def test_search_by_id_message_id_sender_recipient_or_subject(self) -> None:
        def add(sender: str, rcpt: str, subject: str, number: int, now: float) -> str:
            data = (
                f"From: {sender}\r\nSubject: {subject}\r\n"
                f"Message-ID: <m{number}@example.com>\r\n\r\nbody\r\n"
            ).encode()
            return self.store.enqueue(sender, [rcpt], data, 5, now, 1000)

        invoice = add("billing@example.com", "ann@example.org", "Invoice 2026-7", 1, 10.0)
        welcome = add(
            "hello@example.com", "Bob@Example.org", "=?utf-8?q?Gr=C3=BC=C3=9Fe?=", 2, 11.0
        )
        other = add("billing@example.com", "carl@example.org", "Invoice 2026-8", 3, 12.0)

        def ids(text: str, **options: Any) -> list[str]:
            return [m.id for m in self.store.search(text, 10, **options)]

        self.assertEqual(ids(welcome), [welcome])
        self.assertEqual(ids("<m1@example.com>"), [invoice])
        self.assertEqual(ids("m3@example.com"), [other])
        self.assertEqual(ids("BILLING@example.com"), [other, invoice], "newest first")
        self.assertEqual(ids("bob@example.org"), [welcome])
        self.assertEqual(ids("invoice 2026"), [other, invoice])
        self.assertEqual(ids("grüße"), [welcome], "the subject decoded")
        self.assertEqual(ids("100%"), [])
        self.assertEqual(ids(""), [])
        (first,) = self.store.search("invoice", 1)
        (older,) = self.store.search("invoice", 1, before=(first.created, first.id))
        self.assertEqual([first.id, older.id], [other, invoice])
        self.assertEqual(first.subject, "Invoice 2026-8")
        self.assertEqual(first.header_id, "m3@example.com")

    def test_events_for_webhooks_written_with_the_outcome(self) -> None:
        import json

        self.add("quiet@y.org")
        (lease,) = self.store.lease(200, 10, 60)
        self.store.record(
            [Outcome(lease, results(lease, ("quiet@y.org", "sent")), "r")], 201, POLICY
        )
        self.assertEqual(self.store.events_after(0, 10), [], "no webhook: no events")
        self.store.keep_events(True)
        self.assertEqual(self.store.webhook_cursor("app"), 0)
        first = self.add("a@y.org", "b@y.org")
        second = self.add("c@y.org")
        leases = {lease.id: lease for lease in self.store.lease(300, 10, 60)}
        self.store.record(
            [
                Outcome(
                    leases[first],
                    results(leases[first], ("a@y.org", "sent"), ("b@y.org", "deferred")),
                    "r",
                    "main",
                ),
                Outcome(leases[second], results(leases[second], ("c@y.org", "sent")), "r"),
            ],
            301,
            POLICY,
        )
        events = self.store.events_after(0, 10)
        bodies = [json.loads(body) for _, _, body in events]
        # In order per message (a batch of all-sent messages may be written first).
        self.assertEqual(
            sorted((b["id"], b["event"], b["recipient"], b["attempt"]) for b in bodies),
            sorted(
                [
                    (first, "sent", "a@y.org", 1),
                    (first, "deferred", "b@y.org", 1),
                    (second, "sent", "c@y.org", 1),
                ]
            ),
        )
        self.assertEqual(
            [b["recipient"] for b in bodies if b["id"] == first], ["a@y.org", "b@y.org"]
        )
        self.assertEqual({b["relay"] for b in bodies if b["id"] == first}, {"main"})
        self.assertEqual(sorted(kind for _, kind, _ in events), ["deferred", "sent", "sent"])
        seqs = [seq for seq, _, _ in events]
        self.assertEqual(seqs, sorted(seqs))
        self.store.add_event("bounced", first, '{"event": "bounced"}', 302)
        self.assertEqual(self.store.events_after(seqs[-1], 10)[0][1], "bounced")
        self.store.set_webhook_cursor("app", seqs[1])
        self.assertEqual(self.store.webhook_cursor("app"), seqs[1])
        self.assertEqual(self.store.webhook_cursor("late"), seqs[-1] + 1, "a new one: from now on")
        gone, newest = self.store.prune_events(["app", "late"])
        self.assertEqual((gone, newest), (2, seqs[-1] + 1))
        self.assertEqual(
            [seq for seq, _, _ in self.store.events_after(0, 10)], [seqs[2], seqs[-1] + 1]
        )
        self.store.prune_events([])
        self.assertEqual(self.store.events_after(0, 10), [], "no webhook left: all forgotten")

    def test_retry_applies_to_deferred_and_failed_only(self) -> None:
        message_id = self.add()
        self.store.hold(message_id)
        self.assertRaises(WrongState, self.store.retry, message_id, 200)
        self.assertRaises(NoSuchMessage, self.store.retry, "NOSUCHMESSAGE0", 200)

    def test_hold_all_and_release_all(self) -> None:
        ids = [self.add(now=i) for i in range(3)]
        (lease,) = self.store.lease(100, 1, 60)
        self.store.record(
            [Outcome(lease, results(lease, ("r@y.org", "deferred")), "r")], 100, POLICY
        )
        self.assertEqual(self.store.hold_all(), 3)  # the queued and the deferred
        self.assertEqual(self.store.lease(10_000, 10, 60), [])
        self.assertEqual(self.store.release_all(10_000), 3)
        self.assertEqual({lease.id for lease in self.store.lease(10_000, 10, 60)}, set(ids))

    # --- looking ---

    def test_pages_follow_the_creation_order(self) -> None:
        ids = [self.add(now=10 + i) for i in range(5)]
        first = self.store.page(None, 2, None)
        self.assertEqual([m.id for m in first], ids[:2])
        after = (first[-1].created, first[-1].id)
        self.assertEqual([m.id for m in self.store.page(None, 10, after)], ids[2:])
        self.assertEqual([m.id for m in self.store.messages(state="queued", limit=3)], ids[:3])

    def test_show_a_message_that_is_not_there(self) -> None:
        self.assertRaises(NoSuchMessage, self.store.show, "NOSUCHMESSAGE0")
        self.assertRaises(NoSuchMessage, self.store.body, "NOSUCHMESSAGE0")
        self.assertRaises(NoSuchMessage, self.store.delete, "NOSUCHMESSAGE0")

    def test_recent_problems_newest_first(self) -> None:
        self.add(now=1)
        self.add(now=2)
        first, second = self.store.lease(100, 10, 60)
        self.store.record([Outcome(first, results(first, ("r@y.org", "failed")), "r")], 101, POLICY)
        self.store.record(
            [Outcome(second, results(second, ("r@y.org", "deferred")), "r")], 102, POLICY
        )
        problems = self.store.recent_problems(10)
        self.assertEqual([m.id for m in problems], [second.id, first.id])
        self.assertEqual(problems[0].last_error, "451 x")
