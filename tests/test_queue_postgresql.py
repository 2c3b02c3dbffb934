"""The PostgreSQL queue: the contract every backend keeps, then what only a shared queue
has to do (nodes, leases taken over from a silent node, stale outcomes ignored, wake-ups)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.queue import Outcome, QueueStore
from smtpmailer.queue.postgresql import PostgreSQLQueue
from tests.postgres import fresh_database
from tests.queue_contract import POLICY, QueueContract, results


class PostgreSQLContractTests(QueueContract, SynchronousTestCase):
    def open_store(self) -> QueueStore:
        if not hasattr(self, "dsn"):
            self.dsn = fresh_database(self)
        return PostgreSQLQueue(self.dsn, node="node-a")


class SharedQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dsn = fresh_database(self)
        self.a = PostgreSQLQueue(self.dsn, node="a", lease_timeout=60)
        self.b = PostgreSQLQueue(self.dsn, node="b", lease_timeout=60)
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    def add(self, n: int = 1, now: float = 100.0) -> list[str]:
        return [
            self.a.enqueue("s@x.org", ["r@y.org"], b"Subject: t\r\n\r\nb\r\n", 5, now, 1000)
            for _ in range(n)
        ]

    def test_two_nodes_leasing_together_never_share_a_message(self) -> None:
        ids = self.add(10)
        self.a.heartbeat(100)
        self.b.heartbeat(100)
        first = self.a.lease(101, 6, 600)
        second = self.b.lease(101, 6, 600)
        self.assertEqual(len(first) + len(second), 10)
        by_a, by_b = {lease.id for lease in first}, {lease.id for lease in second}
        self.assertEqual(by_a & by_b, set())
        self.assertEqual(by_a | by_b, set(ids))

    def test_a_silent_nodes_leases_are_taken_over_and_its_late_outcome_ignored(self) -> None:
        (message,) = self.add(1)
        self.a.heartbeat(100)
        self.b.heartbeat(100)
        (taken,) = self.a.lease(101, 10, 600)
        self.b.heartbeat(150)
        self.assertEqual(self.b.lease(150, 10, 600), [], "a is still within lease_timeout")
        self.b.heartbeat(170)
        (again,) = self.b.lease(170, 10, 600)  # a silent since 100, lease_timeout 60
        self.assertEqual(again.id, message)
        late = self.a.record(
            [Outcome(taken, results(taken, ("r@y.org", "failed")), "r")], 171, POLICY
        )
        self.assertTrue(late[0].stale, "the old lease's word no longer counts")
        self.assertEqual(self.a.show(message).state, "active", "never failed by a stale lease")
        (done,) = self.b.record(
            [Outcome(again, results(again, ("r@y.org", "sent")), "r")], 172, POLICY
        )
        self.assertEqual(done.state, "sent")
        nodes = {node["node"]: node for node in self.a.nodes(172)}
        self.assertEqual((nodes["a"]["alive"], nodes["b"]["alive"]), (False, True))
        self.assertEqual(nodes["b"]["heartbeat_age"], 2.0)

    def test_recovery_at_start_takes_back_only_this_nodes_leases(self) -> None:
        self.add(2)
        self.a.heartbeat(100)
        self.b.heartbeat(100)
        self.a.lease(101, 1, 600)
        self.b.lease(101, 1, 600)
        restarted = PostgreSQLQueue(self.dsn, node="a")
        self.addCleanup(restarted.close)
        self.assertEqual(restarted.recover_leases(), 1)
        self.assertEqual(restarted.counts()["active"], 1, "b's lease is b's")

    def test_new_mail_notifies_once_per_commit(self) -> None:
        import psycopg

        listener = psycopg.connect(self.dsn, autocommit=True)
        self.addCleanup(listener.close)
        listener.execute("LISTEN smtpmailer_wakeup")
        from smtpmailer.queue import NewMessage

        item = NewMessage("s@x.org", ("r@y.org",), b"Subject: t\r\n\r\nb\r\n", 5)
        self.a.enqueue_many([item] * 5, 100, 1000)
        heard = list(listener.notifies(timeout=1, stop_after=10))
        self.assertEqual(len(heard), 1, "one NOTIFY for five messages in one commit")
        self.a.lease(101, 10, 600)
        self.assertEqual(list(listener.notifies(timeout=0.2)), [], "a lease adds no due mail")

    def test_the_server_gone_is_a_temporary_error_and_the_store_reconnects(self) -> None:
        import psycopg

        from smtpmailer.queue import StoreBusy

        self.add(1)
        pid = self.a._db.info.backend_pid
        with psycopg.connect(self.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with self.assertRaises(StoreBusy) as caught:
            self.a.counts()
        self.assertIn("queue database unavailable", str(caught.exception))
        self.assertEqual(self.a.counts()["queued"], 1, "the next call reconnects")
