"""The transport for ``[API:NAME]`` relays: each message one HTTP request, its answer
classified by one table into per-recipient outcomes:

- 2xx: sent; the provider's message id is in the reply.
- 408, 429, 5xx, no answer, a timeout: the relay cannot take mail now. The message goes to
  the next relay or is deferred, as after an SMTP 421; a 429's reset time pauses the relay.
- 401, 403: our key is refused. Deferred, never failed; counted as a credentials failure.
- Any other 4xx: the provider refuses this message. Failed, with the provider's words.
- A message the provider cannot carry: failed, saying what is missing.
"""

from __future__ import annotations

import importlib
from typing import Any

from twisted.internet.defer import Deferred, succeed

from smtpmailer.config.sections import APIRelayConfig
from smtpmailer.delivery.transport import Follow, OpenError, Session, TransportContext
from smtpmailer.httpclient import Client, HTTPFailure, PooledClient, Request, Response
from smtpmailer.queue import RCPT_FAILED, RCPT_SENT, Lease, RecipientResult

PROVIDER_MODULES = {
    "sendgrid": "smtpmailer.delivery.api.sendgrid",
    "mailgun": "smtpmailer.delivery.api.mailgun",
    "sparkpost": "smtpmailer.delivery.api.sparkpost",
    "postmark": "smtpmailer.delivery.api.postmark",
    "resend": "smtpmailer.delivery.api.resend",
    "brevo": "smtpmailer.delivery.api.brevo",
    "mailjet": "smtpmailer.delivery.api.mailjet",
    "ses": "smtpmailer.delivery.api.ses",
}
# Larger messages have their request built on a thread (the reactor's pool): parsing, base64
# and JSON take about 3.5 ms of the reactor's time per 100 KB (measured, SendGrid's mapping),
# which would hold up every other connection; a thread hop costs far less than that.
BUILT_ON_REACTOR = 64 * 1024
# Answers that mean "not now, maybe elsewhere", as an SMTP 421 does.
UNREACHABLE = {408, 429}
DEFERRED = "deferred"


def _all(lease: Lease, status: str, reply: str) -> tuple[RecipientResult, ...]:
    return tuple(RecipientResult(r, status, reply) for r in lease.recipients)


class APISession:
    """Requests to one API, one at a time (the pool runs ``max_connections`` of these)."""

    def __init__(self, transport: APITransport) -> None:
        self._transport = transport
        self.label = transport.relay.label
        self.delivered = 0
        self._sending: Deferred[Any] | None = None

    def deliver(
        self, lease: Lease, follow: Follow | None = None
    ) -> Deferred[tuple[RecipientResult, ...]]:
        """``follow`` is never called: there is no connection to pipeline on."""
        return Deferred.fromCoroutine(self._deliver(lease))

    async def _deliver(self, lease: Lease) -> tuple[RecipientResult, ...]:
        transport = self._transport
        relay, provider = transport.relay, transport.provider
        try:
            if len(lease.data) > BUILT_ON_REACTOR and transport.blocking is not None:
                # Base64 and JSON of a large message would hold up every connection.
                request = await transport.blocking(provider.build, lease, relay)
            else:
                request = provider.build(lease, relay)
        except provider.Uncarried as error:
            return _all(lease, RCPT_FAILED, f"5.6.0 {error}")
        self.delivered += 1
        began = transport.clock.seconds()
        status: int | None = None
        transport.in_flight += 1
        try:
            self._sending = transport.client(request, relay.timeout)
            response: Response = await self._sending
            status = response.status
        except HTTPFailure as error:
            raise OpenError(str(error), relay.where, relay.label) from None
        finally:
            self._sending = None
            transport.request_ended(status, transport.clock.seconds() - began)
        return transport.classify(lease, response, request)

    def quit(self) -> Deferred[None]:
        return succeed(None)

    def abort(self) -> None:
        if self._sending is not None:
            self._sending.cancel()


class APITransport:
    def __init__(self, relay: APIRelayConfig, context: TransportContext) -> None:
        self.relay = relay
        self.clock = context.clock
        self._observed = context.http_observed
        self.blocking = context.blocking
        self.provider: Any = importlib.import_module(PROVIDER_MODULES[relay.provider])
        # A connection pool of its own, closed when retired; a client handed in (a test's
        # fake) belongs to whoever made it.
        self._own_client = context.http is None
        self.client: Client = context.http or PooledClient(
            _reactor(), relay.max_connections, context.proxy, context.no_proxy
        )
        self.in_flight = 0
        self.retired = False

    def open(self) -> Deferred[Session]:
        return succeed(APISession(self))

    def describe(self, error: BaseException) -> str:
        return str(error) or type(error).__name__

    def request_ended(self, status: int | None, seconds: float) -> None:
        self.in_flight -= 1
        self._observed(self.relay.label, status, seconds)
        self._close_if_done()

    def retire(self) -> None:
        self.retired = True
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.retired and not self.in_flight and self._own_client:
            self._own_client = False  # once
            close = getattr(self.client, "close", None)
            if close is not None:
                close()

    def classify(
        self, lease: Lease, response: Response, request: Request
    ) -> tuple[RecipientResult, ...]:
        relay, provider, status = self.relay, self.provider, response.status
        refused = _refused(provider, lease, request, response)
        if 200 <= status < 300:
            remote_id = provider.message_id(response)
            reply = f"HTTP {status} {remote_id}".rstrip()
            return _split(lease, refused, status, RCPT_SENT, reply, remote_id)
        text = f"HTTP {status}: {provider.error_text(response)}"
        if status in UNREACHABLE or status >= 500:
            error = OpenError(text, relay.where, relay.label)
            error.pause_until = provider.pause_until(response, self.clock.seconds())
            raise error
        if status in (401, 403):
            raise OpenError(f"{text} (check the API key)", relay.where, relay.label, True)
        if refused:
            # The request was refused over these recipients alone: the others go again
            # without them at the next attempt.
            return _split(lease, refused, status, DEFERRED, f"{text} (another recipient)")
        return _all(lease, RCPT_FAILED, text)


def _refused(provider: Any, lease: Lease, request: Request, response: Response) -> dict[str, str]:
    """The envelope recipients the provider named as refused (an inactive recipient, an
    address it calls invalid), with its words; a provider that never names them has no
    ``refused_recipients``."""
    named = getattr(provider, "refused_recipients", None)
    if named is None:
        return {}
    reasons = {address.lower(): why for address, why in named(request, response).items()}
    return {r: reasons[r.lower()] for r in lease.recipients if r.lower() in reasons}


def _split(
    lease: Lease,
    refused: dict[str, str],
    status: int,
    others: str,
    reply: str,
    remote_id: str = "",
) -> tuple[RecipientResult, ...]:
    return tuple(
        RecipientResult(r, RCPT_FAILED, f"HTTP {status}: {refused[r]}")
        if r in refused
        else RecipientResult(r, others, reply, remote_id)
        for r in lease.recipients
    )


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def make_transport(relay: Any, context: TransportContext) -> APITransport:
    return APITransport(relay, context)
