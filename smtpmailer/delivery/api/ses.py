"""Amazon SES v2 ``POST /v2/email/outbound-emails``: the stored message as it is, as
``Content.Raw.Data``, to the envelope's recipients (``Destination``, so Bcc works), with the
queue id as an email tag. Signed with Signature Version 4 by botocore's own signer: AWS's
implementation, rather than a hand-made one (the canonical request, the Host with a port
that is not the default, the session token of temporary credentials).

Credentials: ``access_key_id`` with ``secret_access_key_file`` (or ``_env``), else the
standard AWS chain (environment, shared files, the instance's role) as botocore finds it.
The region picks the endpoint, ``https://email.REGION.amazonaws.com``.

Answers, as SES documents them: 200 ``{"MessageId"}``; 400 ``{"message"}`` with
``x-amzn-ErrorType`` (MessageRejected, MailFromDomainNotVerifiedException, ...); 403 (the
signature or the credentials); 429 (TooManyRequestsException: SES sends no reset time, so
``rate_limit`` is what keeps under its sending rate); 5xx.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from smtpmailer.config.sections import APIRelayConfig
from smtpmailer.delivery.api.probe import Probe, ProbeFailed, Skipped, Step, domain_of, json_of
from smtpmailer.httpclient import Request, Response, retry_after
from smtpmailer.message import provider_template_of
from smtpmailer.queue import Lease

__all__ = ["Uncarried", "build", "error_text", "message_id", "pause_until", "probes"]


class Uncarried(Exception):
    """A message that names a provider template: SES takes any MIME message as it is,
    but its own templates are not used here."""


def credentials(relay: APIRelayConfig) -> Any:
    from botocore.credentials import Credentials

    if relay.access_key_id:
        return Credentials(relay.access_key_id, relay.secret_access_key or "")
    import botocore.session

    found = botocore.session.get_session().get_credentials()
    if found is None:
        raise Uncarried("no AWS credentials: set access_key_id and secret_access_key_file")
    return found.get_frozen_credentials()


def build(lease: Lease, relay: APIRelayConfig) -> Request:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    named = provider_template_of(lease.data)
    if named is not None:
        raise Uncarried(
            f"SES relays send no provider templates: this message names template {named}; "
            "route it to a relay with templates"
        )

    body = json.dumps(
        {
            "FromEmailAddress": lease.sender or None,
            "Destination": {"ToAddresses": list(lease.recipients)},
            "Content": {"Raw": {"Data": base64.b64encode(lease.data).decode("ascii")}},
            "EmailTags": [{"Name": "smtpmailer_id", "Value": lease.id}],
        }
    ).encode()
    url = relay.endpoint + "/v2/email/outbound-emails"
    signing = AWSRequest("POST", url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(credentials(relay), "ses", relay.region or "us-east-1").add_auth(signing)
    return Request("POST", url, dict(signing.headers.items()), body)


def message_id(response: Response) -> str:
    try:
        return str(json.loads(response.body).get("MessageId", ""))
    except (ValueError, AttributeError):
        return ""


def error_text(response: Response) -> str:
    kind = response.headers.get("x-amzn-errortype", "").split(":")[0]
    try:
        text = str(json.loads(response.body).get("message", ""))
    except (ValueError, AttributeError):
        text = response.body[:200].decode("utf-8", "replace")
    return f"{kind}: {text}" if kind else text


# These APIs name no reset time of their own: a Retry-After is all there may be.
pause_until = retry_after


def probes(relay: APIRelayConfig, sender: str | None) -> list[Step]:
    """The account (``GetAccount``: sending enabled, production or sandbox, the 24-hour
    quota) and the sender's domain identity (``GetEmailIdentity``: verified for sending).
    Both are signed reads; nothing is sent."""

    def account(response: Response) -> str:
        data = json_of(response)
        if not data.get("SendingEnabled", False):
            raise ProbeFailed("sending is disabled for this account")
        quota = data.get("SendQuota", {})
        mode = "production" if data.get("ProductionAccessEnabled") else "sandbox"
        return (
            f"{mode}; sent {quota.get('SentLast24Hours', 0):g} of "
            f"{quota.get('Max24HourSend', 0):g} in 24 h, at most {quota.get('MaxSendRate', 0):g}/s"
        )

    steps: list[Step] = [
        Probe("account and quota", _signed_get(relay, "/v2/email/account"), account)
    ]
    if sender is None:
        steps.append(Skipped("identity", "give --from ADDRESS to check a sender"))
        return steps
    domain = domain_of(sender)

    def identity(response: Response) -> str:
        data = json_of(response)
        if not data.get("VerifiedForSendingStatus"):
            raise ProbeFailed(
                f"identity {data.get('IdentityName', domain)} is not verified for sending"
            )
        return f"{data.get('IdentityType', 'identity').lower()} verified for sending"

    def not_found(response: Response) -> str | None:
        if response.status == 404:
            raise ProbeFailed(f"{domain} is not an identity of this account in {relay.region}")
        return None

    steps.append(
        Probe("identity", _signed_get(relay, f"/v2/email/identities/{domain}"), identity, not_found)
    )
    return steps


def _signed_get(relay: APIRelayConfig, path: str) -> Request:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    url = relay.endpoint + path
    signing = AWSRequest("GET", url, data=b"")
    SigV4Auth(credentials(relay), "ses", relay.region or "us-east-1").add_auth(signing)
    return Request("GET", url, dict(signing.headers.items()), b"")
