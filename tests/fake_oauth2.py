"""A token endpoint shaped like Google's and Microsoft's, for tests.

``answer(form)`` is the endpoint: a form-encoded POST in, (status, JSON body) out, with the
status codes and error bodies the providers document (400 ``invalid_grant``, 401
``invalid_client``, 200 with ``access_token``, ``expires_in``, ``token_type`` and, when
rotating, a new ``refresh_token``). ``listen()`` serves it over HTTP on 127.0.0.1 with
twisted.web (POST /token, POST /devicecode); ``post`` hands it to a TokenSource in memory.
Its clock decides when tokens expire, so tests drive it with task.Clock.

``valid(user, token)`` is what an SMTP server's XOAUTH2 check asks (thread-safe: aiosmtpd
runs in a thread of its own).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, succeed
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

GOOGLE_INVALID_GRANT = "Token has been expired or revoked."
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"


class TokenServer:
    def __init__(self, clock: Any, lifetime: float = 3600, rotate: bool = False) -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.rotate = rotate
        self.lock = threading.Lock()
        self.clients: dict[str, str | None] = {"client-1": "client-secret-1"}
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> the user it is for
        self.access_tokens: dict[str, tuple[str, float]] = {}  # token -> (user, expires at)
        self.codes: dict[str, tuple[str, str, str]] = {}  # code -> (user, challenge, redirect)
        self.device_codes: dict[str, str | None] = {}  # device code -> user once approved
        self.public_keys: dict[str, Any] = {}  # service account email -> RSA public key
        self.token_url = "http://127.0.0.1/token"
        self.requests: list[dict[str, str]] = []
        self.times: list[float] = []  # when each request came, by the server's clock
        self.issued = 0
        self.posts = 0  # requests that reached the endpoint over HTTP
        self.every_access_token: list[str] = []  # for tests that grep for leaks
        self.stall = False
        self.broken: tuple[int, bytes] | None = None  # e.g. (503, b"<html>...")
        self.stalled: list[Deferred[tuple[int, bytes]]] = []
        self.unstall = threading.Event()
        self._serial = itertools.count(1)
        self._port: Any = None

    # --- what tests set up ---

    def grant(self, user: str) -> str:
        """A refresh token for ``user``, as a consent screen would give."""
        token = f"1//refresh-{next(self._serial)}-{user}"
        with self.lock:
            self.refresh_tokens[token] = user
        return token

    def revoke_refresh(self, token: str) -> None:
        with self.lock:
            self.refresh_tokens.pop(token, None)

    def revoke_access(self) -> None:
        """Every access token stops working before its expiry (a password change)."""
        with self.lock:
            self.access_tokens.clear()

    def valid(self, user: str, token: str) -> bool:
        with self.lock:
            found = self.access_tokens.get(token)
            return found is not None and found[0] == user and self.clock.seconds() < found[1]

    def grants_of(self, kind: str) -> int:
        return sum(1 for form in self.requests if form.get("grant_type") == kind)

    # --- the endpoint ---

    def _error(self, status: int, error: str, description: str) -> tuple[int, bytes]:
        return status, json.dumps({"error": error, "error_description": description}).encode()

    def _issue(self, user: str, refresh: str | None = None) -> tuple[int, bytes]:
        token = f"ya29.access-{next(self._serial)}"
        with self.lock:
            self.access_tokens[token] = (user, self.clock.seconds() + self.lifetime)
            self.every_access_token.append(token)
        self.issued += 1
        body: dict[str, Any] = {
            "access_token": token,
            "expires_in": int(self.lifetime),
            "token_type": "Bearer",
            "scope": "https://mail.google.com/",
        }
        if refresh is not None:
            body["refresh_token"] = refresh
        return 200, json.dumps(body).encode()

    def _client_ok(self, form: dict[str, str]) -> bool:
        client = form.get("client_id")
        if client not in self.clients:
            return False
        secret = self.clients[client]
        return secret is None or form.get("client_secret") == secret

    def answer(self, form: dict[str, str]) -> tuple[int, bytes]:
        self.times.append(self.clock.seconds())
        self.requests.append(form)
        if self.broken is not None:
            return self.broken
        kind = form.get("grant_type")
        if kind == JWT_BEARER:
            return self._service_account(form.get("assertion", ""))
        if not self._client_ok(form):
            return self._error(401, "invalid_client", "The OAuth client was not found.")
        if kind == "refresh_token":
            with self.lock:
                user = self.refresh_tokens.get(form.get("refresh_token", ""))
                if user is None:
                    return self._error(400, "invalid_grant", GOOGLE_INVALID_GRANT)
                rotated = None
                if self.rotate:
                    del self.refresh_tokens[form["refresh_token"]]
                    rotated = f"1//refresh-{next(self._serial)}-{user}"
                    self.refresh_tokens[rotated] = user
            return self._issue(user, rotated)
        if kind == "client_credentials":
            if form.get("scope") != "https://outlook.office365.com/.default":
                return self._error(
                    400, "invalid_scope", "AADSTS70011: The provided scope is not valid."
                )
            return self._issue(form["client_id"])
        if kind == "authorization_code":
            found = self.codes.pop(form.get("code", ""), None)
            if found is None or found[2] != form.get("redirect_uri"):
                return self._error(400, "invalid_grant", "Malformed auth code.")
            verifier = form.get("code_verifier", "")
            digest = hashlib.sha256(verifier.encode()).digest()
            if base64.urlsafe_b64encode(digest).rstrip(b"=").decode() != found[1]:
                return self._error(400, "invalid_grant", "Invalid code verifier.")
            return self._issue(found[0], self.grant(found[0]))
        if kind == DEVICE_CODE:
            code = form.get("device_code", "")
            if code not in self.device_codes:
                return self._error(400, "expired_token", "The device code has expired.")
            user = self.device_codes[code]
            if user is None:
                return self._error(400, "authorization_pending", "The user has not yet approved.")
            del self.device_codes[code]
            return self._issue(user, self.grant(user))
        return self._error(400, "unsupported_grant_type", f"grant_type {kind!r}")

    def _service_account(self, assertion: str) -> tuple[int, bytes]:
        import jwt

        try:
            unverified = jwt.decode(assertion, options={"verify_signature": False})
            key = self.public_keys[unverified["iss"]]
            # Expiry by this server's clock (a task.Clock in tests), not the machine's.
            claims = jwt.decode(
                assertion,
                key,
                algorithms=["RS256"],
                audience=self.token_url,
                options={"verify_exp": False, "verify_iat": False},
            )
        except Exception as error:
            return self._error(400, "invalid_grant", f"Invalid JWT Signature. ({error})")
        if not claims["iat"] <= self.clock.seconds() < claims["exp"]:
            return self._error(
                400, "invalid_grant", "Invalid JWT: Token must be a short-lived token"
            )
        if claims.get("scope") != "https://mail.google.com/" or not claims.get("sub"):
            return self._error(
                400, "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        return self._issue(str(claims["sub"]))

    def device_start(self, form: dict[str, str]) -> tuple[int, bytes]:
        """Microsoft's /devicecode."""
        if form.get("client_id") not in self.clients:
            return self._error(400, "invalid_client", "AADSTS700016: Application not found.")
        code = f"device-{next(self._serial)}"
        self.device_codes[code] = None
        body = {
            "device_code": code,
            "user_code": "ABCD-EFGH",
            "verification_uri": "https://microsoft.com/devicelogin",
            "expires_in": 900,
            "interval": 1,
            "message": "To sign in, use a web browser to open the page "
            "https://microsoft.com/devicelogin and enter the code ABCD-EFGH to authenticate.",
        }
        return 200, json.dumps(body).encode()

    def approve_device(self, user: str) -> None:
        for code, approved in self.device_codes.items():
            if approved is None:
                self.device_codes[code] = user

    # --- in memory, and over HTTP ---

    def post(self, url: str, fields: dict[str, str], timeout: float) -> Deferred[tuple[int, bytes]]:
        """The Poster a TokenSource takes, without the network."""
        if self.stall:
            self.requests.append(dict(fields))
            waiting: Deferred[tuple[int, bytes]] = Deferred()
            self.stalled.append(waiting)
            return waiting
        return succeed(self.answer(dict(fields)))

    def listen(self, reactor: Any) -> str:
        root = Resource()
        root.putChild(b"token", _Endpoint(self, self.answer))
        root.putChild(b"devicecode", _Endpoint(self, self.device_start))
        site = Site(root)
        site.noisy = False
        site.displayTracebacks = False
        self._port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.token_url = f"http://127.0.0.1:{self._port.getHost().port}/token"
        return self.token_url

    def close(self) -> Any:
        for waiting in self.stalled:
            if not waiting.called:
                waiting.callback((503, b""))
        return self._port.stopListening() if self._port is not None else None


