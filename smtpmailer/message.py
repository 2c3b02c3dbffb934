"""Building and checking messages: addresses, header values, MIME, raw RFC 5322 input."""

from __future__ import annotations

import email.utils
import functools
import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from smtpmailer.intake.refusals import BadAddress, MessageError

__all__ = ["BadAddress", "MessageError"]

_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*$")
_QUOTED_LOCAL = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')
_LABEL_TEXT = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"  # a DNS label (LDH)
_LABEL = re.compile(rf"^{_LABEL_TEXT}$")
# The everyday address, ``name.tag+x@mail.example.org``: the full parse below gives it
# back with its domain in lower case, so it is taken without the parse (the email
# package's address grammar was 15% of the SMTP worker's CPU, bench/profile).
_PLAIN_ADDRESS = re.compile(
    rf"([A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*)@({_LABEL_TEXT}(?:\.{_LABEL_TEXT})*)"
)
_LITERAL = re.compile(r"^\[(?:\d{1,3}\.){3}\d{1,3}\]$|^\[IPv6:[0-9A-Fa-f:.]+\]$")
_FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]+$")
# Headers that the builder owns: a --header that sets one of these would contradict it.
_BUILT_HEADERS = {
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "content-type",
    "mime-version",
    "content-transfer-encoding",
}


def _single_address(text: str, what: str) -> tuple[str, str]:
    """Parse ``Name <a@b>`` or ``a@b``; a list of several addresses is an error here."""
    if text.count("<") != text.count(">") or text.count("<") > 1:
        raise BadAddress(f"{what} {text!r} has unbalanced angle brackets")
    pairs = email.utils.getaddresses([text])
    if len(pairs) != 1:
        raise BadAddress(f"{what} {text!r} must be a single address")
    return pairs[0]


_LINE_BREAKS = frozenset("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")
_UTF8_LOCAL_FORBIDDEN = re.compile(r'[\s()<>\[\]\\,;:"@\x00-\x1f\x7f]')


def normalize_address(text: str, what: str = "address", allow_utf8: bool = False) -> str:
    """Return the bare addr-spec of ``text`` (``Name <a@b>`` allowed), or raise BadAddress
    (``sender`` set when ``what`` is the sender).

    Internationalized domains become their ASCII (IDNA) form; a non-ASCII local part
    would need SMTPUTF8 and is refused.
    """
    try:
        return _normalize_address(text, what, allow_utf8)
    except BadAddress as error:
        error.sender = what == "sender"
        raise


def _normalize_address(text: str, what: str, allow_utf8: bool) -> str:
    plain = _PLAIN_ADDRESS.fullmatch(text)
    if plain and len(plain[1]) <= 64 and len(plain[2]) <= 253:
        return f"{plain[1]}@{plain[2].lower()}"
    return _parse_address(text, what, allow_utf8)


def _parse_address(text: str, what: str, allow_utf8: bool) -> str:
    if breaks_lines(text):
        raise BadAddress(f"{what} {text!r} contains a line break")
    addr = _single_address(text, what)[1].strip()
    if not addr or addr.count("@") < 1:
        raise BadAddress(f"{what} {text!r} is not an email address (expected user@domain)")
    local, _, domain = addr.rpartition("@")
    if not local or not domain:
        raise BadAddress(f"{what} {text!r} is not an email address (expected user@domain)")
    if not local.isascii():
        if not allow_utf8:
            raise BadAddress(
                f"{what} {text!r}: a non-ASCII local part needs SMTPUTF8 (send it as a raw "
                "message, or over SMTP with SMTPUTF8)"
            )
        if _UTF8_LOCAL_FORBIDDEN.search(local) or local.startswith(".") or ".." in local:
            raise BadAddress(f"{what} {text!r} has an invalid local part {local!r}")
    elif len(local) > 64 or not (_LOCAL.match(local) or _QUOTED_LOCAL.match(local)):
        raise BadAddress(f"{what} {text!r} has an invalid local part {local!r}")
    if not _LITERAL.match(domain):
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadAddress(f"{what} {text!r} has an invalid domain {domain!r}") from None
        labels = domain.rstrip(".").split(".")
        if len(domain) > 253 or not all(_LABEL.match(label) for label in labels):
            raise BadAddress(f"{what} {text!r} has an invalid domain {domain!r}")
        domain = domain.rstrip(".").lower()
    return f"{local}@{domain}"


