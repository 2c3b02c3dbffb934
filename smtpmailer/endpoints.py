"""Endpoint strings: check them, tell loopback from not, and bind one at once (listen_now).

A port that cannot be bound must stop the daemon at start, not be logged and forgotten, so
listeners are bound synchronously in startService (TCP and UNIX endpoints listen at once).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:  # config validation uses this module: it must not import Twisted
    from twisted.internet.interfaces import IListeningPort


@attrs.frozen
class ListenSpec:
    """What an endpoint string like ``tcp:8025:interface=127.0.0.1`` asks for."""

    text: str
    kind: str  # tcp, tcp6, unix
    port: int | None
    interface: str
    path: str | None

    @property
    def loopback(self) -> bool:
        """Only this host can connect: a UNIX socket or a loopback interface."""
        if self.kind == "unix":
            return True
        try:
            return ipaddress.ip_address(self.interface).is_loopback
        except ValueError:
            return self.interface == "localhost"


def parse_listen(text: str) -> ListenSpec:
    """Check a server endpoint string; raise ValueError with a reason an operator follows."""
    parts = text.split(":")
    kind = parts[0].lower()
    options = {}
    positional = []
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            options[key] = value
        else:
            positional.append(part)
    if kind in ("tcp", "tcp6"):
        port_text = options.get("port") or (positional[0] if positional else "")
        if not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError(
                f"{text!r}: a tcp endpoint needs a port, e.g. tcp:8025:interface=127.0.0.1"
            )
        unknown = set(options) - {"port", "interface", "backlog"}
        if unknown or len(positional) > 1:
            raise ValueError(f"{text!r}: unexpected {sorted(unknown) or positional[1:]}")
        default = "::" if kind == "tcp6" else "0.0.0.0"
        interface = options.get("interface", default)
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            raise ValueError(f"{text!r}: interface {interface!r} is not an IP address") from None
        return ListenSpec(text, kind, int(port_text), interface, None)
    if kind == "unix":
        path = options.get("address") or (positional[0] if positional else "")
        if not path:
            raise ValueError(f"{text!r}: a unix endpoint needs a path, e.g. unix:/run/x.sock")
        return ListenSpec(text, kind, None, "", path)
    raise ValueError(f"{text!r}: use tcp:PORT:interface=ADDRESS, tcp6:... or unix:PATH")


# Connections the kernel completes and holds for us to accept. Twisted's default of 50
# overflows when many clients connect at once: the kernel then drops their SYNs, and each
# waits 1 s, 3 s, 7 s... to try again (bench/load opening 10,000 stalled on it).
BACKLOG = 1024


def with_backlog(text: str) -> str:
    """The endpoint string with our backlog, unless it names one itself."""
    if any(part.startswith("backlog=") for part in text.split(":")[1:]):
        return text
    return f"{text}:backlog={BACKLOG}"


def listen_now(reactor: Any, text: str, factory: Any) -> IListeningPort:
    """Bind at once; raise the CannotListenError instead of leaving it in a Deferred."""
    from twisted.internet.endpoints import serverFromString
    from twisted.python.failure import Failure

    result = serverFromString(reactor, with_backlog(text)).listen(factory)
    outcome: list[Any] = []
    result.addBoth(outcome.append)
    if not outcome:
        raise RuntimeError(f"{text}: the endpoint did not bind at once")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    port: IListeningPort = outcome[0]
    return port


def describe_port(port: IListeningPort) -> str:
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        return str(getattr(address, "name", address))
    return f"{host}:{address.port}"  # type: ignore[attr-defined]
