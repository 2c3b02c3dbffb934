"""A delivery status notification (RFC 3464): ``multipart/report;
report-type=delivery-status`` with a part for people, a ``message/delivery-status`` part
(per message: Reporting-MTA, Arrival-Date; per recipient: Final-Recipient, Action, Status,
Remote-MTA, Diagnostic-Code, Last-Attempt-Date) and the original headers
(``text/rfc822-headers``). Built with the email package's compat32 classes, 7-bit."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence

import attrs

_CODE = re.compile(r"^(\d{3})(?:[ -]+([245]\.\d{1,3}\.\d{1,3}))?")
_HTTP = re.compile(r"^HTTP (\d{3})")


@attrs.frozen
class Failed:
    """One recipient in a report: its address, what the relay said (or why it expired),
    the relay that said it, and when."""

    address: str
    reply: str
    relay: str | None
    at: float


def status_of(reply: str, action: str) -> str:
    """The enhanced status code: the reply's own, else one from its basic code (RFC 3463)."""
    if action == "relayed":
        return "2.0.0"
    found = _CODE.match(reply)
    if found and found.group(2):
        return found.group(2)
    if found:
        return f"{found.group(1)[0]}.0.0"
    if _HTTP.match(reply):
        return "5.0.0" if action == "failed" else "4.0.0"
    return "5.4.7" if action == "failed" else "4.4.7"  # delivery time expired / delayed


def diagnostic(reply: str) -> str:
    """Diagnostic-Code: ``smtp; 550 5.1.1 ...`` for an SMTP reply, ``X-HTTP; ...`` for an
    API's answer, else the reason as given (an expiry)."""
    if _CODE.match(reply):
        return f"smtp; {reply}"
    if _HTTP.match(reply):
        return f"X-HTTP; {reply}"
    return f"X-Smtpmailer; {reply}"


def _field_value(text: str) -> str:
    """One line, ASCII (a reply may carry anything)."""
    return " ".join(text.split()).encode("ascii", "replace").decode("ascii")[:900]


def build_dsn(
    *,
    reporting_mta: str,
    from_header: str,
    to: str,
    message_id: str,
    arrived: float,
    failed: Sequence[Failed],
    original_headers: bytes,
    now: float,
    action: str = "failed",
    envid: str | None = None,
    orcpt: dict[str, str] | None = None,
    full: bytes | None = None,
) -> bytes:
    """The report to ``to`` about message ``message_id`` (our queue id); ``action`` is
    ``failed``, ``delayed`` (a warning: the message is still being tried) or ``relayed``
    (delivered to a relay, for NOTIFY=SUCCESS). RFC 3461: ``envid`` and ``orcpt`` are the
    sender's ENVID and ORCPTs; ``full`` (RET=FULL) is the whole message, sent back in place
    of its headers."""
    from email.message import Message
    from email.mime.multipart import MIMEMultipart
    from email.mime.text import MIMEText

    from smtpmailer.message import header_value, wire_policy

    report = MIMEMultipart("report", report_type="delivery-status")
    said = {
        "delayed": "Your message has not been delivered yet to the recipients below. It is "
        "still being tried; you need not send it again.",
        "relayed": "Your message was handed on to the next mail server for the recipients "
        "below, as you asked (NOTIFY=SUCCESS).",
    }.get(
        action,
        "Your message could not be delivered to the recipients below. It will not be tried again.",
    )
    lines = [f"This is the mail system at {reporting_mta}.", "", said, ""]
    for one in failed:
        lines.append(f"<{one.address}>: {_field_value(one.reply)}")
    lines += ["", f"(queue id {message_id})"]
    human = "\r\n".join(lines) + "\r\n"
    report.attach(MIMEText(human, "plain", "us-ascii" if human.isascii() else "utf-8"))

    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {reporting_mta}"
    if envid:
        per_message["Original-Envelope-Id"] = envid
    per_message["X-Smtpmailer-Queue-ID"] = message_id
    per_message["Arrival-Date"] = email.utils.formatdate(arrived, localtime=True)
    blocks: list[Message | str] = [per_message]
    for one in failed:
        block = Message()
        if orcpt and one.address in orcpt:
            block["Original-Recipient"] = _field_value(orcpt[one.address])
        block["Final-Recipient"] = f"rfc822; {_field_value(one.address)}"
        block["Action"] = action
        block["Status"] = status_of(one.reply, action)
        if one.relay:
            block["Remote-MTA"] = f"dns; {_field_value(one.relay)}"
        block["Diagnostic-Code"] = _field_value(diagnostic(one.reply))
        block["Last-Attempt-Date"] = email.utils.formatdate(one.at, localtime=True)
        blocks.append(block)
    status = Message()
    status.set_type("message/delivery-status")
    del status["MIME-Version"]
    status.set_payload(blocks)
    report.attach(status)

    if full is not None:
        from email import message_from_bytes
        from email.mime.message import MIMEMessage
        from email.policy import compat32

        report.attach(MIMEMessage(message_from_bytes(full, policy=compat32)))
    else:
        text = original_headers.decode("utf-8", "replace").rstrip("\r\n") + "\r\n"
        headers = MIMEText(text, "rfc822-headers", "us-ascii" if text.isascii() else "utf-8")
        report.attach(headers)

    report["From"] = from_header
    report["To"] = to
    report["Subject"] = header_value(
        {
            "delayed": "Delayed Mail (still being retried)",
            "relayed": "Successful Mail Delivery Report",
        }.get(action, "Undelivered Mail Returned to Sender")
    )
    report["Date"] = email.utils.formatdate(now, localtime=True)
    report["Message-ID"] = email.utils.make_msgid(domain=reporting_mta)
    report["Auto-Submitted"] = "auto-replied"
    data: bytes = report.as_bytes(policy=wire_policy())
    return data
