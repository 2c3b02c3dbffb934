"""``POST /v1/messages``: queue a message over HTTP, as JSON or as a raw RFC 5322 message.

The same checks and the same durable commit as `smtpmailer send` and the SMTP listener;
202 with the queue id only after the commit.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from twisted.web.server import Request

from smtpmailer.intake.refusals import MessageTooBig, Refusal, answer_for
from smtpmailer.message import Attachment, build_message, parse_header_option
from smtpmailer.message import prepare_raw as prepare_raw_message
from smtpmailer.queue import QueueError, parse_priority

JSON_FIELDS = {
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "text",
    "html",
    "headers",
    "attachments",
    "priority",
}


class BadRequest(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _addresses(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequest(400, f"'{key}' must be an address or a list of addresses")
    return value


def _text(body: dict[str, Any], key: str, default: str | None = None) -> str | None:
    """A string field; absent gives the default, but null or a number is an error."""
    if key not in body:
        return default
    value = body[key]
    if not isinstance(value, str):
        raise BadRequest(400, f"'{key}' must be a string")
    return value


def envelope_from_json(raw: bytes, now: float) -> tuple[Any, int]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(400, f"the body is not JSON: {error}") from None
    except RecursionError:  # "[" * 200000: a 400, not a 500 with a traceback in the log
        raise BadRequest(400, "the body is not JSON we take: nested too deeply") from None
    if not isinstance(body, dict):
        raise BadRequest(400, "the body must be a JSON object")
    unknown = set(body) - JSON_FIELDS
    if unknown:
        raise BadRequest(400, f"unknown field(s): {', '.join(sorted(unknown))}")
    sender = _text(body, "from")
    subject = _text(body, "subject")
    if not sender or subject is None:
        raise BadRequest(400, "'from' and 'subject' are required")
    headers = body.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise BadRequest(400, "'headers' must be an object of strings")
    attachments = []
    items = body.get("attachments", [])
    if not isinstance(items, list):
        raise BadRequest(400, "'attachments' must be a list")
    for item in items:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("filename"), str)
            or not (isinstance(item.get("content"), str))
        ):
            raise BadRequest(400, "each attachment needs 'filename' and base64 'content'")
        try:
            data = base64.b64decode(item["content"], validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest(
                400, f"attachment {item['filename']!r}: content is not base64"
            ) from None
        attachments.append(Attachment(item["filename"], data))
    try:
        given = body.get("priority", "normal")
        if isinstance(given, bool) or not isinstance(given, str | int):
            raise BadRequest(400, "'priority' is high, normal, low or 0-9")
        priority = parse_priority(str(given))
        envelope = build_message(
            sender=sender,
            to=_addresses(body, "to"),
            cc=_addresses(body, "cc"),
            bcc=_addresses(body, "bcc"),
            subject=subject,
            body=_text(body, "text", "") or "",
            html=_text(body, "html"),
            attachments=attachments,
            headers=[parse_header_option(f"{k}: {v}") for k, v in headers.items()],
            now=now,
        )
    except ValueError as error:  # a Refusal, or a malformed field
        code = answer_for(error).http if isinstance(error, Refusal) else 400
        raise BadRequest(code, str(error)) from None
    return envelope, priority


async def submit(status: Any, request: Request) -> tuple[int, dict[str, Any]]:
    """Parse, check, commit; the status code and JSON body to answer with."""
    # Anything beyond the body limit is refused unread: announced by Content-Length, or
    # counted as a chunked body arrived (LimitedRequest kept none of it).
    length = request.getHeader(b"content-length")
    announced = int(length) if length is not None and length.isdigit() else 0
    if announced > status.body_limit() or getattr(request, "too_large", False):
        return answer_for(MessageTooBig()).http, {"error": "the message is over max_message_size"}
    assert request.content is not None
    raw = request.content.read()
    kind = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    now = status.clock.seconds()
    try:
        if kind == b"application/json":
            envelope, priority = envelope_from_json(raw, now)
        elif kind == b"message/rfc822":
            try:
                envelope = prepare_raw_message(raw, extract_recipients=True, now=now)
            except Refusal as error:
                raise BadRequest(answer_for(error).http, str(error)) from None
            priority = parse_priority("normal")
        else:
            raise BadRequest(415, "send application/json or message/rfc822")
    except BadRequest as error:
        return error.code, {"error": str(error)}
    try:
        message_id = await status.submit(envelope, priority)
    except (Refusal, QueueError) as error:
        return answer_for(error).http, {"error": str(error)}
    return 202, {"id": message_id, "recipients": list(envelope.recipients)}
