"""DeliveryService and QueuePoller over a real SQLite queue and an in-memory relay,
with time driven by task.Clock: no sleeps, no sockets."""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher

from smtpmailer.config import parse_config
from smtpmailer.daemon.service import MailerService
from smtpmailer.delivery.pool import DOWN_FOR, HOLD_FOR, IDLE_TIMEOUT
from smtpmailer.queue import Outcome, QueueError, RecipientResult
from smtpmailer.queue.sqlite import SQLiteQueue
from tests.fake_relay import EXCHANGE_CONCURRENT_LIMIT, settle
from tests.support import DeliveryCase


class DeliveryTests(DeliveryCase):
    def test_delivers_and_reuses_one_connection(self) -> None:
        self.relay_keys = "max_connections = 1\n"
        self.configure()
        ids = [self.enqueue() for _ in range(3)]
        self.start()
        self.assertEqual([self.state(i) for i in ids], ["sent"] * 3)
        self.assertEqual(len(self.relay.messages), 3)
        self.assertEqual(self.relay.connections, 1)
        self.assertTrue(all(c.nodelay for c in self.relay.live), "TCP_NODELAY is set")
        self.assertEqual(len(self.lines), 3)
        self.assertRegex(
            self.lines[0],
            r"^id=\w{14} to=<r@example.org> relay=a.test\[192.0.2.25\]:25 "
            r"delay=0.00 attempts=1 status=sent \(250 2.0.0 OK\)$",
        )
        # Idle connections are kept briefly for the next message, then closed with QUIT.
        self.clock.advance(IDLE_TIMEOUT)
        settle(self.clock)
        self.assertEqual(self.relay.open_connections, 0)
        self.assertEqual(self.relay.quits, self.relay.connections)

    def test_a_waiting_message_follows_the_content_before_it(self) -> None:
        """Pipelined behind the message on the wire (RFC 2920 3.1): each message after
        the first goes out with the previous one's content, in the same write."""
        self.relay_keys = "max_connections = 1\n"
        self.configure()
        ids = [self.enqueue() for _ in range(3)]
        self.start()
        self.assertEqual([self.state(i) for i in ids], ["sent"] * 3)
        self.assertEqual(self.relay.connections, 1)
        # Who spoke, in order (C. a content): the relay's replies to one group count once.
        turns = re.sub(
            "S+",
            "S",
            "".join(
                side + ("." if data.endswith(b"\r\n.\r\n") else "")
                for side, data in self.relay.transcript
            ),
        )
        # greeting, EHLO, the first envelope, then content + next envelope, and the last.
        self.assertEqual(turns, "SCSCSC.CSC.CSC.S")
        self.assertEqual(len(self.lines), 3)
        self.assertTrue(all("attempts=1 status=sent" in line for line in self.lines))

    def test_a_message_behind_a_dropped_connection_goes_on_another(self) -> None:
        """The connection drops while a message is pipelined behind the one on the wire:
        the first is deferred (its reply never came); the second never got its content
        through, so it is no attempt and goes at once on a new connection."""
        self.relay_keys = "max_connections = 1\n"
        self.configure()
        self.relay.hang_after_body = True
        first = self.enqueue()
        self.clock.advance(1)
        second = self.enqueue()
        self.start()
        self.assertIn(b"MAIL FROM", self.relay.live[0].buffer)
        self.relay.hang_after_body = False
        self.relay.live[0].transport.abortConnection()
        settle(self.clock)
        self.assertEqual(self.state(first), "deferred")
        self.assertEqual(self.shown(first).last_error, "connection closed by the relay")
        self.assertEqual(self.state(second), "sent")
        self.assertEqual(self.shown(second).attempts, 1)
        self.assertEqual(self.relay.connections, 2)

    def test_an_idle_connection_takes_the_next_message(self) -> None:
        self.configure()
        self.enqueue()
        service = self.start()
        self.enqueue()
        service.poller.wake()
        settle(self.clock)
        self.assertEqual(len(self.relay.messages), 2)
        self.assertEqual(self.relay.connections, 1)

    def test_max_messages_per_connection(self) -> None:
        self.relay_keys = "max_connections = 1\nmax_messages_per_connection = 2\n"
        self.configure()
        for _ in range(5):
            self.enqueue()
        self.start()
        self.assertEqual(len(self.relay.messages), 5)
        self.assertEqual(self.relay.connections, 3)

    def test_max_connections_in_parallel(self) -> None:
        self.relay_keys = "max_connections = 3\n"
        self.configure()
        for _ in range(20):
            self.enqueue()
        self.start()
        self.assertEqual(len(self.relay.messages), 20)
        self.assertEqual(self.relay.most_open, 3)

    def test_highest_priority_first(self) -> None:
        self.relay_keys = "max_connections = 1\n"
        self.configure()
        self.enqueue("low@example.org", priority=1)
        self.enqueue("normal@example.org", priority=5)
        self.enqueue("high@example.org", priority=9)
        self.start()
        self.assertEqual(
            [m[1][0] for m in self.relay.messages],
            ["high@example.org", "normal@example.org", "low@example.org"],
        )

    def test_wake_delivers_without_waiting_for_the_poll(self) -> None:
        self.configure()
        service = self.start()
        message_id = self.enqueue()
        service.poller.wake()
        settle(self.clock)  # no time passes
        self.assertEqual(self.state(message_id), "sent")

    def test_the_poll_finds_mail_without_a_wakeup(self) -> None:
        self.configure()
        self.start()
        message_id = self.enqueue()
        self.clock.advance(4.9)
        settle(self.clock)
        self.assertEqual(self.state(message_id), "queued")
        self.clock.advance(0.1)
        settle(self.clock)
        self.assertEqual(self.state(message_id), "sent")

    def test_temporary_failure_backs_off_then_fails(self) -> None:
        self.configure()
        self.relay.data_replies = ["451 4.3.0 later"] * 3
        message_id = self.enqueue()
        self.start()
        self.assertEqual(self.state(message_id), "deferred")
        first = self.store.show(message_id).next_attempt - self.clock.seconds()
        self.assertTrue(48 <= first <= 60, first)
        self.clock.advance(first + 5)
        settle(self.clock)
        self.assertEqual(self.store.show(message_id).attempts, 2)
        self.clock.advance(240)
        settle(self.clock)
        info = self.store.show(message_id)
        self.assertEqual((info.state, info.attempts), ("failed", 3))
        self.assertIn("retries exhausted after 3 attempts", info.last_error or "")
        self.assertIn(
            "status=failed (451 4.3.0 later; retries exhausted after 3 attempts)",
            [line for line in self.lines if f"id={message_id}" in line][-1],
        )

    def test_relay_down_defers_everything_waiting_at_once(self) -> None:
        self.configure()
        self.relay.refuse = True
        ids = [self.enqueue() for _ in range(30)]
        self.start()
        self.assertEqual({self.state(i) for i in ids}, {"deferred"})
        self.assertEqual(self.store.show(ids[0]).last_error, "a.test:25: connection refused")
        self.relay.refuse = False
        self.clock.advance(61)
        settle(self.clock)
        self.assertEqual({self.state(i) for i in ids}, {"sent"})

    def test_busy_relay_421_defers(self) -> None:
        self.configure()
        self.relay.greeting = "421 4.3.2 too busy, try later"
        message_id = self.enqueue()
        self.start()
        info = self.store.show(message_id)
        self.assertEqual(info.state, "deferred")
        self.assertEqual(
            info.last_error, "a.test:25: relay refused the session: 421 4.3.2 too busy, try later"
        )
        self.assertEqual(self.relay.messages, [])

    def test_a_relay_that_limits_connections_gets_what_it_takes(self) -> None:
        # Postfix's smtpd_client_connection_count_limit = 2 against our default 4: the
        # 3rd and 4th connections are greeted with a 421. The relay is not down: the
        # two it took carry all the mail, at once, and nothing is deferred.
        self.configure()
        self.relay.connection_limit = 2
        clock = self.clock

        def ticking() -> float:  # 0.1 ms a reading: a real clock moves while the daemon works
            clock.rightNow += 1e-4
            return clock.rightNow

        self.patch(clock, "seconds", ticking)
        said = self.hear_everything()
        ids = [self.enqueue() for _ in range(20)]
        self.start()
        self.assertEqual({self.state(i) for i in ids}, {"sent"})
        self.assertEqual(len(self.relay.over_limit), 2)
        self.assertEqual(self.relay.most_open, 4)  # the two turned away, for a moment
        held = [line for line in said if "turned a connection away" in line]
        self.assertEqual(
            held,
            [
                f"relay a.test turned a connection away while {n} other(s) of ours were open "
                "or opening (relay refused the session: 421 4.7.0 fake.test Error: too many "
                f"connections from 127.0.0.1); no more than {n} for 30s"
                for n in (3, 2)
            ],
        )
        (pool,) = self.service.delivery.pools.values()
        self.assertFalse(pool.down())
        # Mail within the hold opens no third connection; after it, one is tried again.
        turned_away = len(self.relay.over_limit)
        self.clock.advance(IDLE_TIMEOUT - 0.5)  # the two are still open, idle
        settle(self.clock)
        more = [self.enqueue() for _ in range(10)]
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual({self.state(i) for i in more}, {"sent"})
        self.assertEqual(len(self.relay.over_limit), turned_away)
        self.clock.advance(HOLD_FOR)
        settle(self.clock)
        self.relay.connection_limit = None  # the operator raised the limit meanwhile
        last = [self.enqueue() for _ in range(20)]
        self.service.poller.wake()
        settle(self.clock)
        self.assertEqual({self.state(i) for i in last}, {"sent"})
        self.assertEqual(self.relay.most_open, 4)
        self.assertEqual(len(self.relay.over_limit), turned_away)

    def test_a_mailbox_over_exchanges_connection_limit_sends_on_the_others(self) -> None:
        # Exchange Online lets a mailbox send on 3 connections at once; against our default
        # 4, the fourth is greeted and authenticated, and its message is refused after the
        # content with 432 4.3.2. That is no attempt of the message: it goes on one of the
        # three, and nothing is deferred.
        self.configure()
        self.relay.sending_limit = 3
        said = self.hear_everything()
        ids = [self.enqueue() for _ in range(20)]
        self.start()
        self.assertEqual({self.state(i) for i in ids}, {"sent"})
        self.assertEqual({self.shown(i).attempts for i in ids}, {1})
        self.assertEqual(len(self.relay.messages), 20)
        self.assertEqual(len(self.relay.over_sending_limit), 1)
        (pool,) = self.service.delivery.pools.values()
        self.assertFalse(pool.down())
        self.assertEqual(pool.held_at, 3)
        held = [line for line in said if "turned a connection away" in line]
        self.assertEqual(
            held,
            [
                "relay a.test turned a connection away while 3 other(s) of ours were open "
                f"or opening (after the content: {EXCHANGE_CONCURRENT_LIMIT}); no more than 3"
                " for 30s"
            ],
        )

    def test_the_only_connection_over_the_limit_defers_as_a_relay_down(self) -> None:
        # Other programs hold the mailbox's three connections: ours is the one too many.
        # Its message and the ones waiting are deferred at once, by the relay's words,
        # and the relay is down for a while rather than tried message by message.
        self.relay_keys = "max_connections = 1\n"
        self.configure()
        self.relay.sending_limit = 0
        ids = [self.enqueue() for _ in range(3)]
        self.start()
        self.assertEqual({self.state(i) for i in ids}, {"deferred"})
        self.assertEqual(
            self.shown(ids[0]).last_error,
            f"a.test:25: after the content: {EXCHANGE_CONCURRENT_LIMIT}",
        )
        self.assertEqual(len(self.relay.over_sending_limit), 1)
        self.assertEqual(self.relay.messages, [])
        (pool,) = self.service.delivery.pools.values()
        self.assertTrue(pool.down())

    def test_a_relay_that_turns_every_connection_away_is_down(self) -> None:
        # A 421 to every connection: not a limit but a relay that takes nothing now.
        self.configure()
        self.relay.greeting = "421 4.3.2 too busy, try later"
        ids = [self.enqueue() for _ in range(20)]
        self.start()
        self.assertEqual({self.state(i) for i in ids}, {"deferred"})
        (pool,) = self.service.delivery.pools.values()
        self.assertTrue(pool.down())
        self.assertEqual(
            self.store.show(ids[-1]).last_error,
            "a.test:25: relay refused the session: 421 4.3.2 too busy, try later",
        )

    def test_slow_rate_limit_leases_only_what_can_start_soon(self) -> None:
        self.relay_keys = "rate_limit = 1/h\nmax_connections = 1\n"
        self.configure()
        ids = [self.enqueue() for _ in range(5)]
        self.start()
        # The first goes at once. lease_seconds is 600: at one message an hour, only one more
        # lease may be held, waiting for its turn; the rest stay queued.
        self.assertEqual(
            sorted(self.state(i) for i in ids), ["active", "queued", "queued", "queued", "sent"]
        )
        stopping = self.service.stopService()
        settle(self.clock)
        self.successResultOf(stopping)  # the wait for the rate limit does not hold up a stop
        self.assertEqual(
            sorted(self.state(i) for i in ids), ["queued", "queued", "queued", "queued", "sent"]
        )

    def test_fails_over_to_the_next_relay(self) -> None:
        self.configure(
            "[Relay:main]\nhost = a.test\nsecurity = none\npriority = 1\n"
            "[Relay:backup]\nhost = b.test\nsecurity = none\nport = 26\npriority = 2\n"
        )
        self.relays["a.test"].refuse = True
        message_id = self.enqueue()
        self.start()
        self.assertEqual(self.state(message_id), "sent")
        self.assertEqual(len(self.relays["b.test"].messages), 1)
        self.assertIn("relay=b.test[192.0.2.25]:26", self.lines[0])

    def two_relays(self, main: str = "", backup: str = "") -> None:
        self.configure(
            "[Relay:main]\nhost = a.test\nsecurity = none\npriority = 1\n"
            + main
            + "[Relay:backup]\nhost = b.test\nsecurity = none\nport = 26\npriority = 2\n"
            + backup
        )

    def test_the_failover_relay_uses_its_own_pool(self) -> None:
        """The defect: relay b was opened 9 times for 24 messages, with relay a's
        max_connections (8) and b's own max_connections = 1 ignored."""
        self.two_relays(
            main="max_connections = 8\n",
            backup="max_connections = 1\nmax_messages_per_connection = 1000\n",
        )
        self.relays["a.test"].refuse = True
        ids = [self.enqueue() for _ in range(24)]
        self.start()
        self.assertEqual({self.state(i) for i in ids}, {"sent"})
        backup = self.relays["b.test"]
        self.assertEqual(len(backup.messages), 24)
        self.assertEqual(backup.connections, 1)
        self.assertEqual(backup.most_open, 1)

    def test_the_failover_relay_renews_by_its_own_limit(self) -> None:
        self.two_relays(
            main="max_messages_per_connection = 100\n",
            backup="max_connections = 1\nmax_messages_per_connection = 2\n",
        )
        self.relays["a.test"].refuse = True
        for _ in range(6):
            self.enqueue()
        self.start()
        self.assertEqual(len(self.relays["b.test"].messages), 6)
        self.assertEqual(self.relays["b.test"].connections, 3)

    def test_the_failover_relay_keeps_its_own_rate_limit(self) -> None:
        self.two_relays(backup="rate_limit = 1/s\nmax_connections = 1\n")
        self.relays["a.test"].refuse = True
        for _ in range(3):
            self.enqueue()
        self.start()
        self.assertEqual(len(self.relays["b.test"].messages), 1)
        self.clock.advance(1)
        settle(self.clock)
        self.assertEqual(len(self.relays["b.test"].messages), 2)

    def test_a_relay_that_is_down_is_skipped_for_a_while(self) -> None:
        self.two_relays()
        main, backup = self.relays["a.test"], self.relays["b.test"]
        main.refuse = True
        self.enqueue()
        service = self.start()
        self.assertEqual(len(backup.messages), 1)
        attempts = len(main.refused)
        # New mail within DOWN_FOR goes straight to the backup, without dialling main.
        self.clock.advance(DOWN_FOR - 1)
        settle(self.clock)
        self.enqueue()
        service.poller.wake()
        settle(self.clock)
        self.assertEqual(len(backup.messages), 2)
        self.assertEqual(len(main.refused), attempts)
        # After it, main is tried again and takes the mail once it answers.
        main.refuse = False
        self.clock.advance(2)
        settle(self.clock)
        self.enqueue()
        service.poller.wake()
        settle(self.clock)
        self.assertEqual(len(main.messages), 1)

    def test_every_relay_down_defers_with_what_each_said(self) -> None:
        self.two_relays()
        self.relays["a.test"].refuse = True
        self.relays["b.test"].greeting = "421 4.3.2 busy"
        message_id = self.enqueue()
        self.start()
        info = self.store.show(message_id)
        self.assertEqual(info.state, "deferred")
        self.assertEqual(
            info.last_error,
            "a.test:25: connection refused; b.test:26: relay refused the session: 421 4.3.2 busy",
        )
        # b was reached, so the line names the address reached, not [none].
        self.assertIn("relay=b.test[192.0.2.25]:26 ", self.lines[-1])

    def test_none_in_the_log_only_when_no_connection_was_made(self) -> None:
        self.configure()
        self.relay.refuse = True
        refused = self.enqueue()
        self.start()
        self.assertEqual(self.state(refused), "deferred")
        self.assertIn("relay=a.test[none] ", self.lines[-1])
        self.relay.refuse = False
        self.relay.greeting = "421 4.3.2 busy"
        self.clock.advance(61)
        settle(self.clock)
        self.assertIn("relay=a.test[192.0.2.25]:25 ", self.lines[-1])

    def test_smtp_fails_over_to_a_maildir_capture(self) -> None:
        capture = os.path.join(self.dir, "capture")
        self.configure(
            "[Relay:main]\nhost = a.test\nsecurity = none\npriority = 1\n"
            f"[Relay:capture]\ntransport = maildir\npath = {capture}\npriority = 2\n"
        )
        self.relay.refuse = True
        message_id = self.enqueue()
        self.start()
        self.assertEqual(self.state(message_id), "sent")
        (captured,) = os.listdir(os.path.join(capture, "new"))
        mode = os.stat(os.path.join(capture, "new", captured)).st_mode & 0o777
        self.assertEqual(oct(mode), "0o600")  # it holds mail, whatever the umask
        self.assertIn(f"relay=maildir:{capture} ", self.lines[-1])
        with open(os.path.join(capture, "new", captured), "rb") as handle:
            content = handle.read()
        # Maildir's line ending is LF, the lines we add included: mutt and Python's
        # mailbox read a CR as part of the header's value.
        self.assertNotIn(b"\r", content)
        self.assertTrue(content.startswith(b"Return-Path: <"), content[:40])
        self.assertIn(f"\nX-Queue-Id: {message_id}\n".encode(), content)

    def test_per_recipient_outcomes_are_kept(self) -> None:
        self.configure()
        self.relay.rcpt_replies = {
            "bad@example.org": "550 5.1.1 unknown",
            "grey@example.org": "450 4.7.1 greylisted",
        }
        message_id = self.enqueue("ok@example.org", "bad@example.org", "grey@example.org")
        self.start()
        info = self.store.show(message_id)
        self.assertEqual(info.state, "deferred")
        self.assertEqual(
            {r.address: r.state for r in info.recipients},
            {"ok@example.org": "sent", "bad@example.org": "failed", "grey@example.org": "pending"},
        )
        self.relay.rcpt_replies = {}
        self.clock.advance(61)
        settle(self.clock)
        self.assertEqual(self.state(message_id), "failed")  # bad@ stays failed
        self.assertEqual(
            [m[1] for m in self.relay.messages], [["ok@example.org"], ["grey@example.org"]]
        )

    def test_rate_limit_lets_a_burst_through_then_one_period_per_batch(self) -> None:
        self.relay_keys = "rate_limit = 3/s\nmax_connections = 2\n"
        self.configure()
        for _ in range(10):
            self.enqueue()
        self.start()
        self.assertEqual(len(self.relay.messages), 3)
        self.clock.advance(0.999)
        settle(self.clock)
        self.assertEqual(len(self.relay.messages), 3)
        for sent in (6, 9, 10):
            self.clock.pump([0.001, 0.999])
            settle(self.clock)
            self.assertEqual(len(self.relay.messages), sent)

    def test_30_a_minute_holds_in_every_window_of_a_minute(self) -> None:
        """Microsoft 365's limit per mailbox: however the minute is laid over the run."""
        self.relay_keys = "rate_limit = 30/m\nmax_connections = 4\n"
        self.configure()
        for _ in range(100):
            self.enqueue()
        arrivals: list[float] = []
        self.relay.messages = _Clocked(self.clock, arrivals)  # type: ignore[assignment]
        self.start()
        for _ in range(4 * 60 * 4):  # four minutes, in quarter seconds
            self.clock.advance(0.25)
            settle(self.clock)
        self.assertEqual(len(arrivals), 100)
        busiest = max(sum(1 for t in arrivals if start <= t < start + 60) for start in arrivals)
        self.assertEqual(busiest, 30)
        self.assertEqual(arrivals[29] - arrivals[0], 0.0, "the first 30 go at once")
        self.assertGreaterEqual(arrivals[-1] - arrivals[0], 180.0)

    def test_timeout_defers(self) -> None:
        self.configure()
        self.relay.hang_after_body = True
        message_id = self.enqueue()
        self.start()
        self.assertEqual(self.state(message_id), "active")
        self.clock.advance(30)
        settle(self.clock)
        info = self.store.show(message_id)
        self.assertEqual(info.state, "deferred")
        self.assertEqual(info.last_error, "no reply from the relay within 30s")

    def test_poll_errors_are_logged_and_polling_goes_on(self) -> None:
        self.configure()
        original = self.store.record_and_enqueue
        calls = []

        def broken_once(*args: Any) -> Any:
            if args[7]:  # a turn that makes the poller's lease
                calls.append(args)
                if len(calls) == 1:
                    raise RuntimeError("disk trouble")
            return original(*args)

        self.store.record_and_enqueue = broken_once  # type: ignore[method-assign]
        message_id = self.enqueue()
        service = self.start()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(service.poller.running)
        self.clock.advance(5)
        settle(self.clock)
        self.assertEqual(self.state(message_id), "sent")


