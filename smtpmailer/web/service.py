"""StatusService: the HTTP status listener, its health rules and its hour of history."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import Counter, deque
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall

from smtpmailer import __version__
from smtpmailer.config import Config
from smtpmailer.delivery.service import DeliveryService
from smtpmailer.dispatch.poller import QueuePoller
from smtpmailer.listening import Listen, ListeningService
from smtpmailer.logs import log
from smtpmailer.metrics import Metrics
from smtpmailer.queue import STATES
from smtpmailer.queue.runner import AsyncQueue
from smtpmailer.web.dashboard import DashboardView, Sample
from smtpmailer.web.limits import LimitedSite
from smtpmailer.web.resources import Root

STATUS_URL_FILE = "status.url"
SAMPLE_EVERY = 30.0
HISTORY = int(3600 / SAMPLE_EVERY) + 1


class StatusService(ListeningService):
    """Serves /health, /metrics, /v1/queue and the dashboard on ``[Status] listen``.

    ``/health`` fails (503) when the queue store does not answer, the poller is not running,
    delivery is paused, or delivery is stuck: the oldest message waiting (queued or deferred)
    is older than ``stuck_after`` and no delivery succeeded within ``stuck_after``.
    """

    name = "status"

    def __init__(
        self,
        config: Config,
        queue: AsyncQueue,
        poller: QueuePoller,
        delivery: DeliveryService,
        metrics: Metrics,
        clock: Any,
        listen: Listen | None = None,
        submit: Any = None,
        submit_batch: Any = None,
        more_problems: Any = lambda: [],
    ) -> None:
        super().__init__(config, listen)
        self.queue = queue
        self.poller = poller
        self.delivery = delivery
        self.metrics = metrics
        self.clock = clock
        self.submit = submit
        self.submit_batch = submit_batch
        self._more_problems = more_problems  # what else /health must say (webhooks behind)
        self._templates: Any = None
        # Signs the dashboard's action buttons (a CSRF guard); new at each start.
        self._action_key = os.urandom(32)
        self.started = clock.seconds()
        self.history: deque[Sample] = deque(maxlen=HISTORY)
        self._last_outcomes: Counter[str] = Counter()
        self._sampler: LoopingCall | None = None
        self.site = LimitedSite(Root(self), self.body_limit)
        self.site.displayTracebacks = False
        self.site.noisy = False

    def action_token(self, action: str, message_id: str) -> str:
        """The token a dashboard button carries for ``action`` on one message."""
        return hmac.new(
            self._action_key, f"{action}:{message_id}".encode(), hashlib.sha256
        ).hexdigest()

    def templates(self) -> Any:
        """The local templates, kept while ``[Templates] path`` stays (Jinja caches what it
        compiled, and reads a template again when its file changes)."""
        from smtpmailer.intake.templates import templates_for

        folder = self.config.templates.path
        if self._templates is None or self._templates.folder != folder:
            self._templates = templates_for(folder)
        return self._templates

    def body_limit(self) -> int:
        """The largest request body worth reading: a message of max_message_size in JSON
        (base64 attachments, 4/3 larger) with room for the other fields."""
        return self.config.queue.max_message_size * 4 // 3 + 65536

    # --- listening ---

    what = "status service"

    def address(self, config: Config) -> str | None:
        return config.status.listen

    def make_factory(self, config: Config) -> Any:
        return self.site

    def bound(self, port: Any, config: Config) -> None:
        super().bound(port, config)
        self._publish(port)

    def startService(self) -> None:
        super().startService()
        self.started = self.clock.seconds()
        self._sampler = LoopingCall(self._sample)
        self._sampler.clock = self.clock
        self._sampler.start(SAMPLE_EVERY, now=True).addErrback(
            lambda failure: log.failure("status sampling stopped", failure=failure)
        )

    def _publish(self, port: Any) -> None:
        """Write the URL we answer on to state_dir/status.url, for `smtpmailer health`
        (the port may have been chosen by the system: tcp:0)."""
        host = getattr(port.getHost(), "host", None)
        path = os.path.join(self.config.daemon.state_dir, STATUS_URL_FILE)
        if host is None:
            return
        host = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        try:
            with open(path + ".tmp", "w") as handle:
                handle.write(f"http://{host}:{port.getHost().port}\n")
            os.replace(path + ".tmp", path)
        except OSError as error:
            log.warn("could not write {path}: {error}", path=path, error=error)

    def stopService(self) -> Deferred[Any] | None:
        if self._sampler is not None and self._sampler.running:
            self._sampler.stop()
        return super().stopService()

    # --- data ---

    def _sample(self) -> Deferred[None]:
        """Every 30 s: counts by state and deliveries per minute since the last sample."""

        async def sample() -> None:
            counts = await self.queue.counts()
            self.history.append(self._sample_now(counts))
            self._last_outcomes = Counter(self.delivery.counters)

        result = Deferred.fromCoroutine(sample())
        result.addErrback(lambda failure: log.failure("status sample failed", failure=failure))
        return result

    def _sample_now(self, counts: dict[str, int]) -> Sample:
        """Counts as given, and outcomes per minute since the last sample."""
        now = self.clock.seconds()
        previous = self.history[-1].time if self.history else self.started
        minutes = max((now - previous) / 60, 1e-9)
        delta = Counter(self.delivery.counters) - self._last_outcomes
        rates = {k: delta.get(k, 0) / minutes for k in ("sent", "deferred", "failed")}
        return Sample(now, counts, rates)

    async def health(self) -> dict[str, Any]:
        now = self.clock.seconds()
        reasons = []
        counts: dict[str, int] = {}
        oldest = None
        try:
            counts = await self.queue.counts()
            oldest = await self.queue.oldest_pending()
        except Exception as error:
            reasons.append(f"the queue store does not answer: {error}")
        if not self.poller.running:
            reasons.append("the queue poller is not running")
        if self.poller.paused:
            reasons.append("delivery is paused (manhole: resume())")
        reasons += self.delivery.tokens.problems()
        reasons += [
            f"relay {name} refuses our credentials: {problem}"
            for name, problem in sorted(self.delivery.credential_problems.items())
        ]
        reasons += self._more_problems()
        stuck_after = self.config.status.stuck_after
        oldest_age = now - oldest if oldest is not None else None
        last = self.delivery.last_success
        since_success = now - last if last is not None else now - self.started
        if oldest_age is not None and oldest_age > stuck_after and since_success > stuck_after:
            reasons.append(
                f"delivery is stuck: the oldest message has waited {oldest_age:.0f}s and no "
                f"delivery succeeded in {since_success:.0f}s (stuck_after = {stuck_after:.0f}s)"
            )
        return {
            "status": "fail" if reasons else "ok",
            "reasons": reasons,
            "version": __version__.public(),
            "queue": {state: counts.get(state, 0) for state in STATES},
            "oldest_pending_age": round(oldest_age, 3) if oldest_age is not None else None,
            "last_success_age": round(now - last, 3) if last is not None else None,
            "poller_lag": round(self.poller.lag, 3),
            "paused": self.poller.paused,
            "oauth2": {
                name: {
                    "ok": source.problem is None,
                    "problem": source.problem,
                    "expires_at": source.expires_at,
                    "refreshes": source.refreshes,
                }
                for name, source in self.delivery.tokens.sources.items()
            },
        }

    async def refresh_metrics(self) -> None:
        counts = await self.queue.counts()
        oldest = await self.queue.oldest_pending()
        self.metrics.queue.counts = counts
        self.metrics.queue.oldest_age = (
            self.clock.seconds() - oldest if oldest is not None else None
        )
        self.metrics.paused.set(1 if self.poller.paused else 0)

    async def dashboard_view(self) -> DashboardView:
        health = await self.health()
        problems = await self.queue.recent_problems(10)
        counts = await self.queue.counts()
        return DashboardView(
            version=__version__.public(),
            now=self.clock.seconds(),
            started=self.started,
            counts=counts,
            oldest_age=health["oldest_pending_age"],
            health=health,
            # The hour of samples, and the present as its last point.
            history=(*self.history, self._sample_now(counts)),
            problems=tuple(problems),
            relays=tuple(state.as_json() for state in self.delivery.relays.values()),
            paused=self.poller.paused,
        )
