"""Several real ``twistd`` daemons on one PostgreSQL queue: every message delivered once
the survivors have taken over a killed node's leases, and ``queue nodes`` telling who is
alive."""

from __future__ import annotations

import json
import os
import signal
import time

import psycopg

from smtpmailer.queue.postgresql import PostgreSQLQueue
from tests.daemon import Daemon, wait_until
from tests.postgres import fresh_database
from tests.support import EndToEndCase

LEASE_TIMEOUT = 3.0


class ClusterTests(EndToEndCase):
    timeout = 180

    def node(self, name: str, dsn: str, port: int, relay: str = "") -> Daemon:
        queue = (
            f"backend = postgresql\ndsn = {dsn}\nnode = {name}\n"
            f"lease_timeout = {LEASE_TIMEOUT:g}s\n"
        )
        daemon = Daemon(
            os.path.join(self.home, name),
            self.relay_section(port, **{"max_connections": "2"}) + relay,
            queue,
        )
        # The config holds the DSN: private, as a secret's file must be.
        os.chmod(daemon.config_path, 0o600)
        self.addCleanup(daemon.stop)
        return daemon

    def states(self, dsn: str) -> dict[str, int]:
        with psycopg.connect(dsn) as db:
            return dict(
                db.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall()
            )

    def test_kill_9_of_one_of_three_nodes_loses_nothing_and_its_leases_are_taken_over(
        self,
    ) -> None:
        dsn = fresh_database(self)
        peer = self.start_peer()
        # The rate limit keeps the nodes busy long enough for the kill to catch leases.
        a, b, c = (self.node(name, dsn, peer.port, "rate_limit = 80/s\n") for name in "abc")
        for node in (a, b, c):
            node.start()
        store = PostgreSQLQueue(dsn, node="test")
        self.addCleanup(store.close)
        from smtpmailer.queue import NewMessage

        items = [
            NewMessage(
                "app@example.com",
                ("a@example.org",),
                f"From: app@example.com\r\nX-Seq: {n}\r\nSubject: {n}\r\n\r\nx\r\n".encode(),
                5,
            )
            for n in range(2000)
        ]
        for first in range(0, 2000, 500):
            store.enqueue_many(items[first : first + 500], time.time(), 10**6)
        wait_until(lambda: len(peer.messages()) >= 300, what="300 deliveries")
        held_by_a = store.nodes(time.time())
        a.kill(signal.SIGKILL)
        killed_at = time.time()
        in_flight = next(n["leases"] for n in held_by_a if n["node"] == "a")

        def leases_of_a() -> int:
            return next(n["leases"] for n in store.nodes(time.time()) if n["node"] == "a")

        wait_until(lambda: leases_of_a() == 0, timeout=30, what="a's leases taken over")
        # a's last heartbeat came at most a second before the kill; b looks every poll.
        self.assertLess(time.time() - killed_at, LEASE_TIMEOUT + 1 + 1.5)
        wait_until(lambda: self.states(dsn) == {"sent": 2000}, timeout=120, what="all 2000 sent")
        sequence = [int(m.header("X-Seq") or -1) for m in peer.messages()]
        self.assertEqual(set(sequence), set(range(2000)), "every message arrived")
        duplicates = len(sequence) - 2000
        self.assertLessEqual(duplicates, max(in_flight, 4), "only what a had in flight")
        # queue nodes: a is silent, b alive, and a holds nothing any more.
        shown = json.loads(b.cli("queue", "nodes", "--json").stdout)
        by_name = {node["node"]: node for node in shown}
        self.assertFalse(by_name["a"]["alive"])
        self.assertTrue(by_name["b"]["alive"])
        self.assertEqual(by_name["a"]["leases"], 0)
        self.assertGreaterEqual(by_name["a"]["heartbeat_age"], time.time() - killed_at - 1)
        table = b.cli("queue", "nodes").stdout
        self.assertIn("silent (its leases go to the others)", table)
        stats = json.loads(b.cli("queue", "stats", "--json").stdout)
        self.assertEqual((stats["counts"]["sent"], stats["oldest_pending_age"]), (2000, None))
        self.assertTrue(by_name["c"]["alive"])

    def test_new_mail_wakes_an_idle_node_without_waiting_for_its_poll(self) -> None:
        dsn = fresh_database(self)
        peer = self.start_peer()
        idle = self.node("idle", dsn, peer.port)
        with open(idle.config_path) as handle:
            text = handle.read()
        with open(idle.config_path, "w") as handle:  # only a NOTIFY can wake it in time
            handle.write(text.replace("poll_interval = 1s", "poll_interval = 1h"))
        idle.start()
        sent = idle.send("--from", "app@example.com", "--to", "a@example.org", "--subject", "s")
        wait_until(lambda: self.states(dsn) == {"sent": 1}, timeout=15, what="delivery")
        self.assertEqual(idle.message(sent)["state"], "sent")


