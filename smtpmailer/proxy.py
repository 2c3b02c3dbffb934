"""An HTTP proxy for the daemon's outgoing HTTP (API relays, OAuth2 token endpoints,
webhooks): ``[Daemon] http_proxy`` and ``no_proxy``, as a network that lets HTTPS out only
through a proxy needs them. Every request goes through a CONNECT tunnel, TLS included
end to end, so the proxy sees the host and port but neither the request nor its keys.
And a SOCKS5 proxy for an SMTP relay (``[Relay] proxy``), parsed here; its handshake is
delivery/smtp/socks.py's.

Light: the config imports it, and the config is read by every command.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs


@attrs.frozen
class Proxy:
    host: str
    port: int
    # "Basic ...", from the URL's user and password; never shown.
    authorization: str | None = attrs.field(default=None, repr=False)

    @property
    def address(self) -> str:
        """host:port, for messages: the credentials are not in it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_proxy(text: str) -> Proxy:
    """``http://[user:password@]host:port``; ValueError saying what is wrong (without
    the password)."""
    split = urlsplit(text.strip())
    if split.scheme != "http":
        raise ValueError("must be http://[user:password@]host:port (a TLS proxy is not supported)")
    try:
        port = split.port
    except ValueError:
        port = None
    if not split.hostname or port is None or split.path not in ("", "/") or split.query:
        raise ValueError("must be http://[user:password@]host:port")
    authorization = None
    if split.username is not None:
        pair = f"{unquote(split.username)}:{unquote(split.password or '')}"
        authorization = "Basic " + base64.b64encode(pair.encode("utf-8")).decode("ascii")
    return Proxy(split.hostname, port, authorization)


def bypasses(host: str, no_proxy: tuple[str, ...]) -> bool:
    """Whether ``host`` is reached directly: named in ``no_proxy``, under a domain given
    there as ``.example.com`` (or ``example.com``), or an address in a network given as
    ``10.0.0.0/8``; ``*`` is every host."""
    import ipaddress

    host = host.lower().rstrip(".").strip("[]")
    try:
        address: Any = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy:
        entry = entry.lower().rstrip(".")
        if entry == "*" or host == entry.lstrip(".").strip("[]"):
            return True
        if address is not None and "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
        elif host.endswith("." + entry.lstrip(".")):
            return True
    return False


def proxy_settings(daemon: Any) -> tuple[Proxy | None, tuple[str, ...]]:
    """``[Daemon] http_proxy`` and ``no_proxy`` (a DaemonConfig), as the HTTP client takes
    them."""
    url = daemon.http_proxy
    return (parse_proxy(url) if url else None), tuple(daemon.no_proxy)


@attrs.frozen
class SocksProxy:
    """A SOCKS5 proxy for an SMTP relay (``[Relay] proxy``): the relay's name is resolved
    by the proxy, as msmtp's ``proxy_host`` does, so a host behind Tor or an ``ssh -D``
    forward is reached by its name."""

    host: str
    port: int
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)

    @property
    def address(self) -> str:
        """host:port, for messages: the credentials are not in it."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_socks_proxy(text: str) -> SocksProxy:
    """``socks5://[user:password@]host:port`` (``socks5h://`` too: either way the proxy
    resolves the relay's name); ValueError saying what is wrong, without the password."""
    split = urlsplit(text.strip())
    usage = "must be socks5://[user:password@]host:port"
    if split.scheme not in ("socks5", "socks5h"):
        raise ValueError(usage)
    try:
        port = split.port
    except ValueError:
        port = None
    if not split.hostname or port is None or split.path not in ("", "/") or split.query:
        raise ValueError(usage)
    if split.username is None:
        return SocksProxy(split.hostname, port)
    username, password = unquote(split.username), unquote(split.password or "")
    # RFC 1929: each is one to 255 bytes.
    for what, value in (("user name", username), ("password", password)):
        if not 0 < len(value.encode("utf-8")) <= 255:
            raise ValueError(f"the {what} must be 1 to 255 bytes (RFC 1929)")
    return SocksProxy(split.hostname, port, username, password)
