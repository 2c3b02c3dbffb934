"""Mailjet Send API v3.1 ``POST /v3.1/send``: the stored message mapped field by field.

From, To, Cc and Bcc as ``{"Email", "Name"}`` (To and Cc from the headers where they are
envelope recipients, the other envelope recipients as Bcc), ReplyTo, Subject, TextPart,
HTMLPart, Attachments, InlinedAttachments (by ContentID), Headers, and the queue id as
``CustomID``. Basic auth with the API key and the secret key: ``api_key = PUBLIC:PRIVATE``.

Answers, as Mailjet documents them: 200 ``{"Messages": [{"Status": "success", "To":
[{"Email", "MessageUUID", "MessageID"}]}]}``; 400 ``{"Messages": [{"Status": "error",
"Errors": [{"ErrorCode", "ErrorMessage", "ErrorRelatedTo"}]}]}``; 401 ``{"ErrorMessage"}``;
429; 5xx.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any
from urllib.parse import quote

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
from smtpmailer.httpclient import Request, Response, retry_after
from smtpmailer.queue import Lease

__all__ = ["Uncarried", "build", "error_text", "message_id", "pause_until", "refused_recipients"]


def _person(name: str, address: str) -> dict[str, str]:
    return {"Email": address, "Name": name} if name else {"Email": address}


def build(lease: Lease, relay: APIRelayConfig) -> Request:
    fields = read(lease, "Mailjet", templates=True)
    if not fields.to:
        raise Uncarried("Mailjet needs a To: recipient among the envelope recipients")
    message: dict[str, Any] = {
        "From": _person(*fields.sender),
        "To": [_person(*p) for p in fields.to],
        "Subject": fields.subject,
        "CustomID": lease.id,
    }
    if fields.cc:
        message["Cc"] = [_person(*p) for p in fields.cc]
    if fields.bcc:
        message["Bcc"] = [_person(*p) for p in fields.bcc]
    if fields.reply_to:
        message["ReplyTo"] = _person(*fields.reply_to)
    if fields.template is not None:  # Mailjet's template, its variables in its language
        template_id, message["Variables"] = fields.template
        if not template_id.isdigit():
            raise Uncarried(f"Mailjet template ids are numbers: {template_id!r} is not one")
        message["TemplateID"] = int(template_id)
        message["TemplateLanguage"] = True
        if not fields.subject:
            del message["Subject"]
    if fields.text is not None:
        message["TextPart"] = fields.text
    if fields.html is not None:
        message["HTMLPart"] = fields.html
    attached = [a for a in fields.attachments if not a.content_id]
    inlined = [a for a in fields.attachments if a.content_id]
    if attached:
        message["Attachments"] = [
            {
                "ContentType": a.content_type,
                "Filename": a.filename,
                "Base64Content": base64.b64encode(a.data).decode("ascii"),
            }
            for a in attached
        ]
    if inlined:
        message["InlinedAttachments"] = [
            {
                "ContentType": a.content_type,
                "Filename": a.filename,
                "ContentID": a.content_id,
                "Base64Content": base64.b64encode(a.data).decode("ascii"),
            }
            for a in inlined
        ]
    if fields.headers:
        message["Headers"] = dict(fields.headers)
    credentials = base64.b64encode((relay.api_key or "").encode()).decode("ascii")
    return Request(
        "POST",
        relay.endpoint + "/v3.1/send",
        {"Authorization": f"Basic {credentials}", "Content-Type": "application/json"},
        json.dumps({"Messages": [message]}, ensure_ascii=False).encode("utf-8"),
    )


def message_id(response: Response) -> str:
    try:
        return str(json.loads(response.body)["Messages"][0]["To"][0]["MessageID"])
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def error_text(response: Response) -> str:
    try:
        data = json.loads(response.body)
        if "Messages" in data:
            errors = [e for m in data["Messages"] for e in m.get("Errors", [])]
            return "; ".join(
                e["ErrorMessage"]
                + (f" ({', '.join(e['ErrorRelatedTo'])})" if e.get("ErrorRelatedTo") else "")
                for e in errors
            )
        return str(data["ErrorMessage"])
    except (ValueError, KeyError, TypeError):
        return response.body[:200].decode("utf-8", "replace")


_RELATED = re.compile(r"^(To|Cc|Bcc)\[(\d+)\]\.Email$")


def refused_recipients(request: Request, response: Response) -> dict[str, str]:
    """The addresses Mailjet's errors relate to (``ErrorRelatedTo: ["To[1].Email"]``),
    looked up in the message we sent."""
    try:
        (sent,) = json.loads(request.body)["Messages"]
        errors = [e for m in json.loads(response.body)["Messages"] for e in m.get("Errors", [])]
    except (ValueError, KeyError, TypeError):
        return {}
    refused: dict[str, str] = {}
    for error in errors:
        for related in error.get("ErrorRelatedTo") or []:
            found = _RELATED.match(str(related))
            people = sent.get(found.group(1), []) if found else []
            if found and int(found.group(2)) < len(people):
                refused[people[int(found.group(2))]["Email"]] = str(error.get("ErrorMessage"))
    return refused


# These APIs name no reset time of their own: a Retry-After is all there may be.
pause_until = retry_after


def probes(relay: APIRelayConfig, sender: str | None) -> list[Step]:
    """The sender's status (``GET /v3/REST/sender``: Active), then a send with
    ``SandboxMode``, which Mailjet checks and delivers to nobody."""
    credentials = base64.b64encode((relay.api_key or "").encode()).decode("ascii")
    auth = {"Authorization": f"Basic {credentials}", "Accept": "application/json"}
    if sender is None:
        return [
            Probe(
                "credentials",
                Request("GET", relay.endpoint + "/v3/REST/sender?Limit=1", auth, b""),
                lambda r: "the key is accepted",
            ),
            Skipped("sender", "give --from ADDRESS to check a sender"),
        ]

    def status(response: Response) -> str:
        found = json_of(response).get("Data", [])
        state = found[0].get("Status") if found else None
        if state != "Active":
            raise ProbeFailed(f"{sender} is {state or 'not a sender'} in Mailjet, not Active")
        return f"{sender} is Active"

    def sandbox(body: dict[str, Any]) -> None:
        body["SandboxMode"] = True

    asked = Request("GET", f"{relay.endpoint}/v3/REST/sender?Email={quote(sender)}", auth, b"")
    return [
        Probe("sender", asked, status),
        Probe(
            "sandbox send",
            with_json(build(sandbox_lease(sender), relay), sandbox),
            lambda r: "accepted in SandboxMode, nothing delivered",
        ),
    ]