class _Clocked(list):  # type: ignore[type-arg]
    """The fake relay's message list, noting when each message arrived."""

    def __init__(self, clock: Any, arrivals: list[float]) -> None:
        super().__init__()
        self.clock = clock
        self.arrivals = arrivals

    def append(self, item: Any) -> None:
        self.arrivals.append(self.clock.seconds())
        super().append(item)


class StopTests(DeliveryCase):
    def test_stop_gives_back_unstarted_and_bounds_in_flight(self) -> None:
        """The first message is on the wire, the second pipelined behind it, the third
        waits. Stop gives the third back at once; the second, whose content never went,
        is given back untouched when the hung connection is cut."""
        self.relay_keys = "max_connections = 1\n"
        self.configure()
        self.relay.hang_after_body = True
        first = self.enqueue()
        self.clock.advance(1)  # older first
        second = self.enqueue()
        self.clock.advance(1)
        third = self.enqueue()
        service = self.start()
        self.assertEqual([self.state(m) for m in (first, second, third)], ["active"] * 3)
        self.assertIn(b"MAIL FROM", self.relay.live[0].buffer, "the second's envelope went")
        stopping = service.stopService()
        settle(self.clock)
        self.assertNoResult(stopping)
        self.assertEqual(self.state(third), "queued")  # never started: given back
        self.clock.advance(10)  # shutdown_timeout: the hung connection is aborted
        settle(self.clock)
        self.successResultOf(stopping)
        self.assertEqual(self.state(first), "deferred")
        self.assertEqual(self.state(second), "queued", "not an attempt: back untouched")
        self.assertEqual(self.shown(second).attempts, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_waits_for_in_flight_delivery(self) -> None:
        self.configure()
        self.relay.hang_after_body = True
        message_id = self.enqueue()
        service = self.start()
        stopping = service.stopService()
        settle(self.clock)
        self.assertNoResult(stopping)
        self.relay.live[0].resume("250 2.0.0 OK late")
        settle(self.clock)
        self.successResultOf(stopping)
        self.assertEqual(self.state(message_id), "sent")


class StatsTests(DeliveryCase):
    def test_a_statistics_line_every_interval(self) -> None:
        text = (
            f"[Daemon]\nstate_dir = {self.dir}\n[Queue]\nretry_delay = 10m\nmax_retry_delay = 1h\n"
            "[Relay]\nhost = a.test\nsecurity = none\n"
            "[Logging]\nstats_interval = 1m\n"
        )
        self.config = parse_config(text, os.path.join(self.dir, "c.conf"))
        self.store = SQLiteQueue(self.config.queue.path)
        self.relay.data_replies = ["451 later"]
        for _ in range(3):
            self.enqueue()
        self.start()
        self.assertFalse([line for line in self.lines if line.startswith("stats:")])
        self.clock.advance(60)
        settle(self.clock)
        (stats,) = [line for line in self.lines if line.startswith("stats:")]
        self.assertEqual(
            stats,
            "stats: queued=0 deferred=1 active=0 held=0 failed=0 sent=2 oldest=60s "
            "sent_per_min=2.0 deferred_per_min=1.0 failed_per_min=0.0",
        )


class GroupCommitTests(DeliveryCase):
    def park_commits(self, service: MailerService) -> tuple[list[tuple[int, int]], list[Any]]:
        """Commits that do not finish at once, as on the queue thread: each store call
        waits for its Deferred in the returned list. The first list records every
        record_and_enqueue as (outcomes, new messages)."""
        commits: list[tuple[int, int]] = []
        original = self.store.record_and_enqueue

        def counting(outcomes: Any, policy: Any, items: Any, *args: Any) -> Any:
            commits.append((len(outcomes), len(items)))
            return original(outcomes, policy, items, *args)

        self.store.record_and_enqueue = counting  # type: ignore[method-assign]
        parked: list[Deferred[Any]] = []
        run = service.queue._run
        self.addCleanup(setattr, service.queue, "_run", run)
        service.queue._run = lambda f, *a: (  # type: ignore[method-assign]
            parked.append(Deferred()) or parked[-1].addCallback(lambda _: f(*a))
        )
        return commits, parked

    def test_submissions_arriving_together_share_one_commit(self) -> None:
        from smtpmailer.message import Envelope

        self.configure()
        service = self.start()
        commits, parked = self.park_commits(service)
        answers = [
            service.submit(Envelope("a@example.com", (f"r{i}@example.org",), b"x\r\n"))
            for i in range(5)
        ]
        self.assertEqual(commits, [])
        parked[0].callback(None)  # the first commit (one message) finishes...
        self.assertEqual(commits, [(0, 1)])
        parked[1].callback(None)  # ...and the four that waited go in one
        self.assertEqual(commits, [(0, 1), (0, 4)])
        ids = [self.successResultOf(answer) for answer in answers]
        self.assertEqual(len(set(ids)), 5)

    def test_outcomes_and_submissions_share_one_commit(self) -> None:
        """A delivery outcome and new messages that arrive while the queue thread writes
        go into its next transaction together, and each caller gets its own result."""
        from smtpmailer.message import Envelope

        self.configure()
        service = self.start()
        service.poller.paused = True  # the new messages stay queued: the commit alone counts
        first = self.enqueue("first@example.org")
        (lease,) = self.store.lease(self.clock.seconds(), 1, 300.0)
        self.assertEqual(lease.id, first)
        commits, parked = self.park_commits(service)
        blocker = service.submit(Envelope("a@example.com", ("b@example.org",), b"x\r\n"))
        outcome = Outcome(lease, (RecipientResult("first@example.org", "sent", "250 ok"),), "r")
        recording = service.dispatcher.record(outcome)
        answers = [
            service.submit(Envelope("a@example.com", ("c@example.org",), b"x\r\n")),
            # No recipient: refused by the store alone (check_envelope would refuse it first).
            service.commit_checked(Envelope("a@example.com", (), b"x\r\n")),
        ]
        parked.pop(0).callback(None)  # the commit they waited for: one message
        self.successResultOf(blocker)
        self.assertNoResult(recording)
        parked.pop(0).callback(None)  # then the outcome and both messages, together
        self.assertEqual(commits, [(0, 1), (1, 2)])
        recorded = self.successResultOf(recording)
        self.assertEqual((recorded.outcome, recorded.state), (outcome, "sent"))
        self.assertEqual(self.state(first), "sent")
        self.assertEqual(self.state(self.successResultOf(answers[0])), "queued")
        self.failureResultOf(answers[1], QueueError)
        self.assertEqual(parked, [])

    def test_the_pollers_lease_rides_the_turn_that_records_outcomes(self) -> None:
        """A drain: more is due than delivery takes at once. The poll that an outcome's
        freed room sets off makes its lease in the next turn, with the outcomes that came
        meanwhile: no lease transaction of its own, and every message is sent once."""
        self.configure(
            "[Relay]\nhost = a.test\nsecurity = none\nmax_connections = 1\n",
            queue="batch_size = 2\n",
        )
        service = self.start()
        ids = [self.enqueue(f"r{i}@example.org") for i in range(10)]
        alone: list[Any] = []
        lease = self.store.lease
        self.store.lease = lambda *a: alone.append(a) or lease(*a)  # type: ignore[method-assign]
        turns: list[tuple[int, bool]] = []  # (outcomes, with the poller's lease)
        original = self.store.record_and_enqueue

        def counting(outcomes: Any, *args: Any) -> Any:
            turns.append((len(outcomes), args[-1]))
            return original(outcomes, *args)

        self.store.record_and_enqueue = counting  # type: ignore[method-assign]
        _, parked = self.park_commits(service)
        service.poller.wake()
        settle(self.clock)
        for _ in range(100):  # one parked commit at a time, until none is left
            if not parked:
                break
            parked.pop(0).callback(None)
            settle(self.clock)
        self.assertEqual([self.state(i) for i in ids], ["sent"] * 10)
        self.assertEqual(len(self.relay.messages), 10, "each sent once")
        self.assertEqual(alone, [], "no lease of its own")
        self.assertIn((1, True), turns, turns)  # an outcome and the lease, one commit

    def finish_parked(self, parked: list[Any]) -> None:
        """Let every parked store call run, including the ones they lead to."""
        while parked:
            parked.pop(0).callback(None)
            settle(self.clock)

    def test_stop_waits_for_a_poll_under_way(self) -> None:
        """A poll whose lease is still being written when the daemon stops: its leases
        reach delivery before delivery stops, so none is left active (leased, never
        attempted and never given back)."""
        self.configure()
        service = self.start()
        first = self.enqueue("first@example.org")
        _, parked = self.park_commits(service)
        service.poller.wake()
        settle(self.clock)
        self.assertEqual(len(parked), 1)  # the poll's lease
        stopping = service.stopService()
        self.assertNoResult(stopping)
        self.finish_parked(parked)
        self.successResultOf(stopping)
        # Delivery was still running when the lease reached it, so it finished the message
        # within shutdown_timeout.
        self.assertEqual(self.state(first), "sent")
        self.assertEqual(len(self.relay.messages), 1)

    def test_a_submission_leased_as_delivery_stops_is_given_back_before_the_queue_closes(
        self,
    ) -> None:
        from smtpmailer.message import Envelope

        self.configure()
        service = self.start()
        _, parked = self.park_commits(service)
        # Delivery has room, so this commit leases the message for delivery directly...
        answer = service.submit(Envelope("a@example.com", ("r@example.org",), b"x\r\n"))
        stopping = service.stopService()  # ...which stops before the commit is written.
        self.finish_parked(parked)
        message_id = self.successResultOf(answer)
        self.successResultOf(stopping)
        self.assertEqual(self.state(message_id), "queued")

    def test_a_submission_with_idle_connections_needs_no_poll(self) -> None:
        """With room in delivery and nothing older queued, a submission is leased in its
        own commit and delivered without the poller's lease transaction."""
        from smtpmailer.message import Envelope

        self.configure()
        service = self.start()
        polls = []
        original = self.store.lease

        def counting(*args: Any) -> Any:
            polls.append(args)
            return original(*args)

        self.store.lease = counting  # type: ignore[method-assign]
        answer = service.submit(Envelope("a@example.com", ("r@example.org",), b"x\r\n"))
        message_id = self.successResultOf(answer)
        settle(self.clock)
        self.assertEqual(self.state(message_id), "sent")
        self.assertEqual(len(self.relay.messages), 1)
        self.assertEqual(polls, [])

    def test_a_paused_queue_leases_nothing_at_submission(self) -> None:
        from smtpmailer.message import Envelope

        self.configure()
        service = self.start()
        service.poller.paused = True
        answer = service.submit(Envelope("a@example.com", ("r@example.org",), b"x\r\n"))
        message_id = self.successResultOf(answer)
        settle(self.clock)
        self.assertEqual(self.state(message_id), "queued")
        self.assertEqual(self.relay.messages, [])


class StorageFaultTests(DeliveryCase):
    def test_an_outcome_the_store_refused_is_recorded_once_it_takes_it(self) -> None:
        """After a disk-full error the message stayed active until a restart or its lease
        ran out (~20 min). Now the outcome is tried again every poll interval."""
        from smtpmailer.queue import NoSpace

        self.configure()
        original = self.store.record_and_enqueue
        full = [True]

        def record_and_enqueue(outcomes: Any, *args: Any) -> Any:
            if outcomes and full[0]:
                raise NoSpace("queue storage is full: no space left on device (test)")
            return original(outcomes, *args)

        self.store.record_and_enqueue = record_and_enqueue  # type: ignore[method-assign]
        message_id = self.enqueue()
        self.start()
        self.assertEqual(len(self.relay.messages), 1)
        self.assertEqual(self.state(message_id), "active")
        self.assertEqual(self.flushLoggedErrors(), [], "one warning line, no traceback")
        self.clock.advance(5)  # poll_interval: still full
        settle(self.clock)
        self.assertEqual(self.state(message_id), "active")
        full[0] = False  # space is back
        self.clock.advance(5)
        settle(self.clock)
        self.assertEqual(self.state(message_id), "sent")
        self.assertEqual(len(self.relay.messages), 1, "delivered once")
        self.assertIn("status=sent", self.lines[-1])

    def test_a_damaged_queue_is_one_line_a_minute_not_a_traceback_a_poll(self) -> None:
        from smtpmailer.queue import QueueCorrupt

        self.configure()
        errors = []

        original = self.store.record_and_enqueue

        def damaged(*args: Any) -> Any:
            if not args[7]:  # not a turn that makes the poller's lease
                return original(*args)
            errors.append(args)
            raise QueueCorrupt("queue database q: database disk image is malformed; ...")

        self.store.record_and_enqueue = damaged  # type: ignore[method-assign]
        service = self.start()
        seen: list[str] = []

        def observe(event: dict[str, Any]) -> None:
            if "queue poll failed" in str(event.get("log_format", "")):
                seen.append(str(event.get("error")))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        for _ in range(12):  # a minute of polls
            self.clock.advance(5)
            settle(self.clock)
        self.assertGreaterEqual(len(errors), 12)
        self.assertEqual(len(seen), 1, seen)  # the first was logged before we listened
        self.assertEqual(self.flushLoggedErrors(), [], "no traceback")
        self.assertTrue(service.poller.running)


class RouteTests(DeliveryCase):
    """[Route:NAME]: the relays by envelope sender; everything else in priority order."""

    def routes(self, routes: str) -> None:
        self.configure(
            "[Relay:main]\nhost = a.test\nsecurity = none\npriority = 1\n"
            "[Relay:backup]\nhost = b.test\nsecurity = none\nport = 26\npriority = 2\n" + routes
        )

    def enqueue_from(self, sender: str) -> str:
        return self.store.enqueue(
            sender, ["r@example.org"], b"Subject: t\r\n\r\nb\r\n", 5, self.clock.seconds(), 100
        )

    def test_the_sender_picks_the_relays(self) -> None:
        self.routes(
            "[Route:billing]\nsender = *@billing.example.com, ceo@example.com\nvia = backup\n"
        )
        billing = self.enqueue_from("Invoices@Billing.example.com")  # globs ignore case
        ceo = self.enqueue_from("ceo@example.com")
        other = self.enqueue_from("app@example.com")
        self.start()
        main, backup = self.relays["a.test"], self.relays["b.test"]
        self.assertEqual(
            sorted(m[0] for m in backup.messages),
            ["Invoices@Billing.example.com", "ceo@example.com"],
        )
        self.assertEqual([m[0] for m in main.messages], ["app@example.com"])
        self.assertEqual({self.state(i) for i in (billing, ceo, other)}, {"sent"})
        # queue show names the relay that took each message, by name and address.
        import io

        from smtpmailer.cli.queue import show_message

        for message, name, address in (
            (billing, "backup", "b.test[192.0.2.25]:26"),
            (other, "main", "a.test[192.0.2.25]:25"),
        ):
            shown = self.store.show(message).as_json(self.clock.seconds())
            self.assertEqual((shown["relay"], shown["relay_address"]), (name, address))
            out = io.StringIO()
            show_message(self.store, self.clock.seconds(), out, message, as_json=False)
            self.assertIn(f"\nrelay: {name} ({address})\n", out.getvalue())

    def test_the_first_route_that_matches_wins_and_via_is_the_order(self) -> None:
        self.routes(
            "[Route:first]\nsender = *@example.com\nvia = backup, main\n"
            "[Route:second]\nsender = *\nvia = main\n"
        )
        self.relays["b.test"].refuse = True  # the route's first relay is down: its second
        message_id = self.enqueue_from("app@example.com")
        self.start()
        self.assertEqual(self.state(message_id), "sent")
        self.assertEqual(len(self.relays["a.test"].messages), 1)
        self.assertEqual(len(self.relays["b.test"].refused), 1)

    def test_a_route_names_only_its_relays(self) -> None:
        """Mail routed to one relay is not handed to the others when that one is down."""
        self.routes("[Route:billing]\nsender = *@billing.example.com\nvia = backup\n")
        self.relays["b.test"].refuse = True
        message_id = self.enqueue_from("a@billing.example.com")
        self.start()
        info = self.store.show(message_id)
        self.assertEqual(info.state, "deferred")
        self.assertEqual(info.last_error, "b.test:26: connection refused")
        self.assertEqual(self.relays["a.test"].messages, [])

    def test_config_errors_name_the_line(self) -> None:
        from smtpmailer.ini import ConfigError

        relays = "[Relay:main]\nhost = a\n[Relay:backup]\nhost = b\n"
        cases = {
            "[Route:x]\nsender = *@a.org\nvia = mian\n": "7: via: no relay named 'mian'",
            "[Route:x]\nsender = not an address\nvia = main\n": "can never match a sender",
            "[Route]\nsender = *\nvia = main\n": "name each route: [Route:NAME]",
            "[Route:x]\nvia = main\n": "needs sender",
            "[Route:x]\nsender = *\n": "needs via",
        }
        for text, reason in cases.items():
            with self.assertRaises(ConfigError) as caught:
                parse_config(relays + text, "c.conf")
            self.assertIn(reason, str(caught.exception), text)

    def test_shown_by_config_and_compared_on_reload(self) -> None:
        from smtpmailer.config import flatten, render_config

        self.routes("[Route:billing]\nsender = *@billing.example.com\nvia = backup, main\n")
        rendered = render_config(self.config)
        self.assertIn(
            "[Route:billing]\nsender = *@billing.example.com\nvia = backup, main\n", rendered
        )
        self.assertEqual(flatten(self.config)["[Route:billing] via"], "backup, main")


class QuotaTests(DeliveryCase):
    def test_a_quota_that_resets_defers_instead_of_failing(self) -> None:
        """Gmail answers its daily limit with 550 5.4.5: the mail must wait, not fail."""
        self.configure()
        self.relay.data_replies = ["550 5.4.5 Daily user sending quota exceeded"]
        message_id = self.enqueue()
        self.start()
        info = self.store.show(message_id)
        self.assertEqual(info.state, "deferred")
        self.assertEqual(info.last_error, "550 5.4.5 Daily user sending quota exceeded")
        self.clock.advance(61)
        settle(self.clock)
        self.assertEqual(self.state(message_id), "sent")

    def test_defer_on_is_the_relays_own(self) -> None:
        self.relay_keys = "defer_on = 5.7.1\nmax_connections = 1\n"  # one after the other
        self.configure()
        self.relay.data_replies = ["550 5.4.5 quota", "550 5.7.1 throttled"]
        first, second = self.enqueue("a@example.org"), self.enqueue("b@example.org")
        self.relay_keys = ""
        self.start()
        self.assertEqual(self.state(first), "failed")  # 5.4.5 is not in this relay's list
        self.assertEqual(self.state(second), "deferred")