class DatabaseFaultTests(EndToEndCase):
    """PostgreSQL itself goes away mid-run: a cluster of the test's own, stopped and started."""

    timeout = 180

    def test_postgresql_restarted_mid_run_refuses_for_a_while_and_loses_nothing(self) -> None:
        import smtplib
        import urllib.error
        import urllib.request

        from tests.postgres import Cluster
        from tests.support import submission_port

        cluster = Cluster()
        self.addCleanup(cluster.remove)
        with psycopg.connect(cluster.dsn, autocommit=True) as admin:
            admin.execute("CREATE DATABASE mail")
        dsn = cluster.dsn.replace("dbname=postgres", "dbname=mail")
        peer = self.start_peer()
        token = os.path.join(self.home, "status-token")
        with open(token, "w") as handle:
            handle.write("t0ken-for-http-submission\n")
        os.chmod(token, 0o600)
        daemon = Daemon(
            os.path.join(self.home, "d"),
            self.relay_section(peer.port, max_connections="2") + "rate_limit = 20/s\n",
            f"backend = postgresql\ndsn = {dsn}\nnode = d\nlease_timeout = 3s\n",
            extra="[Submission]\nlisten = tcp:0:interface=127.0.0.1\n",
            status=f"token_file = {token}\n",
        )
        os.chmod(daemon.config_path, 0o600)
        self.addCleanup(daemon.stop)
        daemon.start()
        port = submission_port(daemon)
        store = PostgreSQLQueue(dsn, node="test")
        for number in range(100):
            body = f"From: app@example.com\r\nX-Seq: {number}\r\nSubject: {number}\r\n\r\nx\r\n"
            store.enqueue(
                "app@example.com", ["a@example.org"], body.encode(), 5, time.time(), 10**6
            )
        store.close()
        wait_until(lambda: len(peer.messages()) >= 20, what="20 deliveries")
        cluster.stop()
        # Every way in answers "try again later"; /health says why.
        sendmail = daemon.cli(
            "sendmail", "-t", stdin=b"From: a@example.com\nTo: b@example.org\nSubject: s\n\nx\n"
        )
        self.assertEqual(sendmail.returncode, 75, sendmail.stderr)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            with self.assertRaises(smtplib.SMTPDataError) as refused:
                client.sendmail("a@example.com", ["b@example.org"], b"Subject: s\r\n\r\nx\r\n")
        # DESIGN.md's refusal table: a busy store is 452 4.3.1, a temporary refusal.
        self.assertEqual(refused.exception.smtp_code, 452)
        self.assertTrue(refused.exception.smtp_error.startswith(b"4.3.1"))
        url = open(os.path.join(daemon.state_dir, "status.url")).read().strip()
        request = urllib.request.Request(
            url + "/v1/messages",
            data=json.dumps(
                {"from": "a@example.com", "to": "b@example.org", "subject": "s", "text": "x"}
            ).encode(),
            headers={
                "Content-Type": "application/json",
                "Authorization": "Bearer t0ken-for-http-submission",
            },
        )
        with self.assertRaises(urllib.error.HTTPError) as http:
            urllib.request.urlopen(request, timeout=30)
        self.assertEqual(http.exception.code, 503)
        with self.assertRaises(urllib.error.HTTPError) as health:
            urllib.request.urlopen(url + "/health", timeout=30)
        self.assertEqual(health.exception.code, 503)
        self.assertIn("does not answer", json.loads(health.exception.read())["reasons"][0])
        # Back: everything accepted before the stop is delivered, nothing twice more than
        # the deliveries whose outcome could not be committed while it was down.
        cluster.start()
        wait_until(lambda: self.sent(dsn) == 100, timeout=90, what="all 100 sent after the restart")
        sequence = [int(m.header("X-Seq") or -1) for m in peer.messages() if m.header("X-Seq")]
        self.assertEqual(set(sequence), set(range(100)))
        self.assertLessEqual(len(sequence) - 100, 4, "at most what was in flight")
        self.assertEqual(daemon.cli("health").returncode, 0)
        self.assertNotIn("Traceback", daemon.log(), "one line per problem, never a traceback")

    def sent(self, dsn: str) -> int:
        try:
            with psycopg.connect(dsn, connect_timeout=3) as db:
                row = db.execute("SELECT count(*) FROM messages WHERE state = 'sent'").fetchone()
        except psycopg.Error:
            return -1
        return int(row[0]) if row else 0


