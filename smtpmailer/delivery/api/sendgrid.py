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
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from typing import Any

from smtpmailer.config.sections import APIRelayConfig
from smtpmailer.delivery.api.http import Request, Response
from smtpmailer.queue import Lease

PATH = "/v3/mail/send"
# Headers SendGrid sets itself or refuses in ``headers`` (its "reserved" list), and the
# ones mapped to fields of their own.
NOT_PASSED = {
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "reply-to",
    "content-type",
    "content-transfer-encoding",
    "mime-version",
    "date",
    "message-id",
    "received",
    "dkim-signature",
    "x-sg-id",
    "x-sg-eid",
}


class Uncarried(Exception):
    """SendGrid cannot carry this message: the reason names what is missing."""


def _addresses(message: EmailMessage, name: str) -> list[tuple[str, str]]:
    return [(n, a) for n, a in getaddresses(message.get_all(name, [])) if a]


def _person(name: str, address: str) -> dict[str, str]:
    return {"email": address, "name": name} if name else {"email": address}


def _parts(message: EmailMessage) -> tuple[str | None, str | None, list[dict[str, str]]]:
    """(text, html, attachments) of a message as SendGrid wants them."""
    kind = message.get_content_type()
    if kind in ("multipart/signed", "multipart/encrypted", "application/pkcs7-mime"):
        raise Uncarried(
            f"SendGrid takes fields, not a {kind} message (its signature or encryption "
            "would be lost): send it through an SMTP relay"
        )
    text = html = None
    attachments: list[dict[str, str]] = []
    for part in message.walk():
        if part.is_multipart():
            continue
        disposition = part.get_content_disposition()
        content_id = (part.get("Content-ID") or "").strip("<> ")
        part_kind = part.get_content_type()
        if disposition is None and part_kind == "text/plain" and text is None:
            text = part.get_content()
        elif disposition is None and part_kind == "text/html" and html is None:
            html = part.get_content()
        else:
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            attachment = {
                "content": base64.b64encode(data).decode("ascii"),
                "type": part_kind,
                "filename": part.get_filename() or (content_id or "attachment"),
                "disposition": "inline"
                if content_id and disposition != "attachment"
                else "attachment",
            }
            if attachment["disposition"] == "inline":
                attachment["content_id"] = content_id
            attachments.append(attachment)
    if text is None and html is None:
        raise Uncarried("SendGrid needs a text or html part; this message has neither")
    return text, html, attachments


def build(lease: Lease, relay: APIRelayConfig) -> Request:
    message = BytesParser(policy=policy.default).parsebytes(lease.data)
    assert isinstance(message, EmailMessage)
    envelope = {address.lower(): address for address in lease.recipients}
    to = [(n, a) for n, a in _addresses(message, "To") if envelope.pop(a.lower(), None)]
    cc = [(n, a) for n, a in _addresses(message, "Cc") if envelope.pop(a.lower(), None)]
    bcc = [("", address) for address in envelope.values()]
    if not to:
        raise Uncarried(
            "SendGrid needs a To: recipient among the envelope recipients (it builds the "
            "To: header itself): this message has none"
        )
    senders = _addresses(message, "From")
    if not senders:
        raise Uncarried("SendGrid needs a From: header")
    personalization: dict[str, Any] = {
        "to": [_person(n, a) for n, a in to],
        "custom_args": {"smtpmailer_id": lease.id},
    }
    if cc:
        personalization["cc"] = [_person(n, a) for n, a in cc]
    if bcc:
        personalization["bcc"] = [_person(n, a) for n, a in bcc]
    text, html, attachments = _parts(message)
    content = []
    if text is not None:
        content.append({"type": "text/plain", "value": text})
    if html is not None:
        content.append({"type": "text/html", "value": html})
    body: dict[str, Any] = {
        "personalizations": [personalization],
        "from": _person(*senders[0]),
        "subject": str(message.get("Subject", "")),
        "content": content,
    }
    replies = _addresses(message, "Reply-To")
    if replies:
        body["reply_to"] = _person(*replies[0])
    if attachments:
        body["attachments"] = attachments
    headers = {
        name: str(value) for name, value in message.items() if name.lower() not in NOT_PASSED
    }
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
