"""Brevo (Sendinblue) ``POST /v3/smtp/email``: the stored message mapped field by field.

sender, to, cc and bcc as ``{"email", "name"}`` lists (To and Cc from the headers where
they are envelope recipients, the other envelope recipients as bcc), replyTo, subject,
textContent, htmlContent, attachment (``{"name", "content"}``), headers, and the queue id
as the ``X-Mailin-custom`` header Brevo's webhooks hand back. The key is the ``api-key``
header.

Answers, as Brevo documents them: 201 ``{"messageId": "<...>"}``; 400 ``{"code",
"message"}``; 401 (``unauthorized``); 429 with ``x-sib-ratelimit-reset`` (seconds to wait);
5xx. Brevo cannot show an attachment inline by Content-ID: a message with one fails saying so.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import attrs

from smtpmailer.config.sections import APIRelayConfig
from smtpmailer.delivery.api.fields import Uncarried, read
from smtpmailer.delivery.api.probe import Probe, ProbeFailed, Skipped, Step, json_of, sandbox_lease
from smtpmailer.httpclient import Request, Response
from smtpmailer.queue import Lease

__all__ = ["Uncarried", "build", "error_text", "message_id", "pause_until", "probes"]


def _person(name: str, address: str) -> dict[str, str]:
    return {"email": address, "name": name} if name else {"email": address}


def build(lease: Lease, relay: APIRelayConfig) -> Request:
    fields = read(lease, "Brevo", templates=True)
    if not fields.to:
        raise Uncarried("Brevo needs a To: recipient among the envelope recipients")
    if any(a.content_id for a in fields.attachments):
        raise Uncarried(
            "Brevo cannot show an image inline by Content-ID (this message has one): "
            "send it through an SMTP relay"
        )
    body: dict[str, Any] = {
        "sender": _person(*fields.sender),
        "to": [_person(*p) for p in fields.to],
        "subject": fields.subject,
        "headers": {**dict(fields.headers), "X-Mailin-custom": f"smtpmailer_id:{lease.id}"},
    }
    if fields.cc:
        body["cc"] = [_person(*p) for p in fields.cc]
    if fields.bcc:
        body["bcc"] = [_person(*p) for p in fields.bcc]
    if fields.reply_to:
        body["replyTo"] = _person(*fields.reply_to)
    if fields.template is not None:  # Brevo's template gives subject and content
        template_id, body["params"] = fields.template
        if not template_id.isdigit():
            raise Uncarried(f"Brevo template ids are numbers: {template_id!r} is not one")
        body["templateId"] = int(template_id)
        if not fields.subject:
            del body["subject"]
    if fields.text is not None:
        body["textContent"] = fields.text
    if fields.html is not None:
        body["htmlContent"] = fields.html
    if fields.attachments:
        body["attachment"] = [
            {"name": a.filename, "content": base64.b64encode(a.data).decode("ascii")}
            for a in fields.attachments
        ]
    return Request(
        "POST",
        relay.endpoint + "/v3/smtp/email",
        {
            "api-key": relay.api_key or "",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
        json.dumps(body, ensure_ascii=False).encode("utf-8"),
    )


def message_id(response: Response) -> str:
    try:
        return str(json.loads(response.body).get("messageId", "")).strip("<>")
    except (ValueError, AttributeError):
        return ""


def error_text(response: Response) -> str:
    try:
        data = json.loads(response.body)
        return f"{data['message']} ({data['code']})"
    except (ValueError, KeyError, TypeError):
        return response.body[:200].decode("utf-8", "replace")


def pause_until(response: Response, now: float) -> float | None:
    value = response.headers.get("x-sib-ratelimit-reset") or response.headers.get("retry-after")
    try:
        return now + float(value) if value else None
    except ValueError:
        return None


def probes(relay: APIRelayConfig, sender: str | None) -> list[Step]:
    """The account and its credits (``GET /v3/account``), the sender among the active ones
    (``GET /v3/senders``), and a send with ``X-Sib-Sandbox: drop``, which Brevo checks and
    drops."""
    auth = {"api-key": relay.api_key or "", "Accept": "application/json"}

    def account(response: Response) -> str:
        data = json_of(response)
        plans = [
            f"{p.get('credits')} credits ({p.get('type')}, {p.get('creditsType')})"
            for p in data.get("plan", [])
        ]
        return f"{data.get('email', '?')}: " + ("; ".join(plans) or "no plan")

    steps: list[Step] = [
        Probe(
            "credentials and quota",
            Request("GET", relay.endpoint + "/v3/account", auth, b""),
            account,
        )
    ]
    if sender is None:
        steps.append(Skipped("sender", "give --from ADDRESS to check a sender"))
        return steps

    def senders(response: Response) -> str:
        found = [s for s in json_of(response).get("senders", []) if s.get("email") == sender]
        if not found or not found[0].get("active"):
            raise ProbeFailed(f"{sender} is {'inactive' if found else 'not a sender'} in Brevo")
        return f"{sender} is an active sender"

    sandbox = build(sandbox_lease(sender), relay)
    sandbox = attrs.evolve(sandbox, headers={**sandbox.headers, "X-Sib-Sandbox": "drop"})
    steps += [
        Probe("sender", Request("GET", relay.endpoint + "/v3/senders", auth, b""), senders),
        Probe(
            "sandbox send",
            sandbox,
            lambda r: "accepted with X-Sib-Sandbox: drop, nothing delivered",
        ),
    ]
    return steps