class InspectionOnPostgreSQLTests(EndToEndCase):
    """/health, /metrics, /v1/queue, the dashboard and the manhole on a PostgreSQL node."""

    timeout = 120

    def test_every_way_of_looking(self) -> None:
        import re
        import urllib.request

        from tests.daemon import manhole_ssh, ssh_keypair

        dsn = fresh_database(self)
        peer = self.start_peer()
        key = ssh_keypair(self.home, "operator")
        daemon = Daemon(
            os.path.join(self.home, "d"),
            self.relay_section(peer.port),
            f"backend = postgresql\ndsn = {dsn}\nnode = mx1\n",
            extra=(f"[Manhole]\nlisten = tcp:0:interface=127.0.0.1\nauthorized_keys = {key}.pub\n"),
        )
        os.chmod(daemon.config_path, 0o600)
        self.addCleanup(daemon.stop)
        daemon.start()
        sent = daemon.send("--from", "app@example.com", "--to", "a@example.org", "--subject", "s")
        wait_until(lambda: daemon.message(sent)["state"] == "sent", what="delivery")
        peer.set(tempfail_data=100)  # the next one waits, deferred
        waiting = daemon.send(
            "--from", "app@example.com", "--to", "b@example.org", "--subject", "w"
        )
        wait_until(lambda: daemon.message(waiting)["state"] == "deferred", what="a deferral")
        url = open(os.path.join(daemon.state_dir, "status.url")).read().strip()

        def get(path: str) -> str:
            with urllib.request.urlopen(url + path, timeout=10) as response:
                self.assertEqual(response.status, 200, path)
                return response.read().decode()

        self.assertEqual(json.loads(get("/health"))["status"], "ok")
        metrics = get("/metrics")
        self.assertIn('smtpmailer_queue_messages{state="deferred"} 1.0', metrics)
        self.assertRegex(
            metrics, r'smtpmailer_info\{backend="postgresql",node="mx1",version="[^"]+"\} 1.0'
        )
        listed = json.loads(get("/v1/queue?state=deferred"))
        self.assertEqual([m["id"] for m in listed["messages"]], [waiting])
        self.assertEqual(json.loads(get(f"/v1/queue/{sent}"))["relay"], "localhost")
        self.assertIn(waiting, get("/"))
        found = wait_until(
            lambda: re.search(r"manhole listening on 127.0.0.1:(\d+)", daemon.log()),
            what="the manhole",
        )
        session = manhole_ssh(int(found.group(1)), key, f"ls()\rhold('{waiting}')\rstats\r")
        self.assertIn(f"{waiting}  deferred", session.stdout)
        self.assertIn(f"{waiting}: held", session.stdout)
        self.assertEqual(daemon.message(waiting)["state"], "held")


class BackendTerminationTests(EndToEndCase):
    timeout = 120

    def test_connections_killed_by_the_server_during_a_run_lose_nothing(self) -> None:
        """pg_terminate_backend on every connection of the daemon, again and again."""
        dsn = fresh_database(self)
        peer = self.start_peer()
        daemon = Daemon(
            os.path.join(self.home, "d"),
            self.relay_section(peer.port, max_connections="2") + "rate_limit = 50/s\n",
            f"backend = postgresql\ndsn = {dsn}\nnode = d\n",
        )
        os.chmod(daemon.config_path, 0o600)
        self.addCleanup(daemon.stop)
        daemon.start()
        store = PostgreSQLQueue(dsn, node="test")
        self.addCleanup(store.close)
        from smtpmailer.queue import NewMessage

        items = [
            NewMessage(
                "app@example.com",
                ("a@example.org",),
                f"From: app@example.com\r\nX-Seq: {n}\r\nSubject: {n}\r\n\r\nx\r\n".encode(),
                5,
            )
            for n in range(200)
        ]
        store.enqueue_many(items, time.time(), 10**6)
        name = dsn.rsplit("dbname=", 1)[1]
        killed = 0
        ours = " FROM pg_stat_activity WHERE datname = %s AND application_name = 'smtpmailer d'"
        with psycopg.connect(dsn, autocommit=True) as admin:

            def connected() -> int:
                return int(admin.execute("SELECT count(*)" + ours, (name,)).fetchone()[0])

            for round_ in range(4):
                wait_until(lambda r=round_: len(peer.messages()) >= 30 * (r + 1), what="progress")
                wait_until(connected, what="the daemon to have reconnected")  # it does by itself
                killed += admin.execute(
                    "SELECT count(pg_terminate_backend(pid))" + ours, (name,)
                ).fetchone()[0]
        self.assertGreaterEqual(killed, 4)
        wait_until(lambda: store.counts()["sent"] == 200, timeout=90, what="all 200 sent")
        sequence = [int(m.header("X-Seq") or -1) for m in peer.messages()]
        self.assertEqual(set(sequence), set(range(200)))
        self.assertLessEqual(len(sequence) - 200, 8, "at most what was in flight at each kill")
        self.assertNotIn("Traceback", daemon.log())
