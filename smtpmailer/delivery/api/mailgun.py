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
from smtpmailer.delivery.api.probe import Probe, ProbeFailed, Step, json_of, sandbox_lease
from smtpmailer.httpclient import Request, Response, retry_after
from smtpmailer.message import provider_template_of
from smtpmailer.queue import Lease


class Uncarried(Exception):
    """Never raised by Mailgun's own mapping: it takes any MIME message as it is."""


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
    if provider_template_of(lease.data) is not None:
        return _build_template(lease, relay)
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


def _build_template(lease: Lease, relay: APIRelayConfig) -> Request:
    """A stored template of Mailgun's: ``POST /v3/{domain}/messages`` with ``template`` and
    its variables as ``t:variables`` (Mailgun renders it), to the envelope's recipients."""
    from smtpmailer.delivery.api.fields import person_text, read

    fields = read(lease, "Mailgun", templates=True)
    assert fields.template is not None
    template_id, variables = fields.template
    form = [("from", person_text(fields.sender))]
    form += [("to", recipient) for recipient in lease.recipients]
    if fields.subject:
        form.append(("subject", fields.subject))
    form += [
        ("template", template_id),
        ("t:variables", json.dumps(variables)),
        ("v:smtpmailer_id", lease.id),
    ]
    if fields.reply_to:
        form.append(("h:Reply-To", person_text(fields.reply_to)))
    boundary = "smtpmailer-" + secrets.token_hex(12)
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode("utf-8")
            + b"\r\n"
            for name, value in form
        )
        + f"--{boundary}--\r\n".encode()
    )
    credentials = base64.b64encode(f"api:{relay.api_key}".encode()).decode("ascii")
    return Request(
        "POST",
        f"{relay.endpoint}/v3/{relay.domain}/messages",
        {
            "Authorization": f"Basic {credentials}",
            "Content-Type": f"multipart/form-data; boundary={boundary}",
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


def probes(relay: APIRelayConfig, sender: str | None) -> list[Step]:
    """The domain as Mailgun knows it (``GET /v4/domains/{domain}``: it must be active),
    then a send in test mode (``o:testmode``), which Mailgun accepts and delivers to nobody."""
    credentials = base64.b64encode(f"api:{relay.api_key}".encode()).decode("ascii")
    auth = {"Authorization": f"Basic {credentials}", "Accept": "application/json"}

    def domain(response: Response) -> str:
        state = json_of(response).get("domain", {}).get("state")
        if state != "active":
            raise ProbeFailed(f"domain {relay.domain} is {state}, not active (verify its DNS)")
        return f"{relay.domain} is active"

    lease = sandbox_lease(sender or f"postmaster@{relay.domain}")
    kind, body = _form([("to", lease.recipients[0]), ("o:testmode", "yes")], lease.data)
    test_mode = Request(
        "POST",
        f"{relay.endpoint}/v3/{relay.domain}/messages.mime",
        {**auth, "Content-Type": kind},
        body,
    )
    return [
        Probe(
            "domain",
            Request("GET", f"{relay.endpoint}/v4/domains/{relay.domain}", auth, b""),
            domain,
        ),
        Probe(
            "test-mode send",
            test_mode,
            lambda r: f"from {lease.sender} accepted in test mode, nothing delivered",
        ),
    ]
