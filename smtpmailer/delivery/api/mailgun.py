"""Mailgun ``POST /v3/{domain}/messages.mime``: the stored message as it is, byte for byte.

Sent as multipart/form-data: ``to`` once per envelope recipient (so Bcc works: the
recipients come from the envelope, not the headers), ``message`` the MIME file, and the
queue id as the custom variable ``v:smtpmailer_id`` (Mailgun's events carry it back).
HTTP Basic auth with the user ``api`` and the key. US endpoint by default, EU with
``region = eu``.

Answers, as Mailgun documents them: 200 ``{"id": "<...>", "message": "Queued. Thank you."}``;
400 ``{"message": "..."}``; 401 (a bad key, plain text ``Forbidden``); 413; 429; 5xx.
"""

from __future__ import annotations

import base64
import json
import secrets

from smtpmailer.config.sections import APIRelayConfig
from smtpmailer.httpclient import Request, Response, retry_after
from smtpmailer.queue import Lease


class Uncarried(Exception):
    """Never raised: Mailgun takes any MIME message as it is."""


def _form(fields: list[tuple[str, str]], message: bytes) -> tuple[str, bytes]:
    boundary = "smtpmailer-" + secrets.token_hex(12)
    parts = []
    for name, value in fields:
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode("utf-8")
            + b"\r\n"
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="message"; '
        f'filename="message.mime"\r\nContent-Type: message/rfc822\r\n\r\n'.encode()
        + message
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def build(lease: Lease, relay: APIRelayConfig) -> Request:
    fields = [("to", recipient) for recipient in lease.recipients]
    fields.append(("v:smtpmailer_id", lease.id))
    kind, body = _form(fields, lease.data)
    credentials = base64.b64encode(f"api:{relay.api_key}".encode()).decode("ascii")
    return Request(
        "POST",
        f"{relay.endpoint}/v3/{relay.domain}/messages.mime",
        {
            "Authorization": f"Basic {credentials}",
            "Content-Type": kind,
            "Accept": "application/json",
        },
        body,
    )


def message_id(response: Response) -> str:
    try:
        return str(json.loads(response.body).get("id", "")).strip("<>")
    except (ValueError, AttributeError):
        return ""


def error_text(response: Response) -> str:
    try:
        text = json.loads(response.body).get("message")
    except (ValueError, AttributeError):
        text = None
    return str(text) if text else response.body[:200].decode("utf-8", "replace").strip()


# These APIs name no reset time of their own: a Retry-After is all there may be.
pause_until = retry_after