class _Endpoint(Resource):
    isLeaf = True

    def __init__(self, tokens: TokenServer, handle: Any) -> None:
        super().__init__()
        self.tokens = tokens
        self.handle = handle

    def render_POST(self, request: Any) -> Any:
        kind = request.getHeader(b"content-type") or b""
        if not kind.startswith(b"application/x-www-form-urlencoded"):
            request.setResponseCode(400)
            return json.dumps(
                {"error": "invalid_request", "error_description": "not a form"}
            ).encode()
        body = request.content.read().decode()
        form = {key: values[0] for key, values in parse_qs(body).items()}
        if self.tokens.stall:
            return NOT_DONE_YET  # never answered
        status, answer = self.handle(form)
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return answer


class WallClock:
    def seconds(self) -> float:
        import time

        return time.time()


class ThreadedTokenEndpoint:
    """The same endpoint over HTTP from a thread of its own, for tests whose other side is
    a real process (twistd, the CLI) while the test thread waits on conditions."""

    def __init__(self, server: TokenServer) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        tokens = server

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length).decode()
                form = {key: values[0] for key, values in parse_qs(body).items()}
                route = {"/token": tokens.answer, "/devicecode": tokens.device_start}
                handle = route.get(self.path)
                if handle is None:
                    status, answer = 404, b'{"error": "not_found"}'
                elif tokens.stall:
                    tokens.unstall.wait(60)  # unanswered: the client's deadline must end it
                    return
                else:
                    with tokens.lock:
                        tokens.posts += 1
                    status, answer = handle(form)
                self.send_response(status)
                self.send_header("content-type", "application/json; charset=utf-8")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reads the server's own records, not a request log

        self.server = server
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.thread = threading.Thread(target=self.http.serve_forever, daemon=True)
        port = self.http.server_address[1]
        self.base = f"http://127.0.0.1:{port}"
        server.token_url = f"{self.base}/token"

    def start(self) -> str:
        self.thread.start()
        return self.server.token_url

    def stop(self) -> None:
        self.server.unstall.set()
        self.http.shutdown()
        self.http.server_close()
