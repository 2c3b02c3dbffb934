"""Posting a form to a token endpoint, through the shared HTTP client (httpclient.py:
kept connections, TLS verified, one deadline on the whole exchange).
Errors on the way become a TokenEndpointError in one line."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from twisted.internet.defer import Deferred

from smtpmailer.httpclient import HTTPFailure, PooledClient, Request
from smtpmailer.oauth2.grants import TokenEndpointError
from smtpmailer.proxy import proxy_settings

# (url, form fields, timeout) -> (HTTP status, body)
Poster = Callable[[str, dict[str, str], float], "Deferred[tuple[int, bytes]]"]
FORM = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}


class HTTPPoster:
    """The real thing; ``close()`` drops the connections it keeps."""

    def __init__(self, reactor: Any, daemon: Any = None) -> None:
        """``daemon``: the [Daemon] section, for its http_proxy."""
        proxy, no_proxy = proxy_settings(daemon) if daemon is not None else (None, ())
        self._client = PooledClient(reactor, 2, proxy, no_proxy)

    def __call__(
        self, url: str, fields: dict[str, str], timeout: float
    ) -> Deferred[tuple[int, bytes]]:
        return Deferred.fromCoroutine(self._post(url, fields, timeout))

    def close(self) -> Deferred[None]:
        return self._client.close()

    async def _post(self, url: str, fields: dict[str, str], timeout: float) -> tuple[int, bytes]:
        request = Request("POST", url, dict(FORM), urlencode(fields).encode("ascii"))
        try:
            response = await self._client(request, timeout)
        except HTTPFailure as error:
            if error.kind == "timeout":
                raise TokenEndpointError(
                    "timeout", f"no answer from the token endpoint in {timeout:g}s"
                ) from None
            raise TokenEndpointError("unreachable", str(error)) from None
        return response.status, response.body
