"""A SendGrid v3 ``/v3/mail/send`` as SendGrid documents it, for tests: Bearer-key auth
(401 with its error body otherwise), 202 with ``X-Message-Id``, 400 with
``{"errors": [{"message", "field", "help"}]}``, 403 for a sender that is not a verified Sender
Identity, 429 with ``X-RateLimit-Reset``, 5xx; ``GET /v3/scopes``; a send with
``mail_settings.sandbox_mode`` checked and answered 200, delivered to nobody. It keeps every
body it accepted. ``__call__`` is the in-memory client a transport takes; ``listen``
serves the same over HTTP on 127.0.0.1 (tests/fake_http.py)."""

from __future__ import annotations

import itertools
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed

from smtpmailer.httpclient import Request, Response
from tests.fake_http import ServedOverHTTP

KEY = "SG.test-key.abcdefghijklmnop"


def _errors(*messages: tuple[str, str | None]) -> bytes:
    return json.dumps(
        {"errors": [{"message": m, "field": f, "help": None} for m, f in messages]}
    ).encode()


class FakeSendGrid:
    def __init__(self, clock: Any = None) -> None:
        self.clock = clock
        self.key = KEY
        self.accepted: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        # Answers to give before behaving normally: (status, headers, body).
        self.next: list[tuple[int, dict[str, str], bytes]] = []
        self._ids = itertools.count(1)
        self._served: ServedOverHTTP | None = None
        # What GET /v3/scopes lists; the verified senders (None: any sender will do).
        self.scopes = ["mail.send", "user.profile.read"]
        self.senders: set[str] | None = None
        self.sandboxed: list[dict[str, Any]] = []

    def answer(self, request: Request) -> Response:
        self.requests.append(request)
        path = request.url.split("://", 1)[-1].partition("/")[2]
        if (request.method, path) not in (("POST", "v3/mail/send"), ("GET", "v3/scopes")):
            return Response(404, {}, _errors(("Not found", None)))
        if request.headers.get("Authorization") != f"Bearer {self.key}":
            return Response(
                401,
                {"content-type": "application/json"},
                _errors(("The provided authorization grant is invalid, expired, or revoked", None)),
            )
        if path == "v3/scopes":
            return Response(200, {}, json.dumps({"scopes": self.scopes}).encode())
        if self.next:
            status, headers, body = self.next.pop(0)
            return Response(status, headers, body)
        try:
            body = json.loads(request.body)
            to = body["personalizations"][0]["to"]
            assert to and body["from"]["email"] and (body.get("content") or body.get("template_id"))
        except (ValueError, KeyError, IndexError, AssertionError, TypeError):
            return Response(400, {}, _errors(("Bad Request", None)))
        if self.senders is not None and body["from"]["email"] not in self.senders:
            return Response(
                403,
                {},
                _errors(
                    (
                        "The from address does not match a verified Sender Identity. Mail "
                        "cannot be sent until this error is resolved.",
                        "from",
                    )
                ),
            )
        if body.get("mail_settings", {}).get("sandbox_mode", {}).get("enable"):
            self.sandboxed.append(body)  # checked, delivered to nobody: 200, not 202
            return Response(200, {}, b"")
        self.accepted.append(body)
        return Response(202, {"x-message-id": f"sg-{next(self._ids)}"}, b"")

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        return succeed(self.answer(request))

    def listen(self, reactor: Any) -> str:
        self._served = ServedOverHTTP(self, reactor)
        return self._served.url

    def close(self) -> Any:
        return self._served.close() if self._served is not None else None
