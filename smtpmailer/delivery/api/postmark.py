"""Postmark ``POST /email``: the stored message mapped field by field.

From, To, Cc and Bcc as Postmark's comma-separated strings (To and Cc from the headers,
where they are envelope recipients; the other envelope recipients as Bcc), ReplyTo,
Subject, TextBody and HtmlBody, Attachments (inline ones with their ``cid:`` ContentID),
Headers, and the queue id in Metadata. The key is the server token header.

Answers, as Postmark documents them: 200 ``{"MessageID", "ErrorCode": 0, "Message": "OK"}``;
422 ``{"ErrorCode", "Message"}`` (300 invalid email request, 406 inactive recipient, ...);
401 (a missing or bad server token); 429; 500.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from smtpmailer.config.sections import APIRelayConfig
from smtpmailer.delivery.api.fields import Uncarried, person_text, read
from smtpmailer.delivery.api.probe import Probe, Skipped, Step, json_of
from smtpmailer.httpclient import Request, Response, retry_after
from smtpmailer.queue import Lease

__all__ = ["Uncarried", "build", "error_text", "message_id", "pause_until", "refused_recipients"]


def _list(people: list[tuple[str, str]]) -> str:
    return ", ".join(person_text(person) for person in people)


def build(lease: Lease, relay: APIRelayConfig) -> Request:
    fields = read(lease, "Postmark", templates=True)
    if not (fields.to or fields.cc or fields.bcc):
        raise Uncarried("Postmark needs at least one recipient")
    body: dict[str, Any] = {
        "From": person_text(fields.sender),
        "Subject": fields.subject,
        "Metadata": {"smtpmailer_id": lease.id},
        "MessageStream": "outbound",
    }
    for key, people in (("To", fields.to), ("Cc", fields.cc), ("Bcc", fields.bcc)):
        if people:
            body[key] = _list(people)
    if fields.reply_to:
        body["ReplyTo"] = person_text(fields.reply_to)
    if fields.text is not None:
        body["TextBody"] = fields.text
    if fields.html is not None:
        body["HtmlBody"] = fields.html
    if fields.attachments:
        body["Attachments"] = [
            {
                "Name": attachment.filename,
                "Content": base64.b64encode(attachment.data).decode("ascii"),
                "ContentType": attachment.content_type,
                **({"ContentID": f"cid:{attachment.content_id}"} if attachment.content_id else {}),
            }
            for attachment in fields.attachments
        ]
    if fields.headers:
        body["Headers"] = [{"Name": name, "Value": value} for name, value in fields.headers]
    path = "/email"
    if fields.template is not None:  # POST /email/withTemplate: the template's id or alias
        template_id, body["TemplateModel"] = fields.template
        key = "TemplateId" if template_id.isdigit() else "TemplateAlias"
        body[key] = int(template_id) if key == "TemplateId" else template_id
        del body["Subject"]
        path = "/email/withTemplate"
    return Request(
        "POST",
        relay.endpoint + path,
        {
            "X-Postmark-Server-Token": relay.api_key or "",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
        json.dumps(body, ensure_ascii=False).encode("utf-8"),
    )


def message_id(response: Response) -> str:
    try:
        return str(json.loads(response.body).get("MessageID", ""))
    except (ValueError, AttributeError):
        return ""


def error_text(response: Response) -> str:
    try:
        data = json.loads(response.body)
        text = f"{data['Message']} (ErrorCode {data['ErrorCode']})"
    except (ValueError, KeyError, TypeError):
        text = response.body[:200].decode("utf-8", "replace")
    return text


# The inactive addresses Postmark names, in the words of its 200 (some recipients
# inactive) and its 422 ErrorCode 406 (all of them): "... inactive addresses: a@x, b@y.
# Inactive recipients are ..." and "... Found inactive addresses: a@x. Inactive ...".
_INACTIVE = re.compile(r"inactive addresses:\s*(.*?)\.?(?:\s+Inactive\b|\s*$)", re.S)


def refused_recipients(request: Request, response: Response) -> dict[str, str]:
    try:
        words = str(json.loads(response.body).get("Message", ""))
    except (ValueError, AttributeError):
        return {}
    found = _INACTIVE.search(words)
    if found is None:
        return {}
    why = "Postmark marked this recipient inactive (hard bounce, spam complaint or suppression)"
    return {address.strip(): why for address in found.group(1).split(",") if address.strip()}


# These APIs name no reset time of their own: a Retry-After is all there may be.
pause_until = retry_after


def probes(relay: APIRelayConfig, sender: str | None) -> list[Step]:
    """The server the token belongs to (``GET /server``). Postmark has no no-delivery mode
    for a real token, and lists sender signatures only to an account token."""

    def server(response: Response) -> str:
        return f"server {json_of(response).get('Name', '?')}"

    auth = {"X-Postmark-Server-Token": relay.api_key or "", "Accept": "application/json"}
    return [
        Probe("credentials", Request("GET", relay.endpoint + "/server", auth, b""), server),
        Skipped("sender", "Postmark shows sender signatures to an account token only"),
    ]
