"""A transport that answers 250 at once, for bench/ceiling: ``python -m instant_delivery``
runs twistd with it in place of the SMTP transport.

With delivery costing nothing, a drain or an end-to-end run measures what is left: the
ways in, the queue and the outcome bookkeeping. The difference to a run against smtp-sink
is what delivery itself costs. It replaces the ``smtp`` kind in the daemon's transport
table; nothing in smtpmailer knows of it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed

from smtpmailer.delivery import transport
from smtpmailer.queue import RCPT_SENT, Lease, RecipientResult


class InstantSession:
    label = "instant[127.0.0.1]:25"

    def __init__(self) -> None:
        self.delivered = 0

    def deliver(self, lease: Lease, follow: Any = None) -> Deferred[tuple[RecipientResult, ...]]:
        self.delivered += 1
        return succeed(
            tuple(RecipientResult(r, RCPT_SENT, "250 2.0.0 Ok") for r in lease.recipients)
        )

    def quit(self) -> Deferred[None]:
        return succeed(None)

    def abort(self) -> None:
        pass


class InstantTransport:
    def open(self) -> Deferred[InstantSession]:
        return succeed(InstantSession())

    def describe(self, error: BaseException) -> str:
        return str(error)

    def retire(self) -> None:
        pass


def make_transport(relay: Any, context: Any) -> InstantTransport:
    return InstantTransport()


transport.TRANSPORT_MODULES["smtp"] = "instant_delivery"

if __name__ == "__main__":  # python -m instant_delivery TWISTD-ARGUMENTS: twistd, patched
    from twisted.scripts.twistd import run

    run()
