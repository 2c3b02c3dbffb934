"""Prometheus metrics, in a registry of our own (never the process-wide default one).

Counters and histograms are updated where things happen (delivery, reload, poller); queue
counts are read from the store just before each scrape and exposed by a collector.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from smtpmailer.queue import STATES

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RESIDENCE_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 5 * 86400)


class _QueueCollector(Collector):
    """Messages by state and the oldest message's age, from the last snapshot."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.oldest_age: float | None = None

    def collect(self) -> Iterator[Any]:
        by_state = GaugeMetricFamily(
            "smtpmailer_queue_messages", "Messages in the queue by state", labels=["state"]
        )
        for state in STATES:
            by_state.add_metric([state], self.counts.get(state, 0))
        yield by_state
        yield GaugeMetricFamily(
            "smtpmailer_queue_oldest_message_age_seconds",
            "Age of the oldest message not yet sent or failed (0 when there is none)",
            value=self.oldest_age or 0.0,
        )
        yield CounterMetricFamily(
            "smtpmailer_messages_accepted",
            "Messages ever accepted into this queue (all input paths)",
            value=self.counts.get("accepted", 0),
        )


class Metrics:
    """Every metric smtpmailer exports, names prefixed ``smtpmailer_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self.queue = _QueueCollector()
        registry.register(self.queue)
        self.recipients = Counter(
            "smtpmailer_recipients",
            "Delivery outcomes per recipient, by relay and status (sent, deferred, failed)",
            ["relay", "status"],
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "smtpmailer_delivery_duration_seconds",
            "Time one SMTP transaction took, MAIL FROM to the reply after DATA",
            ["relay"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.residence_seconds = Histogram(
            "smtpmailer_queue_residence_seconds",
            "Time from acceptance into the queue to delivery, for messages sent",
            buckets=RESIDENCE_BUCKETS,
            registry=registry,
        )
        self.connections = Gauge(
            "smtpmailer_relay_connections",
            "Open connections per relay",
            ["relay"],
            registry=registry,
        )
        self.connection_failures = Counter(
            "smtpmailer_relay_connection_failures",
            "Attempts to open a relay session (connect, TLS, AUTH) that failed",
            ["relay"],
            registry=registry,
        )
        self.auth_failures = Counter(
            "smtpmailer_relay_auth_failures",
            "Sessions a relay would not open for our credentials (AUTH refused, no token)",
            ["relay"],
            registry=registry,
        )
        self.api_requests = Counter(
            "smtpmailer_api_requests",
            "Requests to HTTP API relays, by relay and answer (2xx, 4xx, 5xx, or none: no "
            "answer, a timeout)",
            ["relay", "status"],
            registry=registry,
        )
        self.api_request_seconds = Histogram(
            "smtpmailer_api_request_duration_seconds",
            "Time one request to an HTTP API relay took, sent to the answer read",
            ["relay"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.relay_paused_seconds = Counter(
            "smtpmailer_relay_paused_seconds",
            "Time a relay was paused because it said when to come back (429 with a reset "
            "or Retry-After)",
            ["relay"],
            registry=registry,
        )
        self.bounces = Counter(
            "smtpmailer_bounces",
            "Delivery status notifications: sent (a failure report queued to the sender), "
            "delayed (a delay warning), relayed (NOTIFY=SUCCESS), suppressed (over "
            "max_per_hour)",
            ["result"],
            registry=registry,
        )
        self.webhook_events = Counter(
            "smtpmailer_webhook_events",
            "Webhook requests by webhook and result (sent: answered 2xx; failed: tried again)",
            ["webhook", "result"],
            registry=registry,
        )
        self.webhook_backlog = Gauge(
            "smtpmailer_webhook_backlog",
            "Events a webhook has not been told yet",
            ["webhook"],
            registry=registry,
        )
        self.oauth2_refreshes = Counter(
            "smtpmailer_oauth2_refreshes",
            "Access token requests per [OAuth2:NAME], by result (ok, or the error: "
            "invalid_grant, timeout, ...)",
            ["oauth2", "result"],
            registry=registry,
        )
        self.oauth2_ok = Gauge(
            "smtpmailer_oauth2_ok",
            "1 while an [OAuth2:NAME] section gets tokens, 0 while it cannot",
            ["oauth2"],
            registry=registry,
        )
        self.info = Gauge(
            "smtpmailer_info",
            "Always 1: this daemon's version, queue backend and node name (shared queue)",
            ["version", "backend", "node"],
            registry=registry,
        )
        self.reloads = Counter(
            "smtpmailer_reloads", "Configuration reloads attempted", registry=registry
        )
        self.reload_failures = Counter(
            "smtpmailer_reload_failures",
            "Reloads refused (invalid file) or failed",
            registry=registry,
        )
        self.poller_lag = Gauge(
            "smtpmailer_poller_lag_seconds",
            "How late the last scheduled queue poll ran (reactor busy)",
            registry=registry,
        )
        self.paused = Gauge(
            "smtpmailer_delivery_paused",
            "1 while delivery is paused from the manhole",
            registry=registry,
        )

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, kept once made: prometheus_client checks the values
        and takes a lock on every labels() call, 1.6% of a drain's CPU at two a message."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found
