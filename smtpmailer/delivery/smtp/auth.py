"""SMTP AUTH mechanisms as a table of small strategies, and the rule that picks one.

Each mechanism gets the protocol and the relay's credentials and returns the server's final
reply. The secret is fetched through ``Credentials.secret``, a Deferred, so a mechanism
whose secret is an access token that must first be fetched or refreshed (XOAUTH2) waits
for it the same way a password is read. Commands carrying credentials are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable

import attrs
from twisted.internet.defer import Deferred, succeed

from smtpmailer.delivery.smtp.protocol import Reply, SMTPClientProtocol


class AuthError(Exception):
    """No mechanism can be used with this relay; the message says why in one line."""


@attrs.frozen
class Credentials:
    """Who we are to the relay; ``secret()`` may have to wait (a token being fetched)."""

    username: str
    secret: Callable[[], Deferred[str]] = attrs.field(repr=False)


Mechanism = Callable[[SMTPClientProtocol, Credentials], Awaitable[Reply]]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def plain(protocol: SMTPClientProtocol, credentials: Credentials) -> Reply:
    secret = (await credentials.secret()).encode("utf-8")
    user = credentials.username.encode("utf-8")
    return await protocol.command("AUTH PLAIN " + _b64(b"\0" + user + b"\0" + secret))


async def login(protocol: SMTPClientProtocol, credentials: Credentials) -> Reply:
    secret = (await credentials.secret()).encode("utf-8")
    reply = await protocol.command("AUTH LOGIN")
    if reply.code == 334:
        reply = await protocol.command(_b64(credentials.username.encode("utf-8")))
    if reply.code == 334:
        reply = await protocol.command(_b64(secret))
    return reply


async def cram_md5(protocol: SMTPClientProtocol, credentials: Credentials) -> Reply:
    secret = (await credentials.secret()).encode("utf-8")
    reply = await protocol.command("AUTH CRAM-MD5")
    if reply.code == 334:
        challenge = base64.b64decode(reply.lines[0].strip() or "")
        digest = hmac.new(secret, challenge, hashlib.md5).hexdigest()
        user = credentials.username.encode("utf-8")
        reply = await protocol.command(_b64(user + b" " + digest.encode("ascii")))
    return reply


# The mechanisms we speak, by the name the relay's EHLO offers them under.
MECHANISMS: dict[str, Mechanism] = {"PLAIN": plain, "LOGIN": login, "CRAM-MD5": cram_md5}
# What ``auth = auto`` prefers: over TLS the simplest; in clear, the one that hides the password.
PREFERRED_WITH_TLS = ("PLAIN", "LOGIN", "CRAM-MD5")
PREFERRED_IN_CLEAR = ("CRAM-MD5", "PLAIN", "LOGIN")


def password_credentials(username: str | None, password: str | None) -> Credentials | None:
    """Credentials for a relay with a password, or None where it has none."""
    if not username or password is None:
        return None
    return Credentials(username, lambda: succeed(password))


def choose(setting: str, offered: str, tls: bool) -> str:
    """The mechanism to use: ``setting`` is the relay's ``auth`` key, ``offered`` the
    EHLO's AUTH parameters."""
    names = offered.upper().split()
    if setting != "auto":
        wanted: tuple[str, ...] = (setting.upper(),)
    else:
        wanted = PREFERRED_WITH_TLS if tls else PREFERRED_IN_CLEAR
    for mechanism in wanted:
        if mechanism in names:
            return mechanism
    if not names:
        raise AuthError("relay does not offer AUTH, but a username is configured")
    raise AuthError(
        f"relay offers AUTH {' '.join(names)}; none of {', '.join(wanted)} (auth = {setting})"
    )
