"""When to tell the sender: a DSN once a message has failed for good (one per message, every
failed recipient in it), and one "delayed" notice for a message still deferred after
``delay_warning`` (noted in the queue, so never twice); never for mail whose sender is
``<>`` (a DSN that cannot be delivered is not bounced again), at most ``max_per_hour`` to
one sender (the rest counted and logged), nothing with ``[Bounce] enabled = false``. A DSN
goes into the queue like any message, with the null sender, and through the same
routing."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from smtpmailer.bounce.dsn import Failed, build_dsn
from smtpmailer.config import Config
from smtpmailer.dsn_options import DSNOptions, from_meta
from smtpmailer.logs import log
from smtpmailer.message import Envelope
from smtpmailer.queue import DEFERRED, FAILED, MessageInfo, QueueError, Recorded

HOUR = 3600.0
SENDERS_KEPT = 10_000  # past this many, senders with no DSN in the last hour are dropped


def from_header(setting: str, hostname: str) -> str:
    """``[Bounce] from``: MAILER-DAEMON becomes ``Mail Delivery System
    <MAILER-DAEMON@host>``; an address is used as it is."""
    if "@" in setting:
        return setting
    return f"Mail Delivery System <{setting}@{hostname}>"


def failed_recipients(info: MessageInfo, state: str = "failed") -> list[Failed]:
    """Each recipient in ``state`` (failed; pending for a delay warning) with the reply it
    last got, the relay and the time, from the last attempt that named it (an expiry has no
    attempt of its own)."""
    found = []
    for recipient in info.recipients:
        if recipient.state != state:
            continue
        relay, at, reply = None, info.created, recipient.last_error or state
        for attempt in reversed(info.history):
            said = next((r for r in attempt.replies if r.address == recipient.address), None)
            if said is not None:
                relay, at = attempt.relay_address or attempt.relay, attempt.at
                reply = recipient.last_error or said.reply
                break
        found.append(Failed(recipient.address, reply, relay, at))
    return found


class Bouncer:
    """Told of every recorded outcome (``recorded``); queues the DSNs they call for through
    ``submit`` (the Dispatcher's, so a DSN is committed like any message)."""

    def __init__(
        self,
        config: Config,
        queue: Any,
        submit: Callable[[Envelope, int], Deferred[str]],
        clock: Any,
        hostname: str,
        counted: Callable[[str], None] = lambda kind: None,
    ) -> None:
        self.config = config
        self._queue = queue
        self._submit = submit
        self._clock = clock
        self._hostname = hostname
        self._counted = counted
        self._sent: dict[str, collections.deque[float]] = {}

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def recorded(self, recorded: Recorded) -> None:
        lease, settings = recorded.outcome.lease, self.config.bounce
        if recorded.stale or not settings.enabled:
            return
        late = settings.delay_warning and self._clock.seconds() - lease.created >= (
            settings.delay_warning
        )
        options = from_meta(lease.meta)
        if recorded.state == FAILED:
            action = "failed"
        elif recorded.state == DEFERRED and late:
            action = "delayed"
        elif any(
            r.status == "sent" and options.wants(r.address, "SUCCESS")
            for r in recorded.outcome.results
        ):
            action = "relayed"
        else:
            return
        if not lease.sender:
            if action == "failed":
                log.info("id={id} failed; no DSN: its sender is <>", id=lease.id)
            return
        only = (
            {r.address for r in recorded.outcome.results if r.status == "sent"}
            if action == "relayed"
            else None
        )
        notifying = self._notify(lease.id, lease.sender, action, options, lease.data, only)
        Deferred.fromCoroutine(notifying).addErrback(
            lambda failure: log.failure("id={id}: the DSN failed", failure=failure, id=lease.id)
        )

    def _allowed(self, sender: str) -> bool:
        now = self._clock.seconds()
        if len(self._sent) > SENDERS_KEPT:  # forget senders not heard of within the hour
            self._sent = {k: v for k, v in self._sent.items() if v and v[-1] > now - HOUR}
        recent = self._sent.setdefault(sender.lower(), collections.deque())
        while recent and recent[0] <= now - HOUR:
            recent.popleft()
        if len(recent) >= self.config.bounce.max_per_hour:
            return False
        recent.append(now)
        return True

    async def _notify(
        self,
        message_id: str,
        sender: str,
        action: str,
        options: DSNOptions,
        data: bytes,
        only: set[str] | None = None,
    ) -> None:
        """``data``: the message as the attempt carried it (a sent one is no longer kept);
        ``only``: the recipients this report may name (a relayed one: those just sent)."""
        now = self._clock.seconds()
        try:
            if action == "delayed" and not await self._queue.mark_delay_warned(message_id, now):
                return  # warned before
            if not self._allowed(sender):
                self._counted("suppressed")
                log.warn(
                    "id={id} {action}; no DSN to <{sender}>: over max_per_hour ({most})",
                    id=message_id,
                    action=action,
                    sender=sender,
                    most=self.config.bounce.max_per_hour,
                )
                return
            info = await self._queue.show(message_id)
        except QueueError as error:  # deleted meanwhile, or the store is down
            log.warn("id={id} {action}; no DSN: {error}", id=message_id, action=action, error=error)
            return
        wanted = {"failed": "FAILURE", "delayed": "DELAY", "relayed": "SUCCESS"}[action]
        state = {"failed": "failed", "delayed": "pending", "relayed": "sent"}[action]
        failed = [
            one
            for one in failed_recipients(info, state)
            if options.wants(one.address, wanted) and (only is None or one.address in only)
        ]
        if not failed:
            log.info(
                "id={id} {action}; no DSN: NOTIFY asked for none", id=message_id, action=action
            )
            return
        report = build_dsn(
            reporting_mta=self._hostname,
            from_header=from_header(self.config.bounce.sender, self._hostname),
            to=sender,
            message_id=message_id,
            arrived=info.created,
            failed=failed,
            original_headers=data.split(b"\r\n\r\n", 1)[0],
            now=now,
            action=action,
            envid=options.envid,
            orcpt=options.orcpt,
            full=data if options.ret == "FULL" else None,
        )
        try:
            dsn_id = await self._submit(Envelope("", (sender,), report), info.priority)
        except (QueueError, ValueError) as error:
            log.warn("id={id} failed; the DSN was not queued: {error}", id=message_id, error=error)
            return
        self._counted({"failed": "sent"}.get(action, action))
        if self.config.webhooks and action != "relayed":
            from smtpmailer.queue.events import message_event

            kind = "bounced" if action == "failed" else "delayed"
            body = message_event(
                kind,
                message_id,
                now,
                sender=sender,
                dsn=dsn_id,
                recipients=[one.address for one in failed],
                replies={one.address: one.reply for one in failed},
            )
            try:
                await self._queue.add_event(kind, message_id, body, now)
            except QueueError as error:
                log.warn(
                    "id={id}: the {kind} event was not kept: {e}", id=message_id, kind=kind, e=error
                )
        log.info(
            "id={id} {action}; DSN id={dsn} to <{sender}> for {n} recipient(s)",
            id=message_id,
            action=action,
            dsn=dsn_id,
            sender=sender,
            n=len(failed),
        )
