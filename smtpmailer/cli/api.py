"""``smtpmailer test-api``: check an HTTP API relay step by step (credentials, sender or
domain, quota, a send in the provider's no-delivery mode), one line a step; exit 1 naming
the step that failed. A real message goes out only with ``--send-to``."""

from __future__ import annotations

import argparse
import importlib
from typing import TYPE_CHECKING, Any

from smtpmailer.cli.common import CommandError, Console, run_with_reactor

if TYPE_CHECKING:
    from smtpmailer.config import Config
    from smtpmailer.config.sections import APIRelayConfig
    from smtpmailer.httpclient import Client, Response


def find_relay(config: Config, name: str) -> APIRelayConfig:
    """The ``[API:NAME]`` section, or the one section of that provider."""
    from smtpmailer.config.sections import APIRelayConfig

    apis = [r for r in config.relays if isinstance(r, APIRelayConfig)]
    named = [r for r in apis if r.name == name]
    if named:
        return named[0]
    by_provider = [r for r in apis if r.provider == name]
    if len(by_provider) == 1:
        return by_provider[0]
    if by_provider:
        sections = ", ".join(f"[API:{r.name}]" for r in by_provider)
        raise CommandError(
            f"{len(by_provider)} sections use provider {name}: name one ({sections})"
        )
    known = ", ".join(f"{r.name} ({r.provider})" for r in apis) or "none"
    raise CommandError(
        f"no [API:{name}] section and no relay with provider = {name} (API relays: {known})"
    )


async def run_steps(
    relay: APIRelayConfig,
    client: Client,
    say: Any,
    sender: str | None,
    send_to: str | None,
) -> str | None:
    """Runs each step and says how it went; returns the step that failed, or None."""
    from smtpmailer.delivery.api.probe import Probe, ProbeFailed, sandbox_lease
    from smtpmailer.delivery.api.transport import PROVIDER_MODULES
    from smtpmailer.httpclient import HTTPFailure

    provider: Any = importlib.import_module(PROVIDER_MODULES[relay.provider])
    say(f"[API:{relay.name}] provider={relay.provider} endpoint={relay.endpoint}")
    steps = provider.probes(relay, sender)
    if send_to is not None:
        if sender is None:
            raise CommandError("--send-to needs --from ADDRESS")
        lease = sandbox_lease(sender, send_to)
        send = Probe(
            f"send to {send_to}",
            provider.build(lease, relay),
            lambda r: f"sent (HTTP {r.status} {provider.message_id(r)})".replace(" )", ")"),
        )
        steps.append(send)
    for step in steps:
        if not isinstance(step, Probe):
            say(f"  {step.step}: skipped ({step.why})")
            continue
        try:
            response: Response = await client(step.request, relay.timeout)
        except HTTPFailure as error:
            say(f"  {step.step}: FAILED: {error}")
            return step.step
        try:
            line = _judge(provider, step, response)
        except ProbeFailed as error:
            say(f"  {step.step}: FAILED: {error}")
            return step.step
        say(f"  {step.step}: ok ({line})")
    return None


def _judge(provider: Any, step: Any, response: Response) -> str:
    from smtpmailer.delivery.api.probe import ProbeFailed

    if 200 <= response.status < 300:
        line: str = step.read(response)
        return line
    accepted = step.also(response)
    if accepted is not None:
        return str(accepted)
    words = f"HTTP {response.status}: {provider.error_text(response)}"
    if response.status in (401, 403):
        raise ProbeFailed(f"credentials refused: {words}")
    raise ProbeFailed(words)


def cmd_test_api(args: argparse.Namespace, config: Config, console: Console) -> int:
    from smtpmailer.httpclient import PooledClient
    from smtpmailer.proxy import proxy_settings

    relay = find_relay(config, args.provider)

    async def probe(reactor: Any) -> str | None:
        client = PooledClient(reactor, 1, *proxy_settings(config.daemon))
        try:
            return await run_steps(relay, client, console.say, args.sender, args.send_to)
        finally:
            await client.close()

    failed = run_with_reactor(probe)
    if failed is not None:
        console.warn(f"test-api: [API:{relay.name}] failed at step: {failed}")
        return 1
    return 0


def add_commands(commands: Any) -> None:
    check = commands.add_parser(
        "test-api",
        help="check an HTTP API relay: credentials, sender, quota, a no-delivery send",
    )
    check.add_argument(
        "--provider",
        metavar="NAME",
        required=True,
        help="the [API:NAME] section, or a provider used by one section (e.g. sendgrid)",
    )
    check.add_argument(
        "--from",
        dest="sender",
        metavar="ADDRESS",
        help="the sender to check, and to send the test from",
    )
    check.add_argument(
        "--send-to",
        metavar="ADDRESS",
        help="also send one real test message to ADDRESS (never sent without this)",
    )
    check.set_defaults(handler=cmd_test_api)
