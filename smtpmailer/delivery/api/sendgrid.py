"""SendGrid v3 ``POST /v3/mail/send``: the stored message mapped field by field.

From (with its display name), To and Cc from the headers (the envelope recipients found
there), Bcc for the envelope recipients that are not, Reply-To, Subject, the text and html
parts, attachments, inline images by Content-ID, and the headers SendGrid lets a sender set.
The queue id goes along in ``custom_args`` (SendGrid's events carry it back). What SendGrid
cannot carry (a signed or encrypted message, a message with no To among its recipients) is
a clear failure, never a silent loss.

Answers, as SendGrid documents them: 202 with ``X-Message-Id``; 400 with
``{"errors": [{"message", "field", "help"}]}``; 401/403 for a bad or unpermitted key; 413; 429
with ``X-RateLimit-Reset`` (epoch seconds); 5xx.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from smtpmailer.config.sections import APIRelayConfig
from smtpmailer.delivery.api.fields import Uncarried, read
from smtpmailer.delivery.api.probe import (
    Probe,
    ProbeFailed,
    Skipped,
    Step,
    json_of,
    sandbox_lease,
    with_json,
)
from smtpmailer.httpclient import Request, Response
from smtpmailer.queue import Lease

__all__ = ["Uncarried", "build", "error_text", "message_id", "pause_until", "probes"]

PATH = "/v3/mail/send"
# Headers SendGrid refuses in ``headers`` beyond those the fields carry (its reserved list).
RESERVED = {"x-sg-id", "x-sg-eid"}


def _person(name: str, address: str) -> dict[str, str]:
    return {"email": address, "name": name} if name else {"email": address}


def build(lease: Lease, relay: APIRelayConfig) -> Request:
    fields = read(lease, "SendGrid", templates=True)
    if not fields.to:
        raise Uncarried(
            "SendGrid needs a To: recipient among the envelope recipients (it builds the "
            "To: header itself): this message has none"
        )
    personalization: dict[str, Any] = {
        "to": [_person(*p) for p in fields.to],
        "custom_args": {"smtpmailer_id": lease.id},
    }
    if fields.cc:
        personalization["cc"] = [_person(*p) for p in fields.cc]
    if fields.bcc:
        personalization["bcc"] = [_person(*p) for p in fields.bcc]
    content = []
    if fields.text is not None:
        content.append({"type": "text/plain", "value": fields.text})
    if fields.html is not None:
        content.append({"type": "text/html", "value": fields.html})
    body: dict[str, Any] = {
        "personalizations": [personalization],
        "from": _person(*fields.sender),
        "subject": fields.subject,
        "content": content,
    }
    if fields.template is not None:  # a dynamic template: SendGrid makes subject and body
        body["template_id"], personalization["dynamic_template_data"] = fields.template
        del body["content"]
        if not fields.subject:
            del body["subject"]
    if fields.reply_to:
        body["reply_to"] = _person(*fields.reply_to)
    attachments = []
    for attachment in fields.attachments:
        entry = {
            "content": base64.b64encode(attachment.data).decode("ascii"),
            "type": attachment.content_type,
            "filename": attachment.filename,
            "disposition": "inline" if attachment.content_id else "attachment",
        }
        if attachment.content_id:
            entry["content_id"] = attachment.content_id
        attachments.append(entry)
    if attachments:
        body["attachments"] = attachments
    headers = {name: value for name, value in fields.headers if name.lower() not in RESERVED}
    if headers:
        body["headers"] = headers
    return Request(
        "POST",
        relay.endpoint + PATH,
        {
            "Authorization": f"Bearer {relay.api_key}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
        json.dumps(body, ensure_ascii=False).encode("utf-8"),
    )


def message_id(response: Response) -> str:
    return response.headers.get("x-message-id", "")


def error_text(response: Response) -> str:
    """SendGrid's own words: each error's message (and field)."""
    try:
        errors = json.loads(response.body).get("errors", [])
        words = [
            f"{e.get('message', '')}" + (f" ({e['field']})" if e.get("field") else "")
            for e in errors
            if isinstance(e, dict)
        ]
    except (ValueError, AttributeError):
        words = []
    return "; ".join(w for w in words if w) or response.body[:200].decode("utf-8", "replace")


def pause_until(response: Response, now: float) -> float | None:
    """SendGrid says when its rate limit resets (``X-RateLimit-Reset``, epoch seconds)."""
    for name in ("x-ratelimit-reset", "retry-after"):
        value = response.headers.get(name)
        if not value:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        return number if name == "x-ratelimit-reset" and number > now else now + number
    return None


def probes(relay: APIRelayConfig, sender: str | None) -> list[Step]:
    """The key's scopes (``GET /v3/scopes``), then a send in sandbox mode, which SendGrid
    checks like a real one (the sender identity included) and delivers to nobody."""
    auth = {"Authorization": f"Bearer {relay.api_key}", "Accept": "application/json"}

    def scopes(response: Response) -> str:
        granted = json_of(response).get("scopes", [])
        if "mail.send" not in granted:
            raise ProbeFailed("the key lacks the mail.send scope")
        return f"{len(granted)} scopes, mail.send among them"

    steps: list[Step] = [
        Probe("credentials", Request("GET", relay.endpoint + "/v3/scopes", auth, b""), scopes)
    ]
    if sender is None:
        steps.append(Skipped("sandbox send", "give --from ADDRESS to check a sender"))
        return steps

    def sandbox(body: dict[str, Any]) -> None:
        body["mail_settings"] = {"sandbox_mode": {"enable": True}}

    request = with_json(build(sandbox_lease(sender), relay), sandbox)
    steps.append(
        Probe(
            "sandbox send",
            request,
            lambda r: f"{sender} accepted in sandbox mode (HTTP {r.status}), nothing delivered",
        )
    )
    return steps
