"""Request bodies counted as they arrive: past the limit, nothing more is kept.

Twisted's Request checks no size: a chunked body (no Content-Length) was kept whole, then
read into memory at once (RSS grew by twice the body). This Request keeps none of a body
once it passes its site's ``body_limit()``; the resource then answers 413 unread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.web.server import Request, Site


class LimitedRequest(Request):
    received = 0
    too_large = False

    def handleContentChunk(self, data: bytes) -> None:
        self.received += len(data)
        if self.too_large:
            return
        site = getattr(self.channel, "site", None)
        limit = site.body_limit() if isinstance(site, LimitedSite) else 0
        if limit and self.received > limit:
            self.too_large = True
            assert self.content is not None
            self.content.seek(0)
            self.content.truncate()  # what was kept goes too
            return
        super().handleContentChunk(data)


class LimitedSite(Site):
    """A Site whose requests keep at most ``body_limit()`` bytes of body (0: no limit)."""

    def __init__(self, resource: Any, body_limit: Callable[[], int]) -> None:
        super().__init__(resource, requestFactory=LimitedRequest)
        self.body_limit = body_limit
