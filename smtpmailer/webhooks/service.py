"""WebhookService: one sender per ``[Webhook:NAME]``, each reading the queue's events from
its cursor and POSTing them one at a time, in the order they happened. An event is told
until the URL answers 2xx (backing off from 1 s to 5 minutes while it does not), and only
then is the cursor moved past it: a webhook that is down, slow or gone loses nothing and
never holds up mail, whose outcomes are written whatever the webhooks do. The cursor is
written after each event (without waiting for the disk), so a crash repeats at most the
last few (at least once).

Each request's body is the event's JSON with ``timestamp`` (when it was sent) added, and
``X-Smtpmailer-Signature`` is the lower-case hex HMAC-SHA256 of those exact bytes with the
secret: the timestamp is covered, so a replayed request is recognisably old."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater

from smtpmailer import __version__
from smtpmailer.config import Config
from smtpmailer.config.sections import WebhookConfig
from smtpmailer.httpclient import HTTPFailure, PooledClient, Request
from smtpmailer.logs import log
from smtpmailer.proxy import proxy_settings
from smtpmailer.queue import QueueError

BATCH = 100
CLAIM_AGAIN = 5.0  # how often a node that does not tell a webhook looks again
IDLE = 1.0  # how often an idle sender looks for new events
FIRST_RETRY, LAST_RETRY = 1.0, 300.0
PRUNE_EVERY = 60.0


def signature(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class Sender:
    """Tells one webhook every event after its cursor, in order."""

    def __init__(self, webhook: WebhookConfig, owner: WebhookService) -> None:
        self.webhook = webhook
        self._owner = owner
        self.cursor = 0
        self.newest = 0
        self.failing_since: float | None = None
        self._sleeping: Deferred[Any] | None = None
        self._request: Deferred[Any] | None = None
        self._stopped = False
        self.done: Deferred[None] = Deferred.fromCoroutine(self._run())
        self.done.addErrback(self._ended_badly)

    def _ended_badly(self, failure: Any) -> None:
        if not failure.check(CancelledError):
            log.failure("webhook {name} stopped", failure=failure, name=self.webhook.name)

    async def _sleep(self, seconds: float) -> None:
        self._sleeping = deferLater(self._owner.clock, seconds)
        try:
            await self._sleeping
        finally:
            self._sleeping = None

    def stop(self) -> Deferred[None]:
        self._stopped = True
        for waiting in (self._sleeping, self._request):
            if waiting is not None:
                waiting.cancel()
        return self.done

    async def _run(self) -> None:
        while not self._stopped:
            try:
                await self._round()
            except QueueError as error:  # the store is busy or away: try again later
                log.warn("webhook {name}: {error}", name=self.webhook.name, error=error)
                await self._sleep(CLAIM_AGAIN)

    async def _round(self) -> None:
        """One batch of events from the cursor, or a wait when there is none (or when
        another node of a shared queue tells this webhook)."""
        queue, name = self._owner.queue, self.webhook.name
        if not await queue.claim_webhook(name):
            await self._sleep(CLAIM_AGAIN)
            return
        # From the queue each time: another node may have told some meanwhile.
        self.cursor = max(self.cursor, await queue.webhook_cursor(name))
        events = await queue.events_after(self.cursor, BATCH)
        if not events:
            await self._sleep(IDLE)
            return
        for seq, kind, body in events:
            if kind in self.webhook.events:
                await self._tell(kind, body)
                if self._stopped:
                    return
            self.cursor = seq
            await queue.set_webhook_cursor(name, seq)

    async def _tell(self, kind: str, body: str) -> None:
        """Until the webhook takes it (or the service stops)."""
        wait = FIRST_RETRY
        while not self._stopped:
            problem = await self._post(kind, body)
            if problem is None:
                if self.failing_since is not None:
                    log.info("webhook {name}: answering again", name=self.webhook.name)
                self.failing_since = None
                self._owner.counted(self.webhook.name, "sent")
                return
            self._owner.counted(self.webhook.name, "failed")
            if self.failing_since is None:
                self.failing_since = self._owner.clock.seconds()
                log.warn(
                    "webhook {name}: {problem}; trying again, the events wait in the queue",
                    name=self.webhook.name,
                    problem=problem,
                )
            await self._sleep(wait)
            wait = min(wait * 2, LAST_RETRY)

    async def _post(self, kind: str, body: str) -> str | None:
        """None once the webhook answered 2xx, else what went wrong."""
        now = int(self._owner.clock.seconds())
        event = json.loads(body)
        event["timestamp"] = now
        data = json.dumps(event, separators=(",", ":")).encode()
        request = Request(
            "POST",
            self.webhook.url,
            {
                "Content-Type": "application/json",
                "User-Agent": f"smtpmailer/{__version__.public()}",
                "X-Smtpmailer-Event": kind,
                "X-Smtpmailer-Timestamp": str(now),
                "X-Smtpmailer-Signature": signature(self.webhook.secret or "", data),
            },
            data,
        )
        try:
            self._request = self._owner.client(request, self.webhook.timeout)
            response = await self._request
        except HTTPFailure as error:
            return str(error)
        except CancelledError:
            return "stopped"
        finally:
            self._request = None
        if 200 <= response.status < 300:
            return None
        return f"HTTP {response.status}"


class WebhookService(Service):
    """A Sender per configured webhook; prunes the events every webhook was told, and says
    on /health when one falls behind by more than its ``max_backlog``."""

    name = "webhooks"

    def __init__(
        self,
        config: Config,
        queue: Any,
        clock: Any,
        client: Callable[..., Deferred[Any]] | None = None,
        metrics: Any = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.clock = clock
        self._client = client
        self._metrics = metrics
        self.senders: dict[str, Sender] = {}
        self._pruning: Any = None

    @property
    def client(self) -> Callable[..., Deferred[Any]]:
        if self._client is None:
            from twisted.internet import reactor

            self._client = PooledClient(reactor, 2, *proxy_settings(self.config.daemon))
        return self._client

    def counted(self, name: str, result: str) -> None:
        if self._metrics is not None:
            self._metrics.webhook_events.labels(name, result).inc()

    def startService(self) -> None:
        super().startService()
        self.queue.keep_events(bool(self.config.webhooks))
        self._start_senders()
        self._pruning = self.clock.callLater(PRUNE_EVERY, self._prune)

    def _start_senders(self) -> None:
        for webhook in self.config.webhooks:
            self.senders[webhook.name] = Sender(webhook, self)

    def _prune(self) -> None:
        def done(result: tuple[int, int]) -> None:
            _, newest = result
            for name, sender in self.senders.items():
                sender.newest = newest
                if self._metrics is not None:
                    self._metrics.webhook_backlog.labels(name).set(max(0, newest - sender.cursor))

        names = [webhook.name for webhook in self.config.webhooks]
        self.queue.prune_events(names).addCallbacks(
            done, lambda failure: log.warn("webhooks: pruning failed: {e}", e=failure.value)
        )
        self._pruning = self.clock.callLater(PRUNE_EVERY, self._prune)

    def problems(self) -> list[str]:
        """/health's reasons: a webhook too far behind."""
        found = []
        for webhook in self.config.webhooks:
            sender = self.senders.get(webhook.name)
            if sender is None:
                continue
            behind = max(0, sender.newest - sender.cursor)
            if behind > webhook.max_backlog:
                found.append(
                    f"webhook {webhook.name} is {behind} events behind (max_backlog "
                    f"{webhook.max_backlog})"
                )
        return found

    async def reconfigure(self, config: Config) -> None:
        """New or changed webhooks start again from their cursors; removed ones stop."""
        old, self.config = self.config, config
        if old.webhooks == config.webhooks:
            return
        await self._stop_senders()
        self.queue.keep_events(bool(config.webhooks))
        if self.running:
            self._start_senders()

    async def _stop_senders(self) -> None:
        senders, self.senders = self.senders, {}
        for sender in senders.values():
            await sender.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._pruning is not None and self._pruning.active():
            self._pruning.cancel()
        return Deferred.fromCoroutine(self._stop_senders())
