"""Each provider's endpoints and default scopes, so that a Gmail or Microsoft 365 section
needs only its client and its refresh token.

Sources: Google's "Using OAuth 2.0 to Access Google APIs" and "OAuth 2.0 for Server to
Server Applications"; Microsoft's "Authenticate an IMAP, POP or SMTP connection using
OAuth" (delegated ``SMTP.Send``, app-only ``.default`` with ``SMTP.SendAsApp``).
"""

from __future__ import annotations

import attrs

FLOWS = ("refresh_token", "client_credentials", "service_account")
PROVIDERS = ("google", "microsoft", "generic")
# Microsoft's tenants that name a kind of account rather than one organisation.
MICROSOFT_COMMON_TENANTS = ("common", "organizations", "consumers")


@attrs.frozen
class Endpoints:
    token_url: str | None
    authorize_url: str | None
    device_url: str | None
    scope: str | None


GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_SCOPE = "https://mail.google.com/"
MICROSOFT_LOGIN = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0"
MICROSOFT_DELEGATED_SCOPE = "https://outlook.office.com/SMTP.Send offline_access"
MICROSOFT_APP_SCOPE = "https://outlook.office365.com/.default"


def defaults(provider: str, flow: str, tenant: str | None) -> Endpoints:
    """What a section of this provider and flow uses where it sets nothing itself."""
    if provider == "google":
        # Google's device flow does not allow the Gmail scope: no device_url.
        return Endpoints(
            GOOGLE_TOKEN_URL, "https://accounts.google.com/o/oauth2/v2/auth", None, GOOGLE_SCOPE
        )
    if provider == "microsoft":
        base = MICROSOFT_LOGIN.format(tenant=tenant or "common")
        scope = MICROSOFT_APP_SCOPE if flow == "client_credentials" else MICROSOFT_DELEGATED_SCOPE
        return Endpoints(f"{base}/token", f"{base}/authorize", f"{base}/devicecode", scope)
    return Endpoints(None, None, None, None)


def flows_of(provider: str) -> tuple[str, ...]:
    """The flows a provider offers for SMTP."""
    if provider == "google":
        return ("refresh_token", "service_account")
    if provider == "microsoft":
        return ("refresh_token", "client_credentials")
    return ("refresh_token", "client_credentials")
