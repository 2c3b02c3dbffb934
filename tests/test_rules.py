"""The queue's rules, without any store: what an attempt makes of a message."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.queue import RecipientResult, WrongState, rules
from tests.queue_contract import POLICY


def result(address: str, status: str, reply: str = "") -> RecipientResult:
    return RecipientResult(address, status, reply)


class JudgeTests(SynchronousTestCase):
    def judge(
        self,
        *,
        pending: list[str],
        any_failed: bool = False,
        attempts: int = 0,
        results: list[RecipientResult] | None = None,
    ) -> rules.Verdict:
        return rules.judge(
            attempts_before=attempts,
            age_from=0.0,
            results=results or [],
            pending=pending,
            any_failed=any_failed,
            policy=POLICY,
            now=100.0,
        )

    def test_every_recipient_done(self) -> None:
        self.assertEqual(self.judge(pending=[]).state, "sent")
        failed = self.judge(pending=[], any_failed=True, results=[result("a", "failed", "550 no")])
        self.assertEqual(
            (failed.state, failed.last_error, failed.attempts), ("failed", "550 no", 1)
        )

    def test_pending_recipients_defer_on_the_schedule(self) -> None:
        verdict = self.judge(pending=["a"], attempts=1, results=[result("a", "deferred", "451 x")])
        self.assertEqual((verdict.state, verdict.attempts), ("deferred", 2))
        self.assertEqual(verdict.next_attempt, 100.0 + 120)  # the second retry delay
        self.assertEqual(verdict.last_error, "451 x")

    def test_exhausted_retries_fail_the_pending_with_the_reason(self) -> None:
        verdict = self.judge(pending=["a", "b"], attempts=3, results=[result("a", "deferred", "4")])
        self.assertEqual(verdict.state, "failed")
        self.assertEqual([address for address, _ in verdict.expired], ["a", "b"])
        self.assertIn("retries exhausted after 4 attempts", verdict.last_error or "")
        self.assertTrue((verdict.last_error or "").startswith("4; "))

    def test_recipient_states(self) -> None:
        self.assertEqual(rules.recipient_update(result("a", "sent", "250")), ("sent", None))
        self.assertEqual(rules.recipient_update(result("a", "failed", "550")), ("failed", "550"))
        self.assertEqual(rules.recipient_update(result("a", "deferred", "451")), ("pending", "451"))

    def test_operator_actions_by_state(self) -> None:
        self.assertRaises(WrongState, rules.check_hold, "Q", "held")
        self.assertRaises(WrongState, rules.check_release, "Q", "queued")
        self.assertRaises(WrongState, rules.check_delete, "Q", "active")
        self.assertFalse(rules.retry_restores_failed("Q", "deferred"))
        self.assertTrue(rules.retry_restores_failed("Q", "failed"))
        self.assertRaises(WrongState, rules.retry_restores_failed, "Q", "sent")
