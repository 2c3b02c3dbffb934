"""SMTP AUTH mechanisms as a table of small strategies, and the rule that picks one.

Each mechanism gets the protocol and the relay's credentials and returns the server's final
reply. The secret is fetched through ``Credentials.secret``, a Deferred, so a mechanism
whose secret is an access token that must first be fetched or refreshed (XOAUTH2,
OAUTHBEARER) waits for it the same way a password is read; a token the server refuses is
reported through ``Credentials.rejected``. Commands carrying credentials are never logged.
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
    # For tokens: called with a token the server refused, so that the next is a new one.
    rejected: Callable[[str], None] | None = None

    @property
    def bearer(self) -> bool:
        return self.rejected is not None


# (protocol, credentials, (server host, port)) -> the server's final reply
Mechanism = Callable[[SMTPClientProtocol, Credentials, tuple[str, int]], Awaitable[Reply]]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def plain(
    protocol: SMTPClientProtocol, credentials: Credentials, server: tuple[str, int]
) -> Reply:
    secret = (await credentials.secret()).encode("utf-8")
    user = credentials.username.encode("utf-8")
    return await protocol.command("AUTH PLAIN " + _b64(b"\0" + user + b"\0" + secret))


async def login(
    protocol: SMTPClientProtocol, credentials: Credentials, server: tuple[str, int]
) -> Reply:
    secret = (await credentials.secret()).encode("utf-8")
    reply = await protocol.command("AUTH LOGIN")
    if reply.code == 334:
        reply = await protocol.command(_b64(credentials.username.encode("utf-8")))
    if reply.code == 334:
        reply = await protocol.command(_b64(secret))
    return reply


async def cram_md5(
    protocol: SMTPClientProtocol, credentials: Credentials, server: tuple[str, int]
) -> Reply:
    secret = (await credentials.secret()).encode("utf-8")
    reply = await protocol.command("AUTH CRAM-MD5")
    if reply.code == 334:
        challenge = base64.b64decode(reply.lines[0].strip() or "")
        digest = hmac.new(secret, challenge, hashlib.md5).hexdigest()
        user = credentials.username.encode("utf-8")
        reply = await protocol.command(_b64(user + b" " + digest.encode("ascii")))
    return reply


async def _bearer(
    protocol: SMTPClientProtocol,
    credentials: Credentials,
    command: str,
    initial: bytes,
    abort: str,
    token: str,
) -> Reply:
    """Send the token; a server that refuses it answers 334 with a JSON error (RFC 7628
    3.2.2, and Google's XOAUTH2): answer ``abort`` to get the final 5xx, and report the
    token as refused."""
    reply = await protocol.command(f"{command} {_b64(initial)}")
    if reply.code == 334:
        reply = await protocol.command(abort)
    if reply.code != 235 and credentials.rejected is not None:
        credentials.rejected(token)
    return reply


async def xoauth2(
    protocol: SMTPClientProtocol, credentials: Credentials, server: tuple[str, int]
) -> Reply:
    """Google's and Microsoft's XOAUTH2: ``user=U^Aauth=Bearer T^A^A``; an empty line
    after the error challenge."""
    token = await credentials.secret()
    initial = f"user={credentials.username}\x01auth=Bearer {token}\x01\x01".encode()
    return await _bearer(protocol, credentials, "AUTH XOAUTH2", initial, "", token)


async def oauthbearer(
    protocol: SMTPClientProtocol, credentials: Credentials, server: tuple[str, int]
) -> Reply:
    """RFC 7628: the GS2 header ``n,a=U,``, then host, port and the bearer token; a single
    ^A after the error challenge."""
    token = await credentials.secret()
    host, port = server
    user = credentials.username.replace("=", "=3D").replace(",", "=2C")
    initial = f"n,a={user},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01".encode()
    return await _bearer(protocol, credentials, "AUTH OAUTHBEARER", initial, _b64(b"\x01"), token)


# The mechanisms we speak, by the name the relay's EHLO offers them under.
MECHANISMS: dict[str, Mechanism] = {
    "PLAIN": plain,
    "LOGIN": login,
    "CRAM-MD5": cram_md5,
    "XOAUTH2": xoauth2,
    "OAUTHBEARER": oauthbearer,
}
# What ``auth = auto`` prefers: over TLS the simplest; in clear, the one that hides the password.
PREFERRED_WITH_TLS = ("PLAIN", "LOGIN", "CRAM-MD5")
PREFERRED_IN_CLEAR = ("CRAM-MD5", "PLAIN", "LOGIN")
# ... and with a token: XOAUTH2 is what Gmail and Microsoft 365 both offer.
PREFERRED_WITH_TOKEN = ("XOAUTH2", "OAUTHBEARER")
BEARER_MECHANISMS = frozenset(PREFERRED_WITH_TOKEN)


def password_credentials(username: str | None, password: str | None) -> Credentials | None:
    """Credentials for a relay with a password, or None where it has none."""
    if not username or password is None:
        return None
    return Credentials(username, lambda: succeed(password))


def choose(setting: str, offered: str, tls: bool, bearer: bool = False) -> str:
    """The mechanism to use: ``setting`` is the relay's ``auth`` key, ``offered`` the
    EHLO's AUTH parameters; ``bearer`` when the credentials are a token."""
    names = offered.upper().split()
    if setting != "auto":
        wanted: tuple[str, ...] = (setting.upper(),)
    elif bearer:
        wanted = PREFERRED_WITH_TOKEN
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
