"""Mailgun's ``POST /v3/{domain}/messages.mime`` as Mailgun documents it, in memory: HTTP
Basic auth as ``api``, 200 ``{"id", "message"}``, 400 ``{"message"}``, 401 ``Forbidden``;
``o:testmode`` accepted and delivered to nobody; ``GET /v4/domains/{domain}``. It
parses the multipart form it gets and keeps what it accepted."""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

from twisted.internet.defer import Deferred, succeed

from smtpmailer.httpclient import Request, Response

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"


class FakeMailgun:
    def __init__(self, domain: str = "mg.example.com") -> None:
        self.domain = domain
        self.key = KEY
        self.accepted: list[dict[str, Any]] = []
        self.next: list[tuple[int, dict[str, str], bytes]] = []
        self._ids = itertools.count(1)
        self.state = "active"  # GET /v4/domains/{domain}: active or unverified
        self.test_mode: list[dict[str, Any]] = []

    def answer(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"api:{self.key}".encode()).decode()
        if request.method == "GET" and "/v4/domains/" in request.url:
            if request.headers.get("Authorization") != expected:
                return Response(401, {"content-type": "text/plain"}, b"Forbidden")
            if not request.url.endswith(f"/v4/domains/{self.domain}"):
                return Response(404, {}, json.dumps({"message": "Domain not found"}).encode())
            domain = {"name": self.domain, "state": self.state, "type": "custom"}
            return Response(200, {}, json.dumps({"domain": domain}).encode())
        path = request.url.rsplit(f"/v3/{self.domain}/", 1)[-1]
        if path not in ("messages.mime", "messages"):
            return Response(404, {}, json.dumps({"message": "Domain not found"}).encode())
        if request.headers.get("Authorization") != expected:
            return Response(401, {"content-type": "text/plain"}, b"Forbidden")
        if path == "messages":  # fields (here: a stored template with t:variables)
            fields = self.form(request)
            if not fields.get("from") or not fields.get("to") or not fields.get("template"):
                body = {"message": "Need at least one of 'text', 'html' or 'template' parameters"}
                return Response(400, {}, json.dumps(body).encode())
            self.accepted.append(fields)
            answer = {"id": f"<2026{len(self.accepted)}.1@{self.domain}>", "message": "Queued"}
            return Response(200, {}, json.dumps(answer).encode())
        if self.next:
            status, headers, body = self.next.pop(0)
            return Response(status, headers, body)
        fields = self.form(request)
        if not fields.get("to") or not fields.get("message"):
            return Response(400, {}, json.dumps({"message": "to parameter is missing"}).encode())
        if fields.get("o:testmode") == ["yes"]:
            self.test_mode.append(fields)  # accepted, delivered to nobody
        else:
            self.accepted.append(fields)
        number = next(self._ids)
        body = {"id": f"<2026{number}.1@{self.domain}>", "message": "Queued. Thank you."}
        return Response(200, {"content-type": "application/json"}, json.dumps(body).encode())

    @staticmethod
    def form(request: Request) -> dict[str, list[Any]]:
        """multipart/form-data taken apart by hand, so the file comes out byte for byte."""
        boundary = request.headers["Content-Type"].split("boundary=", 1)[1].encode()
        fields: dict[str, list[Any]] = {}
        for chunk in request.body.split(b"--" + boundary)[1:]:
            if chunk.startswith(b"--"):
                break
            head, _, content = chunk[2:].partition(b"\r\n\r\n")
            content = content[:-2]  # the CRLF before the next boundary
            name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
            value: Any = content if name == "message" else content.decode()
            fields.setdefault(name, []).append(value)
        return fields

    def __call__(self, request: Request, timeout: float) -> Deferred[Response]:
        return succeed(self.answer(request))
