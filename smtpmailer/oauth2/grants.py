"""The token requests of each flow, and what the token endpoint's answers mean.

Every flow is a form POST to the token endpoint (RFC 6749 section 4; the JWT bearer grant
of RFC 7523 for Google's service accounts) answered with JSON: ``access_token`` and
``expires_in``, sometimes a new ``refresh_token`` (rotation), or ``error`` and
``error_description`` with a 400 or 401.
"""

from __future__ import annotations

import json

import attrs

from smtpmailer.config.sections import OAuth2Config

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
# Errors that no retry can mend: the grant or the client must be fixed by a person.
LASTING = ("invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope")
# How long a service account's assertion is good for (Google's maximum: one hour).
ASSERTION_LIFETIME = 3600


@attrs.frozen
class TokenGrant:
    """What the endpoint gave: never shown (repr hides the tokens)."""

    access_token: str = attrs.field(repr=False)
    expires_in: float
    refresh_token: str | None = attrs.field(default=None, repr=False)


class TokenEndpointError(Exception):
    """The endpoint said no, or could not be asked. ``error`` is the OAuth error code
    (``invalid_grant``), or what went wrong on the way (``timeout``, ``HTTP 503``)."""

    def __init__(self, error: str, description: str = "") -> None:
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description

    @property
    def lasting(self) -> bool:
        return self.error in LASTING


def _client(config: OAuth2Config) -> dict[str, str]:
    fields = {"client_id": config.client_id or ""}
    if config.client_secret is not None:
        fields["client_secret"] = config.client_secret
    return fields


def refresh_request(config: OAuth2Config, refresh_token: str) -> dict[str, str]:
    fields = {"grant_type": "refresh_token", "refresh_token": refresh_token, **_client(config)}
    if config.provider != "google":
        # Microsoft issues the token for the scope asked for; Google keeps the grant's own.
        fields["scope"] = config.scope or ""
    return fields


def client_credentials_request(config: OAuth2Config) -> dict[str, str]:
    return {"grant_type": "client_credentials", "scope": config.scope or "", **_client(config)}


def service_account_request(config: OAuth2Config, now: float) -> dict[str, str]:
    """A JWT signed with the service account's key (RS256), asking for ``subject``'s mail.
    PyJWT signs it: a well-kept library (with ``cryptography`` for RSA), rather than
    hand-made JOSE."""
    import jwt

    account = config.service_account
    assert account is not None, "service_account flow without its key"
    issued = int(now)
    claims = {
        "iss": account.client_email,
        "sub": config.subject,
        "scope": config.scope,
        "aud": config.token_url,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME,
    }
    headers = {"kid": account.private_key_id} if account.private_key_id else None
    assertion = jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)
    return {"grant_type": JWT_BEARER, "assertion": assertion}


def code_request(
    config: OAuth2Config, code: str, redirect_uri: str, verifier: str
) -> dict[str, str]:
    """The authorization code (PKCE, RFC 7636) exchanged for the first tokens."""
    return {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
        **_client(config),
    }


def device_request(config: OAuth2Config, device_code: str) -> dict[str, str]:
    return {"grant_type": DEVICE_CODE, "device_code": device_code, **_client(config)}


def _json(body: bytes) -> dict[str, object] | None:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_answer(status: int, body: bytes) -> TokenGrant:
    """The grant in a 200 answer; else TokenEndpointError with the endpoint's own words."""
    data = _json(body)
    if status != 200:
        if data is not None and isinstance(data.get("error"), str):
            description = data.get("error_description")
            text = " ".join(str(description).split()) if description else ""
            raise TokenEndpointError(str(data["error"]), text[:300])
        raise TokenEndpointError(f"HTTP {status}", "the token endpoint gave no OAuth error")
    if data is None or not isinstance(data.get("access_token"), str):
        raise TokenEndpointError("bad answer", "no access_token in the token endpoint's JSON")
    try:
        expires_in = float(data.get("expires_in", 3600))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TokenEndpointError("bad answer", "expires_in is not a number") from None
    refresh = data.get("refresh_token")
    return TokenGrant(
        str(data["access_token"]), expires_in, refresh if isinstance(refresh, str) else None
    )
