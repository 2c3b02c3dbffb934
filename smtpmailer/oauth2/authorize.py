"""Getting the first refresh token: ``smtpmailer oauth2 authorize NAME``.

The authorization code flow with PKCE (RFC 7636) and a loopback redirect on 127.0.0.1
(RFC 8252 section 7.3): we print the URL to open, the browser comes back to our one-shot
listener with a code, and the code becomes tokens. Over SSH, forward the port (``--port``)
or use ``--device``: the device authorization grant (RFC 8628), where the provider has one
(Microsoft; Google does not allow the Gmail scope there).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import attrs
from twisted.internet.defer import Deferred

from smtpmailer.config.sections import OAuth2Config
from smtpmailer.oauth2 import grants
from smtpmailer.oauth2.endpoint import Poster


class AuthorizeError(Exception):
    """The authorization did not complete; the message says why, in one line."""


@attrs.frozen
class PKCE:
    verifier: str = attrs.field(repr=False)
    challenge: str
    state: str = attrs.field(repr=False)


def new_pkce() -> PKCE:
    verifier = secrets.token_urlsafe(64)  # 86 characters, within RFC 7636's 43..128
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    return PKCE(verifier, challenge, secrets.token_urlsafe(24))


def authorization_url(
    config: OAuth2Config, redirect_uri: str, pkce: PKCE, login_hint: str | None
) -> str:
    if not config.authorize_url:
        raise AuthorizeError(f"[OAuth2:{config.name}] needs authorize_url for oauth2 authorize")
    query = {
        "client_id": config.client_id or "",
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "scope": config.scope or "",
        "state": pkce.state,
        "code_challenge": pkce.challenge,
        "code_challenge_method": "S256",
    }
    if config.provider == "google":
        # Without these Google gives no refresh token when the app was authorized before.
        query.update(access_type="offline", prompt="consent")
    if login_hint:
        query["login_hint"] = login_hint
    separator = "&" if "?" in config.authorize_url else "?"
    return config.authorize_url + separator + urlencode(query)


def code_from_redirect(path: str, state: str) -> str:
    """The code in the redirect's query, once its state is ours; else AuthorizeError."""
    query = parse_qs(urlsplit(path).query)
    if "error" in query:
        described = query.get("error_description", [""])[0]
        raise AuthorizeError(
            f"the provider refused: {query['error'][0]}" + (f": {described}" if described else "")
        )
    if query.get("state", [""])[0] != state:
        raise AuthorizeError("the redirect's state does not match: not the request we made")
    code = query.get("code", [""])[0]
    if not code:
        raise AuthorizeError("the redirect carries no code")
    return code


def refresh_token_of(grant: grants.TokenGrant, config: OAuth2Config) -> str:
    if not grant.refresh_token:
        hint = (
            "; remove the app's access in the Google account and authorize again"
            if config.provider == "google"
            else "; the scope must include offline_access"
        )
        raise AuthorizeError("the provider gave no refresh token" + hint)
    return grant.refresh_token


class RedirectListener:
    """The one-shot loopback listener the browser is sent back to."""

    PAGE = b"<!doctype html><title>smtpmailer</title><p>smtpmailer: %s. You can close this tab.</p>"

    def __init__(self, reactor: Any, state: str, port: int = 0) -> None:
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        self.result: Deferred[str] = Deferred()
        listener = self

        class Redirect(Resource):
            isLeaf = True

            def render_GET(self, request: Any) -> bytes:
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                if listener.result.called:
                    return listener.PAGE % b"already done"
                try:
                    code = code_from_redirect(request.uri.decode("ascii", "replace"), state)
                except AuthorizeError as error:
                    if "state does not match" in str(error):
                        request.setResponseCode(400)
                        return listener.PAGE % b"this is not the request smtpmailer made"
                    listener.result.errback(error)
                    return listener.PAGE % b"authorization refused"
                listener.result.callback(code)
                return listener.PAGE % b"authorized"

        site = Site(Redirect())
        site.noisy = False
        site.displayTracebacks = False
        self._port = reactor.listenTCP(port, site, interface="127.0.0.1")
        self.port: int = self._port.getHost().port

    @property
    def redirect_uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def close(self) -> Any:
        return self._port.stopListening()


async def exchange_code(
    config: OAuth2Config, post: Poster, code: str, redirect_uri: str, pkce: PKCE
) -> str:
    assert config.token_url is not None
    fields = grants.code_request(config, code, redirect_uri, pkce.verifier)
    try:
        status, body = await post(config.token_url, fields, config.timeout)
        return refresh_token_of(grants.read_answer(status, body), config)
    except grants.TokenEndpointError as error:
        raise AuthorizeError(f"the token endpoint refused the code: {error}") from None


async def device_flow(
    config: OAuth2Config,
    post: Poster,
    say: Callable[[str], None],
    wait: Callable[[float], Deferred[None]],
) -> str:
    """RFC 8628: show the user code, then ask the token endpoint every ``interval``."""
    if not config.device_url:
        raise AuthorizeError(
            f"{config.provider} has no device flow for this scope: run oauth2 authorize "
            "without --device (with --port to forward over SSH)"
        )
    assert config.token_url is not None
    start = {"client_id": config.client_id or "", "scope": config.scope or ""}
    try:
        status, body = await post(config.device_url, start, config.timeout)
    except grants.TokenEndpointError as error:
        raise AuthorizeError(f"device authorization: {error}") from None
    try:
        answer = json.loads(body)
        device_code = str(answer["device_code"])
        user_code = str(answer["user_code"])
        where = str(answer.get("verification_uri") or answer["verification_url"])
        interval = float(answer.get("interval", 5))
        lifetime = float(answer.get("expires_in", 900))
    except (ValueError, KeyError, TypeError):
        try:
            grants.read_answer(status, body)
        except grants.TokenEndpointError as error:
            raise AuthorizeError(f"device authorization: {error}") from None
        raise AuthorizeError("device authorization: not a device code answer") from None
    say(f"Open {where} and enter the code {user_code}")
    say("Waiting for you to sign in ...")
    waited = 0.0
    while waited < lifetime:
        await wait(interval)
        waited += interval
        try:
            status, body = await post(
                config.token_url, grants.device_request(config, device_code), config.timeout
            )
            return refresh_token_of(grants.read_answer(status, body), config)
        except grants.TokenEndpointError as error:
            if error.error == "authorization_pending":
                continue
            if error.error == "slow_down":
                interval += 5
                continue
            raise AuthorizeError(f"device authorization: {error}") from None
    raise AuthorizeError("device authorization: the code expired before it was used")
