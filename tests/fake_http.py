"""Any in-memory provider fake served over real HTTP on 127.0.0.1 (twisted.web), so the same
fake answers a transport in memory and a daemon over loopback. It counts the connections
made and lost, for tests of the client's connection pool."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.protocols.policies import WrappingFactory
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from smtpmailer.httpclient import Request, Response

Handler = Callable[[Request, float], "Deferred[Response]"]


class _Headers(dict[str, str]):
    """Header names as HTTP has them: in any case (twisted.web hands them capitalised)."""

    def get(self, name: str, default: Any = None) -> Any:
        lower = name.lower()
        return next((v for k, v in self.items() if k.lower() == lower), default)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return str(value)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


class _Counting(WrappingFactory):
    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.made = 0
        self.lost = 0

    def registerProtocol(self, p: Any) -> None:  # noqa: N802 (Twisted's name)
        self.made += 1
        super().registerProtocol(p)

    def unregisterProtocol(self, p: Any) -> None:  # noqa: N802
        self.lost += 1
        super().unregisterProtocol(p)


class _Everything(Resource):
    isLeaf = True

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._handler = handler

    def render(self, request: Any) -> Any:
        headers = _Headers(
            (key.decode("latin-1"), values[-1].decode("latin-1"))
            for key, values in request.requestHeaders.getAllRawHeaders()
        )
        host = headers.get("Host", "127.0.0.1")
        asked = Request(
            request.method.decode(),
            f"http://{host}{request.uri.decode()}",
            headers,
            request.content.read(),
        )

        def answer(response: Response) -> None:
            request.setResponseCode(response.status)
            for name, value in response.headers.items():
                request.setHeader(name, value)
            request.write(response.body)
            request.finish()

        self._handler(asked, 30.0).addCallback(answer)
        return NOT_DONE_YET


class ServedOverHTTP:
    """``url`` is the base URL an ``endpoint =`` takes; ``close()`` stops listening."""

    def __init__(self, handler: Handler, reactor: Any, tls: Any = None) -> None:
        """``tls``: the server's TLS options (an https:// URL then)."""
        site = Site(_Everything(handler))
        site.noisy = False
        self.connections = _Counting(site)
        if tls is None:
            self._port = reactor.listenTCP(0, self.connections, interface="127.0.0.1")
        else:
            self._port = reactor.listenSSL(0, self.connections, tls, interface="127.0.0.1")
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._port.getHost().port}"

    def close(self) -> Any:
        return self._port.stopListening()
