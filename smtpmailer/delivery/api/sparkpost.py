"""SparkPost ``POST /api/v1/transmissions``: the stored message as ``content.email_rfc822``.

The recipients are the envelope's (so Bcc works), the queue id goes in ``metadata``, and the
key is the ``Authorization`` header itself (SparkPost's scheme, no "Bearer"). The message
travels as a JSON string, so it must be UTF-8 (or ASCII) text: other 8-bit content is a
clear failure, never mangled.

Answers, as SparkPost documents them: 200 ``{"results": {"id", "total_accepted_recipients",
"total_rejected_recipients"}}``; 400/422 ``{"errors": [{"message", "description", "code"}]}``;
401 (a bad key); 403; 429; 5xx.
"""

from __future__ import annotations

import json

from smtpmailer.config.sections import APIRelayConfig
from smtpmailer.delivery.api.probe import Probe, ProbeFailed, Skipped, Step, domain_of, json_of
from smtpmailer.httpclient import Request, Response, retry_after
from smtpmailer.message import provider_template_of
from smtpmailer.queue import Lease


class Uncarried(Exception):
    """SparkPost cannot carry this message: the reason says why."""


def build(lease: Lease, relay: APIRelayConfig) -> Request:
    named = provider_template_of(lease.data)
    if named is not None:
        raise Uncarried(
            f"SparkPost relays send no provider templates: this message names template "
            f"{named}; route it to a relay with templates"
        )
    try:
        text = lease.data.decode("utf-8")
    except UnicodeDecodeError:
        raise Uncarried(
            "SparkPost takes the message as JSON text: this one has 8-bit bytes that are "
            "not UTF-8; send it through an SMTP relay"
        ) from None
    body = {
        "recipients": [{"address": {"email": recipient}} for recipient in lease.recipients],
        "content": {"email_rfc822": text},
        "metadata": {"smtpmailer_id": lease.id},
    }
    return Request(
        "POST",
        relay.endpoint + "/api/v1/transmissions",
        {
            "Authorization": relay.api_key or "",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
        json.dumps(body, ensure_ascii=False).encode("utf-8"),
    )


def message_id(response: Response) -> str:
    try:
        return str(json.loads(response.body)["results"]["id"])
    except (ValueError, KeyError, TypeError):
        return ""


def error_text(response: Response) -> str:
    try:
        errors = json.loads(response.body).get("errors", [])
        words = [
            f"{e.get('message', '')}" + (f": {e['description']}" if e.get("description") else "")
            for e in errors
            if isinstance(e, dict)
        ]
    except (ValueError, AttributeError):
        words = []
    return "; ".join(w for w in words if w) or response.body[:200].decode("utf-8", "replace")


# These APIs name no reset time of their own: a Retry-After is all there may be.
pause_until = retry_after


def probes(relay: APIRelayConfig, sender: str | None) -> list[Step]:
    """The key (``GET /api/v1/sending-domains``), and the sender's sending domain with its
    ownership verified (``GET /api/v1/sending-domains/{domain}``). SparkPost's sandbox
    domain sends real mail, so there is no no-delivery send here."""
    auth = {"Authorization": relay.api_key or "", "Accept": "application/json"}
    if sender is None:
        return [
            Probe(
                "credentials",
                Request("GET", relay.endpoint + "/api/v1/sending-domains", auth, b""),
                lambda r: f"{len(json_of(r).get('results', []))} sending domain(s)",
            ),
            Skipped("sending domain", "give --from ADDRESS to check a sender's domain"),
        ]
    domain = domain_of(sender)

    def verified(response: Response) -> str:
        status = json_of(response).get("results", {}).get("status", {})
        if not status.get("ownership_verified"):
            raise ProbeFailed(f"{domain}: ownership not verified")
        return f"{domain}: ownership verified, DKIM {status.get('dkim_status', '?')}"

    def unknown(response: Response) -> str | None:
        if response.status == 404:
            raise ProbeFailed(f"{domain} is not a sending domain of this account")
        return None

    asked = Request("GET", f"{relay.endpoint}/api/v1/sending-domains/{domain}", auth, b"")
    return [Probe("sending domain", asked, verified, unknown)]
