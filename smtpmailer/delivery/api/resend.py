"""Resend ``POST /emails``: the stored message mapped field by field, sent with the queue
id as ``Idempotency-Key``, so a retry after a lost answer does not send it twice.

from (``Name <address>``), to, cc and bcc as lists (To and Cc from the headers where they
are envelope recipients, the other envelope recipients as bcc), reply_to, subject, text,
html, attachments (inline ones with their content_id), headers, and the queue id as a tag.

Answers, as Resend documents them: 200 ``{"id"}``; 422 ``{"statusCode", "name", "message"}``
(validation_error, ...); 401/403 (missing or invalid key); 409 (the idempotency key was used
for another request); 429 with ``retry-after``; 5xx.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from smtpmailer.config.sections import APIRelayConfig
from smtpmailer.delivery.api.fields import Uncarried, person_text, read
from smtpmailer.delivery.api.probe import Probe, ProbeFailed, Step, domain_of, json_of
from smtpmailer.httpclient import Request, Response
from smtpmailer.queue import Lease

__all__ = ["Uncarried", "build", "error_text", "message_id", "pause_until", "probes"]


def build(lease: Lease, relay: APIRelayConfig) -> Request:
    fields = read(lease, "Resend")
    if not fields.to:
        raise Uncarried("Resend needs a To: recipient among the envelope recipients")
    body: dict[str, Any] = {
        "from": person_text(fields.sender),
        "to": [person_text(p) for p in fields.to],
        "subject": fields.subject,
        "tags": [{"name": "smtpmailer_id", "value": lease.id}],
    }
    if fields.cc:
        body["cc"] = [person_text(p) for p in fields.cc]
    if fields.bcc:
        body["bcc"] = [person_text(p) for p in fields.bcc]
    if fields.reply_to:
        body["reply_to"] = person_text(fields.reply_to)
    if fields.text is not None:
        body["text"] = fields.text
    if fields.html is not None:
        body["html"] = fields.html
    if fields.attachments:
        body["attachments"] = [
            {
                "filename": a.filename,
                "content": base64.b64encode(a.data).decode("ascii"),
                "content_type": a.content_type,
                **({"content_id": a.content_id} if a.content_id else {}),
            }
            for a in fields.attachments
        ]
    if fields.headers:
        body["headers"] = dict(fields.headers)
    return Request(
        "POST",
        relay.endpoint + "/emails",
        {
            "Authorization": f"Bearer {relay.api_key}",
            "Content-Type": "application/json",
            "Idempotency-Key": lease.id,
        },
        json.dumps(body, ensure_ascii=False).encode("utf-8"),
    )


def message_id(response: Response) -> str:
    try:
        return str(json.loads(response.body).get("id", ""))
    except (ValueError, AttributeError):
        return ""


def error_text(response: Response) -> str:
    try:
        data = json.loads(response.body)
        return f"{data['message']} ({data.get('name', '')})".replace(" ()", "")
    except (ValueError, KeyError, TypeError):
        return response.body[:200].decode("utf-8", "replace")


def pause_until(response: Response, now: float) -> float | None:
    for name in ("retry-after", "ratelimit-reset"):
        value = response.headers.get(name)
        try:
            if value:
                return now + float(value)
        except ValueError:
            continue
    return None


def probes(relay: APIRelayConfig, sender: str | None) -> list[Step]:
    """The key and the sender's domain (``GET /domains``: it must be verified). A key
    restricted to sending may not read domains: Resend answers 401 restricted_api_key,
    which still proves the key. Resend has no no-delivery mode."""
    auth = {"Authorization": f"Bearer {relay.api_key}", "Accept": "application/json"}
    wanted = domain_of(sender) if sender else None

    def domains(response: Response) -> str:
        known = {d.get("name"): d.get("status") for d in json_of(response).get("data", [])}
        if wanted is None:
            return f"{len(known)} domain(s); give --from ADDRESS to check a sender"
        if known.get(wanted) != "verified":
            raise ProbeFailed(
                f"domain {wanted} is {known.get(wanted) or 'not added'}, not verified"
            )
        return f"{wanted} is verified"

    def restricted(response: Response) -> str | None:
        try:
            name = json.loads(response.body).get("name")
        except (ValueError, AttributeError):
            return None
        if response.status == 401 and name == "restricted_api_key":
            return "a sending-only key: domains not readable with it"
        return None

    return [
        Probe(
            "credentials and domain",
            Request("GET", relay.endpoint + "/domains", auth, b""),
            domains,
            restricted,
        )
    ]
