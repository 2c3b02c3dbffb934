"""The status service's HTTP resources: /health, /metrics, /v1/queue, /v1/queue/ID, / (the
dashboard) and /messages/ID (its page for one message)."""

from __future__ import annotations

import hmac
import html
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from smtpmailer.logs import log
from smtpmailer.queue import STATES, NoSuchMessage
from smtpmailer.web.dashboard import render_dashboard

if TYPE_CHECKING:
    from smtpmailer.web.service import StatusService

Response = tuple[int, bytes, bytes]
JSON = b"application/json"
PAGE_LIMIT = 500


def json_response(code: int, body: object) -> Response:
    return code, json.dumps(body, indent=2, sort_keys=True).encode() + b"\n", JSON


def render_method(resource: Resource, request: Request) -> Any:
    """Dispatch on the method; one we do not serve gets 405, an Allow header and JSON
    (Twisted answers 501 for anything outside GET, HEAD and POST)."""
    method = (request.method or b"GET").decode("ascii", "replace")
    methods = getattr(resource, "methods", ("GET",))
    served = {m: getattr(resource, f"render_{m}") for m in methods}
    if "GET" in served:
        served["HEAD"] = served["GET"]  # twisted.web drops the body of a HEAD
    handler = served.get(method)
    if handler is None:
        allowed = ", ".join(m for m in ("GET", "HEAD", "POST") if m in served)
        request.setResponseCode(405)
        request.setHeader(b"allow", allowed.encode())
        request.setHeader(b"content-type", JSON)
        return b'{"error": "method not allowed"}\n'
    return handler(request)


class AsyncResource(Resource):
    """Runs an ``async`` handler and writes what it returns; never leaves a request hanging."""

    isLeaf = True
    methods: tuple[str, ...] = ("GET",)

    def render(self, request: Request) -> Any:
        return render_method(self, request)

    def __init__(self, status: StatusService, guarded: bool) -> None:
        super().__init__()
        self.status = status
        self.guarded = guarded

    async def respond(self, request: Request) -> Response:
        raise NotImplementedError

    def render_GET(self, request: Request) -> Any:
        return self._render(request)

    def _render(self, request: Request) -> Any:
        if self.guarded and not self._authorized(request):
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Bearer realm="smtpmailer"')
            request.setHeader(b"content-type", JSON)
            return b'{"error": "a bearer token is required"}\n'
        finished = [False]
        request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

        def write(result: Response) -> None:
            if finished[0]:
                return  # the client went away
            code, body, content_type = result
            request.setResponseCode(code)
            request.setHeader(b"content-type", content_type)
            request.setHeader(b"cache-control", b"no-store")
            request.write(body)
            request.finish()

        def crashed(failure: Failure) -> Response:
            log.failure("status request {uri} failed", failure=failure, uri=request.uri)
            return json_response(500, {"error": "internal error; see the daemon's log"})

        Deferred.fromCoroutine(self.respond(request)).addErrback(crashed).addCallback(write)
        return NOT_DONE_YET

    def _authorized(self, request: Request) -> bool:
        token = self.status.config.status.token
        if token is None:
            return True
        given = request.getHeader(b"authorization") or b""
        scheme, _, value = given.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token)


class Health(AsyncResource):
    async def respond(self, request: Request) -> Response:
        report = await self.status.health()
        return json_response(200 if report["status"] == "ok" else 503, report)


class Metrics(AsyncResource):
    async def respond(self, request: Request) -> Response:
        await self.status.refresh_metrics()
        return 200, generate_latest(self.status.metrics.registry), CONTENT_TYPE_LATEST.encode()


