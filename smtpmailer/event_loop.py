"""Which reactor runs the daemon: Twisted's asyncio reactor on uvloop when uvloop is
installed and twistd was not told otherwise (``twistd -r NAME``), else Twisted's default.

Why: measured with bench/relay (the defaults, 10,000 messages, A B A B in one session), the
daemon on uvloop drains 5-7% faster at 5-7% less CPU a message than on the epoll reactor;
Twisted's asyncio reactor on the standard library's loop was 10-15% slower, so it is never
chosen without uvloop.

It must run before anything imports ``twisted.internet.reactor``, which installs the
default: twistd's option parsing (our Options.postOptions) is that moment.
"""

from __future__ import annotations

import sys

TWISTED_DEFAULT = "twisted's default"
UVLOOP = "asyncio on uvloop"


def install_reactor() -> str:
    """Install the asyncio reactor on a uvloop loop if no reactor is installed yet and
    uvloop imports; say which reactor runs."""
    if "twisted.internet.reactor" in sys.modules:
        return reactor_name()  # twistd -r, or something already imported the default
    try:
        import uvloop
    except ImportError:
        return TWISTED_DEFAULT
    import asyncio

    from twisted.internet import asyncioreactor

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    asyncioreactor.install(loop)
    return UVLOOP


def reactor_name() -> str:
    """The installed reactor, as the start-up line and the status page say it."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return TWISTED_DEFAULT
    loop = getattr(reactor, "_asyncioEventloop", None)
    if loop is not None:
        return f"asyncio on {type(loop).__module__.split('.')[0]}"
    return type(reactor).__name__
