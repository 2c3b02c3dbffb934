"""``smtpmailer test-api``'s steps: each provider module's ``probes(relay, sender, send)``
lists read-only requests (credentials, the sender or domain, the quota) and, where the
provider has one, a send in its no-delivery mode. A step's reader turns a 2xx answer into
the line to show, or raises ProbeFailed; any other answer fails the step with the
provider's words. Nothing here sends a real message: ``test-api --send-to`` does that
through the provider's ordinary request."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import attrs

from smtpmailer.httpclient import Request, Response
from smtpmailer.queue import Lease

TEST_SUBJECT = "smtpmailer test-api"


class ProbeFailed(Exception):
    """The provider answered, and the answer says this step's check fails."""


@attrs.frozen
class Probe:
    step: str
    request: Request
    read: Callable[[Response], str]
    # For an answer that is not 2xx but still says what the step wants to know (a key
    # that may send but not read): the line to show, or None for a failure.
    also: Callable[[Response], str | None] = lambda response: None


@attrs.frozen
class Skipped:
    """A step that cannot run as asked (no sender given), with what would make it run."""

    step: str
    why: str


Step = Probe | Skipped


def test_message(sender: str, recipient: str) -> bytes:
    return (
        f"From: {sender}\r\nTo: {recipient}\r\nSubject: {TEST_SUBJECT}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        "A test from smtpmailer test-api.\r\n"
    ).encode()


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def json_of(response: Response) -> Any:
    try:
        return json.loads(response.body)
    except ValueError:
        raise ProbeFailed(f"not JSON: {response.body[:80]!r}") from None


def sandbox_lease(sender: str, recipient: str = "test-api@example.com") -> Lease:
    """The message a no-delivery-mode send carries; its id names the command."""
    data = test_message(sender, recipient)
    return Lease("test-api", "test-api", sender, (recipient,), data, 5, 0, 0.0)


def with_json(request: Request, change: Callable[[dict[str, Any]], None]) -> Request:
    """The same request with its JSON body changed (a sandbox flag added)."""
    body = json.loads(request.body)
    change(body)
    return attrs.evolve(request, body=json.dumps(body).encode())