class Queue(AsyncResource):
    """``/v1/queue?state=&limit=&after=`` pages oldest first; ``/v1/queue/ID`` is one message."""

    async def respond(self, request: Request) -> Response:
        path = [s.decode("utf-8", "replace") for s in request.postpath or [] if s]
        queue = self.status.queue
        now = self.status.clock.seconds()
        if len(path) == 1:
            try:
                info = await queue.show(path[0])
            except NoSuchMessage as error:
                return json_response(404, {"error": str(error)})
            return json_response(200, info.as_json(now, with_history=True))
        if path:
            return json_response(404, {"error": "no such resource"})

        def argument(name: str) -> str | None:
            values = request.args.get(name.encode())
            if values and len(values) > 1:
                raise ValueError(f"give {name} once")
            return values[0].decode("utf-8", "replace") if values else None

        try:
            state, limit_text, cursor = argument("state"), argument("limit"), argument("after")
        except ValueError as error:
            return json_response(400, {"error": str(error)})
        if state is not None and state not in STATES:
            return json_response(400, {"error": f"state must be one of {', '.join(STATES)}"})
        try:
            limit = int(limit_text) if limit_text is not None else 50
        except ValueError:
            limit = 0
        if not 1 <= limit <= PAGE_LIMIT:
            return json_response(400, {"error": f"limit must be a number from 1 to {PAGE_LIMIT}"})
        after = None
        if cursor:
            created, _, message_id = cursor.partition(",")
            try:
                after = (float(created), message_id)
            except ValueError:
                return json_response(400, {"error": "after is the 'next' value of a previous page"})
        messages = await queue.page(state, limit, after)
        counts = await queue.counts()
        last = messages[-1] if len(messages) == limit else None
        return json_response(
            200,
            {
                "counts": {s: counts.get(s, 0) for s in STATES},
                "messages": [m.as_json(now) for m in messages],
                "next": f"{last.created!r},{last.id}" if last else None,
            },
        )


class Messages(AsyncResource):
    """``POST /v1/messages``: only with a token configured (it takes mail from anyone who
    can reach it)."""

    methods = ("POST",)

    def render_POST(self, request: Request) -> Any:
        return self._render(request)

    async def respond(self, request: Request) -> Response:
        if self.status.config.status.token is None:
            return json_response(
                403, {"error": "HTTP submission needs a bearer token: set [Status] token_file"}
            )
        if request.postpath not in ([], [b""]):
            return json_response(404, {"error": "no such resource"})
        from smtpmailer.intake.http import submit

        code, body = await submit(self.status, request)
        return json_response(code, body)


class Dashboard(AsyncResource):
    async def respond(self, request: Request) -> Response:
        if request.postpath not in ([], [b""]):
            return json_response(404, {"error": "no such resource"})
        view = await self.status.dashboard_view()
        return 200, render_dashboard(view).encode(), b"text/html; charset=utf-8"


class Root(Resource):
    """Routes by the first path segment; everything under /v1 and / may need the token."""

    def __init__(self, status: StatusService) -> None:
        super().__init__()
        self.children_by_name: dict[bytes, Callable[[], Resource]] = {
            b"health": lambda: Health(status, guarded=False),
            b"metrics": lambda: Metrics(status, guarded=False),
        }
        self.status = status

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path in self.children_by_name:
            return self.children_by_name[path]()
        if path == b"v1":
            rest = request.postpath or []
            if rest[:1] == [b"queue"]:
                rest.pop(0)
                return Queue(self.status, guarded=True)
            if rest[:1] == [b"messages"]:
                rest.pop(0)
                return Messages(self.status, guarded=True)
            return _NotFound(self.status, guarded=True)
        if path == b"messages":
            return MessagePage(self.status, guarded=True)
        if path == b"":
            return Dashboard(self.status, guarded=True)
        return _NotFound(self.status, guarded=False)

    def render(self, request: Request) -> Any:
        return render_method(self, request)

    def render_GET(self, request: Request) -> Any:
        return Dashboard(self.status, guarded=True).render_GET(request)


class MessagePage(AsyncResource):
    """``/messages/ID``: one message as a page of the dashboard."""

    async def respond(self, request: Request) -> Response:
        from smtpmailer.queue import QueueError
        from smtpmailer.web.message_page import render_message_page

        path = [s.decode("utf-8", "replace") for s in request.postpath or [] if s]
        if len(path) != 1:
            return 404, b"<p>no such page</p>\n", b"text/html; charset=utf-8"
        try:
            info = await self.status.queue.show(path[0])
        except NoSuchMessage as error:
            body = f"<p>{html.escape(str(error))}</p>\n".encode()
            return 404, body, b"text/html; charset=utf-8"
        try:
            data = await self.status.queue.body(path[0])
            head: str | None = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        except QueueError:  # sent: the content is no longer kept
            head = None
        page = render_message_page(info, self.status.clock.seconds(), head)
        return 200, page.encode(), b"text/html; charset=utf-8"


class _NotFound(AsyncResource):
    async def respond(self, request: Request) -> Response:
        return json_response(404, {"error": "no such resource"})


__all__ = ["Root"]
