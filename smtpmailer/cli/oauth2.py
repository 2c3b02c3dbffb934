"""``smtpmailer oauth2 authorize NAME`` and ``smtpmailer oauth2 token NAME``.

``authorize`` gets the refresh token a ``flow = refresh_token`` section needs and writes
``refresh_token_file`` (0600, atomically; a running daemon uses it at its next connection).
``token`` asks for an access token now and says when it expires; it never prints a token.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from smtpmailer.cli.common import CommandError, Console, run_with_reactor

if TYPE_CHECKING:
    from smtpmailer.config import Config
    from smtpmailer.config.sections import OAuth2Config


def section(config: Config, name: str) -> OAuth2Config:
    for found in config.oauth2:
        if found.name == name:
            return found
    names = ", ".join(o.name for o in config.oauth2) or "none"
    raise CommandError(f"no [OAuth2:{name}] section (sections: {names})")


def mailbox(config: Config, name: str) -> str | None:
    """The username of a relay that uses this section: the account to sign in as."""
    for relay in config.relays:
        if getattr(relay, "oauth2", None) == name:
            return getattr(relay, "username", None)
    return None


def expiry(at: float, now: float) -> str:
    """``expires 2026-12-01 19:03:12 UTC (in 59m 59s)``"""
    moment = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))
    left = max(0, round(at - now))
    hours, rest = divmod(left, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n]
    return f"expires {moment} (in {' '.join(parts) or '0s'})"


def cmd_token(args: argparse.Namespace, config: Config, console: Console) -> int:
    """An access token now (not from the daemon's cache): proves the section works."""
    oauth2 = section(config, args.name)

    async def fetch(reactor: Any) -> float:
        from smtpmailer.oauth2.endpoint import HTTPPoster
        from smtpmailer.oauth2.source import TokenError, TokenSource

        poster = HTTPPoster(reactor, config.daemon)
        source = TokenSource(oauth2, None, reactor, poster)
        try:
            await source.token()
        except TokenError as error:
            raise CommandError(str(error)) from None
        finally:
            await poster.close()
        assert source.expires_at is not None
        return source.expires_at

    expires_at = run_with_reactor(fetch)
    console.say(f"oauth2 {oauth2.name}: got an access token; it {expiry(expires_at, time.time())}")
    return 0


def cmd_authorize(args: argparse.Namespace, config: Config, console: Console) -> int:
    oauth2 = section(config, args.name)
    if oauth2.flow != "refresh_token":
        raise CommandError(
            f"[OAuth2:{oauth2.name}] uses flow = {oauth2.flow}, which needs no authorize: "
            f"check it with: smtpmailer oauth2 token {oauth2.name}"
        )
    assert oauth2.refresh_token_file is not None
    hint = mailbox(config, oauth2.name)

    async def authorize(reactor: Any) -> str:
        from twisted.internet.task import deferLater

        from smtpmailer.oauth2 import authorize as flows
        from smtpmailer.oauth2.endpoint import HTTPPoster

        poster = HTTPPoster(reactor, config.daemon)
        try:
            if args.device:
                return await flows.device_flow(
                    oauth2, poster, console.say, lambda seconds: deferLater(reactor, seconds)
                )
            pkce = flows.new_pkce()
            listener = flows.RedirectListener(reactor, pkce.state, args.port)
            try:
                url = flows.authorization_url(oauth2, listener.redirect_uri, pkce, hint)
                console.say(f"Open this URL in a browser{' as ' + hint if hint else ''}:")
                console.say("")
                console.say(url)
                console.say("")
                console.say(
                    f"Waiting for the browser to come back to {listener.redirect_uri} ... "
                    f"(over SSH: ssh -L {listener.port}:127.0.0.1:{listener.port} this host, "
                    "then open the URL on your own machine)"
                )
                waiting = listener.result
                waiting.addTimeout(args.timeout, reactor)
                code = await waiting
            finally:
                await listener.close()
            return await flows.exchange_code(oauth2, poster, code, listener.redirect_uri, pkce)
        except flows.AuthorizeError as error:
            raise CommandError(f"oauth2 {oauth2.name}: {error}") from None
        finally:
            await poster.close()

    from twisted.internet.defer import TimeoutError

    from smtpmailer.oauth2.files import write_private

    try:
        refresh = run_with_reactor(authorize)
    except TimeoutError:
        raise CommandError(
            f"oauth2 {oauth2.name}: no answer from the browser in {args.timeout:g}s"
        ) from None
    try:
        write_private(oauth2.refresh_token_file, refresh + "\n")
    except OSError as error:
        raise CommandError(f"cannot write {oauth2.refresh_token_file}: {error.strerror}") from None
    console.say(
        f"oauth2 {oauth2.name}: refresh token written to {oauth2.refresh_token_file} "
        "(mode 0600); a running daemon uses it at its next connection"
    )
    return 0


def add_commands(commands: Any) -> None:
    from smtpmailer.units import parse_duration

    oauth2 = commands.add_parser("oauth2", help="get and check OAuth2 tokens ([OAuth2:NAME])")
    actions = oauth2.add_subparsers(dest="oauth2_command", metavar="ACTION", required=True)
    authorize = actions.add_parser(
        "authorize", help="sign in once and write refresh_token_file (PKCE, or --device)"
    )
    authorize.add_argument("name", metavar="NAME", help="the [OAuth2:NAME] section")
    authorize.add_argument(
        "--device", action="store_true", help="the device-code flow: a code to enter elsewhere"
    )
    authorize.add_argument(
        "--port", type=int, default=0, help="the loopback port for the redirect (for ssh -L)"
    )
    authorize.add_argument(
        "--timeout", type=parse_duration, default=600.0, help="how long to wait (default 10m)"
    )
    authorize.set_defaults(handler=cmd_authorize, moot_warning="no refresh token yet")
    token = actions.add_parser("token", help="get an access token now and show its expiry")
    token.add_argument("name", metavar="NAME", help="the [OAuth2:NAME] section")
    token.set_defaults(handler=cmd_token)
