"""``smtpmailer test``: connect to each relay and report every step of the session."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from smtpmailer.cli.common import CommandError, Console

if TYPE_CHECKING:
    from smtpmailer.config import Config


def cmd_test(args: argparse.Namespace, config: Config, console: Console) -> int:
    """Connect to each relay (or --relay NAME): EHLO, STARTTLS, AUTH, QUIT, step by step."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from smtpmailer.config import MaildirRelayConfig, SMTPRelayConfig
    from smtpmailer.delivery.smtp.protocol import SMTPClientProtocol
    from smtpmailer.delivery.smtp.session import SMTPSession
    from smtpmailer.delivery.smtp.transport import describe_error, start_tls, tcp_connector

    relays = [r for r in config.relays if args.relay in (None, r.name)]
    if not relays:
        names = ", ".join(r.name for r in config.relays)
        raise CommandError(f"no relay named {args.relay!r} (relays: {names})")
    failures = 0

    say = console.say

    async def probe() -> None:
        nonlocal failures
        connect = tcp_connector(reactor)
        for relay in relays:
            if isinstance(relay, MaildirRelayConfig):
                say(f"[{relay.name}] maildir {relay.path}: nothing to connect to")
                continue
            if not isinstance(relay, SMTPRelayConfig):
                say(f"[API:{relay.name}] {relay.where}: an HTTP API, checked by test-api")
                continue
            say(f"[{relay.name}] {relay.host}:{relay.port} security={relay.security}")
            protocol = SMTPClientProtocol(reactor, relay.timeout)
            try:
                credentials = await _oauth2_credentials(config, relay, say)
                await connect(relay, protocol)
                if relay.proxy:
                    from smtpmailer.proxy import parse_socks_proxy

                    proxy = parse_socks_proxy(relay.proxy).address
                    say(f"  connect: ok (through the SOCKS proxy {proxy})")
                else:
                    peer = protocol.transport.getPeer()  # type: ignore[union-attr]
                    say(f"  connect: ok ({getattr(peer, 'host', '?')})")
                session = SMTPSession(
                    protocol, relay, relay.helo or "localhost", start_tls(relay), credentials
                )
                await session.open(lambda step: say(f"  {step}"))
                await session.quit()
                say("  QUIT: ok")
            except Exception as error:
                failures += 1
                protocol.abort()
                say(f"  FAILED: {describe_error(error)}")

    finished = Deferred.fromCoroutine(probe())
    finished.addErrback(lambda failure: say(f"FAILED: {failure.getErrorMessage()}"))
    finished.addBoth(lambda _: reactor.callLater(0, reactor.stop))
    reactor.run()
    return 1 if failures else 0


async def _oauth2_credentials(config: Config, relay: Any, say: Any) -> Any:
    """For a relay with ``oauth2 = NAME``: a token fetched now, reported as a step (its
    expiry, never the token); None for a relay with a password."""
    if not relay.oauth2:
        return None
    import time

    from twisted.internet import reactor

    from smtpmailer.cli.oauth2 import expiry, section
    from smtpmailer.delivery.smtp.auth import Credentials
    from smtpmailer.oauth2.endpoint import HTTPPoster
    from smtpmailer.oauth2.source import TokenSource

    oauth2 = section(config, relay.oauth2)
    source = TokenSource(oauth2, None, reactor, HTTPPoster(reactor, config.daemon))
    await source.token()
    assert source.expires_at is not None
    say(f"  oauth2 {oauth2.name}: token ok, {expiry(source.expires_at, time.time())}")
    return Credentials(relay.username, source.token, source.rejected)


def add_commands(commands: Any) -> None:
    probe = commands.add_parser("test", help="connect to the relay(s): EHLO, STARTTLS, AUTH, QUIT")
    probe.add_argument("--relay", metavar="NAME", help="only this [Relay:NAME]")
    probe.set_defaults(handler=cmd_test)
