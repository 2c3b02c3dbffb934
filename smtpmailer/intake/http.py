"""``POST /v1/messages``: queue a message over HTTP, as JSON or as a raw RFC 5322 message.

The same checks and the same durable commit as `smtpmailer send` and the SMTP listener;
202 with the queue id only after the commit.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from typing import Any

from twisted.web.server import Request

from smtpmailer.intake.provider_templates import check_route
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
    "template",
    "vars",
    "recipients",
    "merge_global",
    "provider_template",
}
# Without a template, a message gives its own subject and body; with one, the template does.
TEMPLATE_GIVES = ("subject", "text", "html")
# A provider's template id or alias: SendGrid d-..., a number, a Postmark alias, a name.
TEMPLATE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


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


def _object(body: dict[str, Any], key: str) -> dict[str, Any]:
    value = body.get(key, {})
    if not isinstance(value, dict):
        raise BadRequest(400, f"'{key}' must be an object")
    return value


def _load(templates: Callable[[], Any]) -> Any:
    try:
        return templates()
    except Refusal as error:  # no [Templates] path
        raise BadRequest(answer_for(error).http, str(error)) from None


def envelopes_from_json(
    raw: bytes, now: float, templates: Callable[[], Any], config: Any
) -> tuple[list[Any], int, bool]:
    """The message(s) a JSON body asks for: one, or with ``template`` and ``recipients``
    a batch (a message to each recipient, with its own ``vars`` over ``merge_global``).
    ``provider_template`` instead of ``template`` names the API provider's template."""
    body, common = _parse(raw)
    template = _text(body, "template")
    if template == "":
        raise BadRequest(400, "'template' must name a template")
    provider_template = body.get("provider_template")
    if provider_template is not None:
        if (
            isinstance(provider_template, bool)
            or not isinstance(provider_template, str | int)
            or not TEMPLATE_ID.match(str(provider_template))
        ):
            raise BadRequest(400, "'provider_template' must be the template's id or alias")
        if template is not None or "text" in body or "html" in body:
            raise BadRequest(400, "'provider_template' gives the body: no template, text or html")
        common["provider_template"] = str(provider_template)
        try:
            check_route(config, _text(body, "from") or "")
        except Refusal as error:
            raise BadRequest(answer_for(error).http, str(error)) from None
    if template is None and "provider_template" not in common:
        for key in ("vars", "recipients", "merge_global"):
            if key in body:
                raise BadRequest(400, f"'{key}' goes with 'template'")
        if not _text(body, "from") or _text(body, "subject") is None:
            raise BadRequest(400, "'from' and 'subject' are required")
        return [_build(body, common, now)], common["priority"], False
    given = [key for key in TEMPLATE_GIVES if key in body and template is not None]
    if given:
        raise BadRequest(400, f"'template' gives the subject and body: no {', '.join(given)}")
    if not _text(body, "from"):
        raise BadRequest(400, "'from' is required")
    shared = _object(body, "merge_global")
    if "recipients" not in body:
        variables = {**shared, **_object(body, "vars")}
        found = _load(templates) if template is not None else None
        envelope = _build(body, common, now, found, template, variables)
        return [envelope], common["priority"], False
    if "vars" in body or any(key in body for key in ("to", "cc", "bcc")):
        raise BadRequest(400, "with 'recipients', each recipient gives its own 'to' and 'vars'")
    recipients = body["recipients"]
    if not isinstance(recipients, list) or not recipients:
        raise BadRequest(400, '\'recipients\' must be a list of {"to", "vars"} objects')
    max_batch = config.templates.max_batch
    if len(recipients) > max_batch:
        raise BadRequest(
            400, f"{len(recipients)} recipients, over [Templates] max_batch ({max_batch})"
        )
    found = _load(templates) if template is not None else None
    envelopes = []
    for number, recipient in enumerate(recipients):
        if not isinstance(recipient, dict) or set(recipient) - {"to", "vars"}:
            raise BadRequest(400, f"recipients[{number}]: give 'to' and optionally 'vars'")
        variables = {**shared, **_object(recipient, "vars")}
        one = {**body, "to": recipient.get("to", [])}
        try:
            envelopes.append(_build(one, common, now, found, template, variables))
        except BadRequest as error:
            raise BadRequest(error.code, f"recipients[{number}]: {error}") from None
    return envelopes, common["priority"], True


def _parse(raw: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """The JSON object, and what every message of it shares (checked): headers,
    attachments, priority."""
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
    given = body.get("priority", "normal")
    if isinstance(given, bool) or not isinstance(given, str | int):
        raise BadRequest(400, "'priority' is high, normal, low or 0-9")
    try:
        priority = parse_priority(str(given))
        parsed_headers = [parse_header_option(f"{k}: {v}") for k, v in headers.items()]
    except ValueError as error:
        code = answer_for(error).http if isinstance(error, Refusal) else 400
        raise BadRequest(code, str(error)) from None
    return body, {"headers": parsed_headers, "attachments": attachments, "priority": priority}


def _build(
    body: dict[str, Any],
    common: dict[str, Any],
    now: float,
    templates: Any = None,
    template: str | None = None,
    variables: dict[str, Any] | None = None,
) -> Any:
    fields = {
        "sender": _text(body, "from") or "",
        "to": _addresses(body, "to"),
        "cc": _addresses(body, "cc"),
        "bcc": _addresses(body, "bcc"),
        "attachments": common["attachments"],
        "headers": common["headers"],
        "now": now,
    }
    try:
        if "provider_template" in common:
            return build_message(
                subject=_text(body, "subject") or "",
                provider_template=(common["provider_template"], variables or {}),
                **fields,
            )
        if template is not None:
            return templates.build(template, variables or {}, **fields)
        return build_message(
            subject=_text(body, "subject") or "",
            body=_text(body, "text", "") or "",
            html=_text(body, "html"),
            **fields,
        )
    except ValueError as error:  # a Refusal, or a malformed field
        code = answer_for(error).http if isinstance(error, Refusal) else 400
        raise BadRequest(code, str(error)) from None


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
            envelopes, priority, batch = envelopes_from_json(
                raw, now, status.templates, status.config
            )
        elif kind == b"message/rfc822":
            try:
                envelopes = [prepare_raw_message(raw, extract_recipients=True, now=now)]
            except Refusal as error:
                raise BadRequest(answer_for(error).http, str(error)) from None
            priority, batch = parse_priority("normal"), False
        else:
            raise BadRequest(415, "send application/json or message/rfc822")
    except BadRequest as error:
        return error.code, {"error": str(error)}
    try:
        if not batch:
            (envelope,) = envelopes
            message_id = await status.submit(envelope, priority)
            return 202, {"id": message_id, "recipients": list(envelope.recipients)}
        ids = await status.submit_batch(envelopes, priority)
    except (Refusal, QueueError) as error:
        return answer_for(error).http, {"error": str(error)}
    return 202, {
        "ids": ids,
        "messages": [
            {"id": message_id, "recipients": list(envelope.recipients)}
            for message_id, envelope in zip(ids, envelopes, strict=True)
        ],
    }
