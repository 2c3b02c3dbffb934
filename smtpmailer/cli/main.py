"""``smtpmailer``: the parser, the routing of ``sendmail``'s own syntax, and ``main``.

Each group of commands is a module of its own (send, queue, daemon, relays, oauth2,
configure, completion)
that adds its subcommands here. Imports stay inside the commands: ``send`` is run by cron
jobs and scripts once per message, and must not pay for Twisted or OpenSSL.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING

from smtpmailer.cli import (
    api,
    completion,
    configure,
    daemon,
    oauth2,
    queue,
    relays,
    send,
    templates,
)
from smtpmailer.cli.common import CommandError, Console

if TYPE_CHECKING:
    from smtpmailer.config import Config

Handler = Callable[[argparse.Namespace, "Config | None", Console], int]


def build_parser() -> argparse.ArgumentParser:
    from smtpmailer import __version__

    parser = argparse.ArgumentParser(
        prog="smtpmailer", description="Queue mail and manage the smtpmailer queue."
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $SMTPMAILER_CONFIG, then /etc/smtpmailer/smtpmailer.conf)",
    )
    parser.add_argument("--version", action="version", version=__version__.public())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    send.add_commands(commands)
    queue.add_commands(commands)
    daemon.add_commands(commands)
    relays.add_commands(commands)
    api.add_commands(commands)
    templates.add_commands(commands)
    oauth2.add_commands(commands)
    # Routed before argparse (sendmail's syntax); listed here for --help.
    commands.add_parser(
        "sendmail", help="sendmail-compatible: -t, -i/-oi, -f, -F, -bs, -bp, -q; message on stdin"
    )
    configure.add_commands(commands)
    completion.add_commands(commands)
    return parser


def _sendmail_arguments(argv: list[str]) -> list[str] | None:
    """``[--config P] sendmail ARGS``: sendmail's syntax is not argparse's, so route it first."""
    prefix: list[str] = []
    rest = argv
    if rest[:1] == ["--config"] and len(rest) >= 2:
        prefix, rest = [f"--config={rest[1]}"], rest[2:]
    elif rest[:1] and rest[0].startswith("--config="):
        prefix, rest = rest[:1], rest[1:]
    if rest[:1] != ["sendmail"]:
        return None
    return [*prefix, *rest[1:]]


def main(
    argv: Sequence[str] | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    stdin: IO[str] | None = None,
) -> int:
    import sys

    from smtpmailer.config import load_config
    from smtpmailer.ini import ConfigError
    from smtpmailer.intake.refusals import Refusal
    from smtpmailer.queue import QueueError

    console = Console(out, err, stdin)
    argv = list(sys.argv[1:] if argv is None else argv)
    sendmail_args = _sendmail_arguments(argv)
    if sendmail_args is not None:
        from smtpmailer.intake.sendmail.command import run

        return run(sendmail_args, console.stdin_bytes, console.out, console.err)
    # argparse writes usage, --help and --version to sys's streams: send them to ours.
    with contextlib.redirect_stdout(console.out), contextlib.redirect_stderr(console.err):
        args = build_parser().parse_args(argv)
    if getattr(args, "daemon_handler", None):
        return int(args.daemon_handler(args, console))
    handler: Handler = args.handler
    try:
        if not getattr(args, "needs_config", True):
            return handler(args, None, console)
        config = load_config(args.config)
        moot = getattr(args, "moot_warning", None)  # one the command itself is there to fix
        for warning in config.warnings:
            if not (moot and moot in warning):
                console.warn(f"smtpmailer: warning: {warning}")
        return handler(args, config, console)
    except (ConfigError, Refusal, QueueError, CommandError) as error:
        console.warn(f"smtpmailer: {error}")
        return 1
