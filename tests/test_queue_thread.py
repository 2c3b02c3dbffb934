"""The queue thread: the store's calls run in order on one thread of their own, and each
answer (or error) comes back to the reactor thread."""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from smtpmailer.queue import QueueFull
from smtpmailer.queue.runner import QueueThread


class QueueThreadTests(TestCase):
    def setUp(self) -> None:
        self.thread = QueueThread(reactor)
        self.thread.start()
        self.addCleanup(self.thread.stop)

    @inlineCallbacks
    def test_calls_run_in_order_on_one_other_thread(self):  # type: ignore[no-untyped-def]
        seen: list[tuple[int, str]] = []

        def call(number: int) -> int:
            seen.append((number, threading.current_thread().name))
            return number * 10

        answers = yield gatherResults([self.thread(call, n) for n in range(50)])
        self.assertEqual(answers, [n * 10 for n in range(50)])
        self.assertEqual([n for n, _ in seen], list(range(50)))
        self.assertEqual({name for _, name in seen}, {"smtpmailer-queue"})

    @inlineCallbacks
    def test_answers_reach_the_reactor_thread(self):  # type: ignore[no-untyped-def]
        where: list[str] = []
        answer = self.thread(lambda: 1)
        answer.addCallback(lambda _: where.append(threading.current_thread().name))
        yield answer
        self.assertEqual(where, [threading.main_thread().name])

    @inlineCallbacks
    def test_an_error_fails_only_its_own_call(self):  # type: ignore[no-untyped-def]
        def full() -> None:
            raise QueueFull("queue is full")

        failing = self.thread(full)
        after = self.thread(lambda: "next")
        yield self.assertFailure(failing, QueueFull)
        self.assertEqual((yield after), "next")

    def test_stop_runs_what_was_asked_before_it(self) -> None:
        done: list[int] = []
        for n in range(20):
            self.thread(done.append, n)
        self.thread.stop()
        self.assertEqual(done, list(range(20)))
        self.thread.stop()  # twice is harmless
