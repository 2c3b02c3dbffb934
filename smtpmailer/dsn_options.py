"""RFC 3461 DSN options as they travel with a message: RET and ENVID from MAIL FROM,
NOTIFY and ORCPT from each RCPT TO. The SMTP listener reads them, the queue keeps them
with the message (its meta), our own DSNs honour NOTIFY, and relays that announce DSN get
them passed on."""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

_XTEXT = re.compile(rb"^(?:[!-*,-<>-~]|\+[0-9A-F]{2})+$")  # RFC 3461 xtext
NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}


class BadOption(ValueError):
    """A DSN parameter that is not as RFC 3461 spells it (501 5.5.4)."""


@attrs.define
class DSNOptions:
    """Mutable: the SMTP listener fills a transaction's in as RCPT TO commands come."""

    ret: str | None = None  # FULL or HDRS
    envid: str | None = None  # xtext, as given
    notify: dict[str, str] = attrs.Factory(dict)  # recipient -> NEVER or SUCCESS,FAILURE,DELAY
    orcpt: dict[str, str] = attrs.Factory(dict)  # recipient -> addr-type;xtext

    def __bool__(self) -> bool:
        return bool(self.ret or self.envid or self.notify or self.orcpt)

    def wants(self, recipient: str, what: str) -> bool:
        """Whether ``recipient`` asked for a DSN on ``what`` (FAILURE, DELAY, SUCCESS);
        without NOTIFY, failures and delays are told (RFC 3461's default)."""
        asked = self.notify.get(recipient)
        if asked is None:
            return what in ("FAILURE", "DELAY")
        return what in asked.split(",")

    def as_meta(self) -> dict[str, Any]:
        return {"dsn": attrs.asdict(self, filter=lambda _, value: bool(value))}


def from_meta(meta: str | None) -> DSNOptions:
    if not meta:
        return DSNOptions()
    try:
        found = json.loads(meta).get("dsn") or {}
    except (ValueError, AttributeError):
        return DSNOptions()
    return DSNOptions(
        found.get("ret"), found.get("envid"), found.get("notify", {}), found.get("orcpt", {})
    )


def mail_options(params: list[bytes]) -> tuple[str | None, str | None]:
    """RET and ENVID of a MAIL FROM's parameters (as given, case kept for ENVID)."""
    ret = envid = None
    for param in params:
        name, _, value = param.partition(b"=")
        if name.upper() == b"RET":
            if value.upper() not in (b"FULL", b"HDRS"):
                raise BadOption("RET is FULL or HDRS")
            ret = value.upper().decode()
        elif name.upper() == b"ENVID":
            if not _XTEXT.match(value) or len(value) > 100:
                raise BadOption("ENVID must be xtext, at most 100 characters")
            envid = value.decode()
    return ret, envid


def rcpt_options(params: list[bytes]) -> tuple[str | None, str | None]:
    """NOTIFY and ORCPT of a RCPT TO's parameters."""
    notify = orcpt = None
    for param in params:
        name, _, value = param.partition(b"=")
        if name.upper() == b"NOTIFY":
            words = value.upper().decode("ascii", "replace").split(",")
            if words != ["NEVER"] and not (words and set(words) <= NOTIFY_WORDS):
                raise BadOption("NOTIFY is NEVER, or SUCCESS, FAILURE and DELAY")
            notify = ",".join(words)
        elif name.upper() == b"ORCPT":
            kind, semicolon, address = value.partition(b";")
            if not semicolon or not kind or not _XTEXT.match(address) or len(value) > 500:
                raise BadOption("ORCPT is addr-type;xtext, e.g. rfc822;user@example.com")
            orcpt = value.decode()
    return notify, orcpt


def mail_params(options: DSNOptions) -> list[str]:
    params = [f"RET={options.ret}"] if options.ret else []
    return params + ([f"ENVID={options.envid}"] if options.envid else [])


def rcpt_params(options: DSNOptions, recipient: str) -> list[str]:
    params = []
    if recipient in options.notify:
        params.append(f"NOTIFY={options.notify[recipient]}")
    if recipient in options.orcpt:
        params.append(f"ORCPT={options.orcpt[recipient]}")
    return params
