"""Address rewriting at intake: ``root@host`` from cron becomes a real address before the
message is committed, on every way in (it runs inside the shared checks); with recipient
rules, mail *to* ``root`` goes to a mailbox someone reads (nullmailer's adminaddr).

A pattern is a glob on the whole address (``root@*``, ``*@localhost``, an exact address),
or, without an ``@``, on its local part alone (``root``); case does not matter and the first
line that matches wins. With ``header_from`` the From: header's address is rewritten by the
same rules, its display name kept; the rest of the message is untouched. Recipient rules
change the envelope only: the To: header keeps what the sender wrote.
"""

from __future__ import annotations

import email.utils
import fnmatch
from collections.abc import Sequence

from smtpmailer.config import RewriteConfig
from smtpmailer.message import Envelope

Rules = Sequence[tuple[str, str]]


def rewritten(rules: Rules, address: str) -> str | None:
    """The address ``address`` becomes, or None when no rule matches it."""
    if not address:
        return None  # the null sender (<>) is never rewritten
    lowered = address.lower()
    local = lowered.rpartition("@")[0] if "@" in lowered else lowered
    for pattern, replacement in rules:
        subject = lowered if "@" in pattern else local
        if fnmatch.fnmatchcase(subject, pattern):
            return replacement
    return None


def _from_field(head: bytes) -> tuple[int, int] | None:
    """(start, end) of the From: field in a header block, continuation lines included."""
    start = 0 if head[:5].lower() == b"from:" else head.lower().find(b"\r\nfrom:")
    if start < 0:
        return None
    if start > 0:
        start += 2
    end = head.find(b"\r\n", start)
    while end >= 0 and head[end + 2 : end + 3] in (b" ", b"\t"):
        end = head.find(b"\r\n", end + 2)
    return start, (len(head) if end < 0 else end)


def rewrite_from_header(rules: Rules, data: bytes) -> bytes:
    """The message with its From: address rewritten (display name kept), or as it was."""
    split = data.find(b"\r\n\r\n")
    head = data if split < 0 else data[:split]
    field = _from_field(head)
    if field is None:
        return data
    start, end = field
    value = head[start + 5 : end].decode("utf-8", "surrogateescape").replace("\r\n", "")
    pairs = email.utils.getaddresses([value])
    if len(pairs) != 1:
        return data  # no address, or several: not ours to guess
    name, address = pairs[0]
    new = rewritten(rules, address)
    if new is None:
        return data
    line = "From: " + email.utils.formataddr((name, new), charset="utf-8")
    encoded = line.encode("utf-8", "surrogateescape")
    return data[:start] + encoded + data[end:]


def apply(rewrite: RewriteConfig, envelope: Envelope) -> Envelope:
    """The envelope with its sender (and, with header_from, its From: header) rewritten,
    and its recipients by the recipient rules (the headers keep what was written)."""
    if not rewrite.rules and not rewrite.recipient_rules:
        return envelope
    sender = rewritten(rewrite.rules, envelope.sender) or envelope.sender
    data = envelope.data
    if rewrite.header_from and rewrite.rules:
        data = rewrite_from_header(rewrite.rules, data)
    recipients, meta = envelope.recipients, envelope.meta
    if rewrite.recipient_rules:
        recipients, meta = _recipients(rewrite.recipient_rules, recipients, meta)
    if (sender, data, recipients) == (envelope.sender, envelope.data, envelope.recipients):
        return envelope
    return Envelope(sender, recipients, data, meta)


def _recipients(
    rules: Rules, recipients: tuple[str, ...], meta: str
) -> tuple[tuple[str, ...], str]:
    """The recipients rewritten, each once and in their order; the DSN options given for
    one (its NOTIFY, ORCPT) follow it to its new address."""
    new = {old: rewritten(rules, old) or old for old in recipients}
    kept = tuple(dict.fromkeys(new.values()))
    if kept == recipients or not meta or '"dsn"' not in meta:
        return kept, meta
    import json

    found = json.loads(meta)
    dsn = found.get("dsn") or {}
    for field in ("notify", "orcpt"):
        if isinstance(dsn.get(field), dict):
            dsn[field] = {new.get(old, old): value for old, value in dsn[field].items()}
    return kept, json.dumps(found)