def breaks_lines(text: str) -> bool:
    """CR, LF, or any other character Python's email package splits lines at (VT, FF,
    the file/group/record separators, NEL, U+2028, U+2029): in a header, each is an
    injection or, at best, a crash of the message builder (found by fuzzing)."""
    return len(text.splitlines()) > 1 or text[-1:] in _LINE_BREAKS


def check_header_value(name: str, value: str) -> None:
    """Refuse line breaks and NUL in any value that becomes a header: header injection."""
    if breaks_lines(value) or "\0" in value:
        raise MessageError(
            f"{name} contains a line break (CR/LF) or NUL; refusing header injection"
        )


def parse_header_option(text: str) -> tuple[str, str]:
    """``'K: V'`` from ``--header`` to (K, V), checked."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not _FIELD_NAME.match(name):
        raise MessageError(f"--header {text!r} is not 'Name: value'")
    if name.lower() in _BUILT_HEADERS:
        raise MessageError(f"--header {name} is set by its own option, not by --header")
    check_header_value(f"header {name}", value)
    return name, value


def unique(addresses: Iterable[str]) -> list[str]:
    """Drop repeated recipients (case-insensitively), keeping the first spelling and order."""
    seen: set[str] = set()
    out = []
    for address in addresses:
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append(address)
    return out


@attrs.frozen
class Attachment:
    filename: str
    data: bytes

    @classmethod
    def from_path(cls, path: str) -> Attachment:
        try:
            with open(path, "rb") as handle:
                return cls(os.path.basename(path), handle.read())
        except OSError as error:
            raise MessageError(f"cannot read attachment {path}: {error.strerror}") from None


@attrs.frozen
class Envelope:
    """What the queue stores: SMTP envelope plus the message bytes (CRLF line endings)."""

    sender: str
    recipients: tuple[str, ...]
    data: bytes
    # What built it, kept with it for queue show (a template's name, its variables with
    # secrets redacted), as JSON; empty for a message given whole.
    meta: str = ""


def _header_display(text: str, what: str) -> tuple[str, str]:
    """Split ``Name <a@b>`` into a checked (display name, addr-spec)."""
    check_header_value(what, text)
    name, _ = _single_address(text, what)
    return name, normalize_address(text, what)


def build_message(
    *,
    sender: str,
    to: Sequence[str],
    cc: Sequence[str] = (),
    bcc: Sequence[str] = (),
    subject: str,
    body: str = "",
    html: str | None = None,
    attachments: Sequence[Attachment] = (),
    headers: Sequence[tuple[str, str]] = (),
    now: float,
    provider_template: tuple[str, dict[str, Any]] | None = None,
) -> Envelope:
    """Build a MIME message with Date and Message-ID; Bcc recipients get it, unnamed.

    With ``provider_template`` (an API provider's template id, and its variables) the
    content is the provider's: the message carries the id in PROVIDER_TEMPLATE and the
    variables as its JSON body, for the API relay to pass on."""
    check_header_value("subject", subject)
    from_name, from_addr = _header_display(sender, "--from")
    if not to and not cc and not bcc:
        raise MessageError("no recipients: give at least one --to, --cc or --bcc")
    to_pairs = [_header_display(a, "--to") for a in to]
    cc_pairs = [_header_display(a, "--cc") for a in cc]
    bcc_pairs = [_header_display(a, "--bcc") for a in bcc]
    for name, value in headers:
        check_header_value(f"header {name}", value)  # parse_header_option did; not every caller
    if provider_template is not None:
        check_header_value("provider_template", provider_template[0])
        headers = [*headers, (PROVIDER_TEMPLATE, provider_template[0])]
    try:
        data = _compose(
            (from_name, from_addr), to_pairs, cc_pairs, subject, body, html, attachments,
            headers, now, provider_template[1] if provider_template is not None else None,
        )  # fmt: skip
    except UnicodeError as error:  # a lone surrogate, say, that no charset can carry
        raise MessageError(f"cannot encode the message: {error}") from None
    recipients = unique(p[1] for p in (*to_pairs, *cc_pairs, *bcc_pairs))
    meta = ""
    if provider_template is not None:
        from smtpmailer.intake.templates import origin

        meta = origin("provider_template", *provider_template)
    return Envelope(from_addr, tuple(recipients), data, meta)


@functools.cache
def _utf8_q() -> Any:
    """UTF-8 in headers as Q encoded words (=?utf-8?q?Gr=C3=BC=C3=9Fe?=): readable where
    the text is mostly ASCII, as the email package's EmailMessage writes them."""
    from email import charset

    utf8 = charset.Charset("utf-8")
    utf8.header_encoding = charset.QP
    return utf8


# The header that marks a message whose content an API provider's template makes.
PROVIDER_TEMPLATE = "X-Smtpmailer-Provider-Template"
_PROVIDER_TEMPLATE_LINE = re.compile(rb"(?im)^x-smtpmailer-provider-template:[ \t]*(\S+)")


def provider_template_of(data: bytes) -> str | None:
    """The provider template a stored message names, if it names one."""
    head = data.split(b"\r\n\r\n", 1)[0]
    found = _PROVIDER_TEMPLATE_LINE.search(head)
    return found.group(1).decode("ascii", "replace") if found else None


def header_value(value: str) -> Any:
    """A header value as compat32 writes it: ASCII as it is, anything else an RFC 2047
    encoded word (the message stays 7-bit)."""
    from email.header import Header

    return value if value.isascii() else Header(value, _utf8_q())


def _text_part(text: str, subtype: str) -> Any:
    """A text part in 7 bits: ASCII as it is while its lines fit SMTP's 998; else UTF-8,
    quoted-printable for mostly-Latin text and base64 for the rest (as the email
    package's content manager chooses)."""
    from email import charset
    from email.mime.text import MIMEText

    if not text.endswith("\n") and text:
        text += "\n"
    lines = text.splitlines()
    if text.isascii() and all(len(line) <= 998 for line in lines):
        return MIMEText(text, subtype, "us-ascii")
    wide = sum(not c.isascii() for c in text) > len(text) // 3
    utf8 = charset.Charset("utf-8")
    utf8.body_encoding = charset.BASE64 if wide else charset.QP
    return MIMEText(text, subtype, utf8)  # type: ignore[arg-type]  # a Charset works too


def _attachment_part(attachment: Attachment) -> Any:
    import mimetypes
    from email import encoders
    from email.mime.base import MIMEBase

    kind, _ = mimetypes.guess_type(attachment.filename)
    maintype, subtype = (kind or "application/octet-stream").split("/", 1)
    part = MIMEBase(maintype, subtype)
    part.set_payload(attachment.data)
    encoders.encode_base64(part)
    name = attachment.filename
    filename: Any = name if name.isascii() else ("utf-8", "", name)  # RFC 2231
    part.add_header("Content-Disposition", "attachment", filename=filename)
    return part


@functools.cache
def wire_policy() -> Any:
    """compat32 with CRLF, writing a short ASCII header as it is: compat32 itself runs every
    header through a Header object to fold it, even one that needs no folding."""
    from email.policy import compat32

    class Wire(type(compat32)):  # type: ignore[misc]
        def fold_binary(self, name: str, value: Any) -> bytes:
            if isinstance(value, str) and value.isascii() and len(name) + len(value) < 76:
                if "\r" not in value and "\n" not in value:
                    return f"{name}: {value}{self.linesep}".encode("ascii")
            folded: bytes = super().fold_binary(name, value)
            return folded

    return Wire(linesep="\r\n")


def _compose(
    sender: tuple[str, str],
    to: Sequence[tuple[str, str]],
    cc: Sequence[tuple[str, str]],
    subject: str,
    body: str,
    html: str | None,
    attachments: Sequence[Attachment],
    headers: Sequence[tuple[str, str]],
    now: float,
    variables: dict[str, Any] | None = None,
) -> bytes:
    """The MIME message, built with the email package's compat32 classes: a third of the
    time EmailMessage takes (its header objects parse every value), which a batch of
    10,000 templated messages feels. Boundaries are made here, so the generator need not
    search the text for a free one."""
    import secrets
    from email.mime.multipart import MIMEMultipart

    if variables is not None:
        import json
        from email.mime.application import MIMEApplication

        message: Any = MIMEApplication(json.dumps(variables).encode(), "json")
    else:
        message = _text_part(body, "plain")
    if html is not None and variables is None:
        alternative = MIMEMultipart("alternative", boundary=f"=_alt_{secrets.token_hex(12)}")
        alternative.attach(message)
        alternative.attach(_text_part(html, "html"))
        message = alternative
    if attachments:
        mixed = MIMEMultipart("mixed", boundary=f"=_mixed_{secrets.token_hex(12)}")
        mixed.attach(message)
        for attachment in attachments:
            mixed.attach(_attachment_part(attachment))
        message = mixed
    message["From"] = email.utils.formataddr(sender, charset=_utf8_q())
    if to:
        message["To"] = ", ".join(email.utils.formataddr(p, charset=_utf8_q()) for p in to)
    if cc:
        message["Cc"] = ", ".join(email.utils.formataddr(p, charset=_utf8_q()) for p in cc)
    message["Subject"] = header_value(subject)
    message["Date"] = email.utils.formatdate(now, localtime=True)
    message["Message-ID"] = email.utils.make_msgid(domain=sender[1].rpartition("@")[2])
    for name, value in headers:
        message[name] = header_value(value)
    data: bytes = message.as_bytes(policy=wire_policy())
    return data


_LINE_ENDS = re.compile(rb"\r\n|\r|\n")


def to_crlf(data: bytes) -> bytes:
    """Normalize every line ending (LF, CR, CRLF) to CRLF, as SMTP wants. Data that is
    CRLF already (most of it) is returned after three counts, which copy nothing."""
    pairs = data.count(b"\r\n")
    if data.count(b"\n") == pairs and data.count(b"\r") == pairs:
        return data
    return _LINE_ENDS.sub(b"\r\n", data)


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Split at the first empty line; headers include their final CRLF."""
    if data.startswith(b"\r\n"):
        return b"", data
    index = data.find(b"\r\n\r\n")
    if index < 0:
        return data if data.endswith(b"\r\n") else data + b"\r\n", b"\r\n"
    return data[: index + 2], data[index + 2 :]


def _drop_headers(head: bytes, names: set[str]) -> bytes:
    """Remove every field (with its continuation lines) whose name is in ``names``."""
    out: list[bytes] = []
    skipping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        field = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        skipping = field in names
        if not skipping:
            out.append(line)
    return b"\r\n".join(out)


def prepare_raw(
    data: bytes,
    *,
    recipients: Sequence[str] = (),
    extract_recipients: bool = False,
    sender: str | None = None,
    now: float,
    qualify: Callable[[str], str] = lambda address: address,
) -> Envelope:
    """Take an RFC 5322 message as given (stdin of ``send -t``/``send RCPT...``).

    With ``extract_recipients`` the recipients come from To, Cc and Bcc and the Bcc header
    is removed. Date and Message-ID are added when missing. The envelope sender is
    ``sender``, else the From header's address; ``<>`` is the null sender, as sendmail's
    ``-f '<>'`` gives it to auto-replies that must not bounce.
    """
    data = to_crlf(data)
    head, rest = _split_head(data)
    from email.parser import BytesParser

    parsed = BytesParser().parsebytes(head + b"\r\n", headersonly=True)
    rcpts = [normalize_address(qualify(r), "recipient", allow_utf8=True) for r in recipients]
    if extract_recipients:
        for field in ("to", "cc", "bcc"):
            for _, address in email.utils.getaddresses(parsed.get_all(field, [])):
                if address:
                    rcpts.append(
                        normalize_address(qualify(address), f"{field.title()} address", True)
                    )
    if not rcpts:
        raise MessageError("no recipients: give them as arguments, or use -t with To/Cc/Bcc")
    from_addresses = email.utils.getaddresses(parsed.get_all("from", []))
    from_address = from_addresses[0][1] if from_addresses else ""
    if sender is None:
        if not from_address:
            raise MessageError("no sender: the message has no From header; give --from")
        sender = from_address
    if sender.strip() == "<>":
        sender = ""
    else:
        sender = normalize_address(qualify(sender), "sender", allow_utf8=True)
    additions = b""
    if parsed.get("date") is None:
        additions += f"Date: {email.utils.formatdate(now, localtime=True)}\r\n".encode()
    if parsed.get("message-id") is None:
        domain = (sender or from_address or "@localhost").rpartition("@")[2] or "localhost"
        additions += f"Message-ID: {email.utils.make_msgid(domain=domain)}\r\n".encode()
    if extract_recipients:
        head = _drop_headers(head, {"bcc"})
    return Envelope(sender, tuple(unique(rcpts)), head + additions + rest)
