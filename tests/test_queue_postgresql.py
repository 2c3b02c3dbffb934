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

    def test_one_node_tells_each_webhook(self) -> None:
        self.assertTrue(self.a.claim_webhook("app"))
        self.assertTrue(self.a.claim_webhook("app"), "still its own")
        self.assertFalse(self.b.claim_webhook("app"), "the other node waits")
        self.assertTrue(self.b.claim_webhook("other"), "another webhook is free")
        self.a.close()  # the node (its connection) is gone: the lock goes with it
        self.assertTrue(self.b.claim_webhook("app"))

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


class MigrateTests(SynchronousTestCase):
    """queue migrate --from sqlite:PATH: everything over, again and again without harm."""

    def setUp(self) -> None:
        import os

        from smtpmailer.queue.sqlite import SQLiteQueue

        self.dsn = fresh_database(self)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        self.path = os.path.join(folder, "queue.sqlite3")
        old = SQLiteQueue(self.path)
        body = b"Subject: t\r\n\r\nb\r\n"
        self.ids = [
            old.enqueue("s@x.org", ["a@y.org", "b@y.org"], body, 5, 100.0 + n, 10**6)
            for n in range(7)
        ]
        leases = {lease.id: lease for lease in old.lease(200, 4, 600)}
        first, second, third, fourth = (leases[i] for i in self.ids[:4])
        old.record(
            [
                Outcome(
                    first, results(first, ("a@y.org", "sent"), ("b@y.org", "sent")), "r", "main"
                ),
                Outcome(second, results(second, ("a@y.org", "sent"), ("b@y.org", "deferred")), "r"),
                Outcome(third, results(third, ("a@y.org", "failed"), ("b@y.org", "failed")), "r"),
            ],
            201,
            POLICY,
        )  # the fourth stays leased: the daemon stopped in the middle of it
        old.hold(self.ids[4])
        self.before = {info.id: info for info in old.messages()}
        old.close()
        self.target = PostgreSQLQueue(self.dsn, node="new")
        self.addCleanup(self.target.close)

    def test_every_message_with_its_state_recipients_and_body(self) -> None:
        from smtpmailer.queue.migrate import migrate

        report = migrate(self.path, self.target)
        self.assertEqual((report.copied, report.already_there), (7, 0))
        after = {info.id: info for info in self.target.messages()}
        self.assertEqual(set(after), set(self.before))
        for message_id, old in self.before.items():
            new = after[message_id]
            expected_state = "queued" if old.state == "active" else old.state
            self.assertEqual(
                (new.state, new.attempts, new.created, new.recipients, new.last_error),
                (expected_state, old.attempts, old.created, old.recipients, old.last_error),
            )
        self.assertEqual(self.target.body(self.ids[1]), b"Subject: t\r\n\r\nb\r\n")
        (attempt,) = self.target.show(self.ids[1]).history  # the history came along
        self.assertEqual(
            (attempt.number, attempt.at, [r.status for r in attempt.replies]),
            (1, 201, ["sent", "deferred"]),
        )
        from smtpmailer.queue import WrongState

        with self.assertRaises(WrongState):
            self.target.body(self.ids[0])  # sent: its content was not kept, and is not now
        counts = self.target.counts()
        self.assertEqual(
            {k: counts[k] for k in ("sent", "deferred", "failed", "held", "queued", "accepted")},
            {"sent": 1, "deferred": 1, "failed": 1, "held": 1, "queued": 3, "accepted": 7},
        )
        # Resumable: a second run (after a stop half-way, say) copies nothing twice.
        again = migrate(self.path, self.target)
        self.assertEqual((again.copied, again.already_there), (0, 7))
        self.assertEqual(self.target.counts()["accepted"], 7)

    def test_the_command(self) -> None:
        import io
        import os

        from smtpmailer.cli import main

        config = os.path.join(os.path.dirname(self.path), "c.conf")
        with open(config, "w") as handle:
            handle.write(
                f"[Daemon]\nstate_dir = {os.path.dirname(self.path)}/new\n"
                f"[Queue]\nbackend = postgresql\ndsn = {self.dsn}\n"
                "[Relay]\nhost = smtp.example.com\n"
            )
        os.chmod(config, 0o600)
        out, err = io.StringIO(), io.StringIO()
        code = main(
            ["--config", config, "queue", "migrate", "--from", f"sqlite:{self.path}"], out, err
        )
        self.assertEqual((code, err.getvalue()), (0, ""))
        self.assertEqual(
            out.getvalue(), f"7 messages copied from {self.path}, 0 messages already there\n"
        )
        code = main(["--config", config, "queue", "migrate", "--from", "mysql:x"], out, err)
        self.assertEqual(code, 1)
        self.assertIn("--from takes sqlite:PATH", err.getvalue())
