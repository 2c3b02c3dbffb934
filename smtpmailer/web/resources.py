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
from smtpmailer.web.dashboard import render_dashboard, render_live

if TYPE_CHECKING:
    from smtpmailer.web.service import StatusService

Response = tuple[int, bytes, bytes]
JSON = b"application/json"
HTML = b"text/html; charset=utf-8"
PAGE_LIMIT = 500
SEARCH_PAGE = 50
COOKIE = b"smtpmailer_token"
ACTIONS = ("retry", "hold", "release", "delete")


def redirect(request: Request, to: str) -> Response:
    request.setHeader(b"location", to.encode())
    return 303, b"", HTML


def sign_in_page(problem: str = "") -> str:
    said = f"<p><strong>{html.escape(problem)}</strong></p>" if problem else ""
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>smtpmailer: sign in</title></head><body><h1>smtpmailer</h1>"
        f"{said}<p>This dashboard needs the token ([Status] token_file).</p>"
        '<form method="post" action="/login"><input type="password" name="token" '
        'autocomplete="current-password"> <button type="submit">Sign in</button></form>'
        "</body></html>\n"
    )


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
    # A page for people: without the token it offers a sign-in form, not a JSON 401.
    page = False

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
            if self.page:
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                return sign_in_page().encode()
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
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip(), token):
            return True
        cookie = (request.getCookie(COOKIE) or b"").decode("latin-1")
        return bool(cookie) and hmac.compare_digest(cookie, token)


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
    page = True

    async def respond(self, request: Request) -> Response:
        if request.postpath not in ([], [b""]):
            return json_response(404, {"error": "no such resource"})
        view = await self.status.dashboard_view()
        if request.args.get(b"part") == [b"live"]:  # the page updates itself from this
            return 200, render_live(view).encode(), HTML
        return 200, render_dashboard(view).encode(), HTML


class SignIn(AsyncResource):
    """``POST /login`` with the token: a cookie (HttpOnly, SameSite=Strict) so that a
    browser can open the dashboard where a token is required."""

    methods = ("POST",)

    def render_POST(self, request: Request) -> Any:
        return self._render(request)

    async def respond(self, request: Request) -> Response:
        token = self.status.config.status.token
        given = (request.args.get(b"token") or [b""])[0].decode("utf-8", "replace").strip()
        if token is None or not hmac.compare_digest(given, token):
            return 401, sign_in_page("That is not the token.").encode(), HTML
        request.addCookie(COOKIE, token, path="/", httpOnly=True, sameSite="strict")
        return redirect(request, "/")


class Search(AsyncResource):
    """``/search?q=TEXT[&after=CREATED:ID]``: the dashboard's search, newest first."""

    page = True

    async def respond(self, request: Request) -> Response:
        from smtpmailer.web.search_page import render_search_page

        query = (request.args.get(b"q") or [b""])[0].decode("utf-8", "replace")[:500]
        after = (request.args.get(b"after") or [b""])[0].decode("utf-8", "replace")
        before = None
        if after:
            created, _, message_id = after.partition(":")
            try:
                before = (float(created), message_id)
            except ValueError:
                return 400, b"<p>after: not a page of this search</p>\n", HTML
        found = await self.status.queue.search(query, SEARCH_PAGE, before)
        next_page = f"{found[-1].created!r}:{found[-1].id}" if len(found) == SEARCH_PAGE else None
        return 200, render_search_page(query, found, next_page).encode(), HTML


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
        if path == b"search":
            return Search(self.status, guarded=True)
        if path == b"login":
            return SignIn(self.status, guarded=False)
        if path == b"":
            return Dashboard(self.status, guarded=True)
        return _NotFound(self.status, guarded=False)

    def render(self, request: Request) -> Any:
        return render_method(self, request)

    def render_GET(self, request: Request) -> Any:
        return Dashboard(self.status, guarded=True).render_GET(request)


class MessagePage(AsyncResource):
    """``/messages/ID``: one message as a page of the dashboard; ``POST
    /messages/ID/ACTION`` (retry, hold, release, delete) from its buttons, each carrying a
    token made for that action on that message (a CSRF guard), from this same origin."""

    page = True
    methods = ("GET", "POST")

    def render_POST(self, request: Request) -> Any:
        return self._render(request)

    async def act(self, request: Request, message_id: str, action: str) -> Response:
        from smtpmailer.queue import QueueError

        given = (request.args.get(b"csrf") or [b""])[0].decode("ascii", "replace")
        if action not in ACTIONS or not hmac.compare_digest(
            given, self.status.action_token(action, message_id)
        ):
            return 403, b"<p>This form has expired: open the page again.</p>\n", HTML
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host") or b""
        if origin is not None and origin.split(b"://", 1)[-1] != host:
            return 403, b"<p>Not from this dashboard.</p>\n", HTML
        now = self.status.clock.seconds()
        try:
            await self.status.queue.act(action, message_id, now)
        except QueueError as error:
            return 409, f"<p>{html.escape(str(error))}</p>\n".encode(), HTML
        log.info("dashboard: {action} {id}", action=action, id=message_id)
        if action in ("retry", "release"):
            self.status.poller.wake()
        return redirect(request, "/" if action == "delete" else f"/messages/{message_id}")

    async def source(self, request: Request, message_id: str) -> Response:
        """The message as stored, to download (``/messages/ID/source``)."""
        from smtpmailer.queue import QueueError

        try:
            data = await self.status.queue.body(message_id)
        except NoSuchMessage as error:
            return 404, f"<p>{html.escape(str(error))}</p>\n".encode(), HTML
        except QueueError as error:  # sent: no longer kept
            return 410, f"<p>{html.escape(str(error))}</p>\n".encode(), HTML
        request.setHeader(
            b"content-disposition", f'attachment; filename="{message_id}.eml"'.encode()
        )
        return 200, data, b"message/rfc822"

    async def respond(self, request: Request) -> Response:
        from smtpmailer.queue import QueueError
        from smtpmailer.web.message_page import render_message_page

        path = [s.decode("utf-8", "replace") for s in request.postpath or [] if s]
        if request.method == b"POST":
            if len(path) != 2:
                return 404, b"<p>no such action</p>\n", HTML
            return await self.act(request, path[0], path[1])
        if len(path) == 2 and path[1] == "source":
            return await self.source(request, path[0])
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
        tokens = {action: self.status.action_token(action, info.id) for action in ACTIONS}
        page = render_message_page(info, self.status.clock.seconds(), head, tokens)
        return 200, page.encode(), b"text/html; charset=utf-8"


class _NotFound(AsyncResource):
    async def respond(self, request: Request) -> Response:
        return json_response(404, {"error": "no such resource"})


__all__ = ["Root"]
