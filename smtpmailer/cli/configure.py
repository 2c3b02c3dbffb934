"""``smtpmailer config`` (print or check the effective config) and ``hash-password``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from smtpmailer.cli.common import CommandError, Console

if TYPE_CHECKING:
    from smtpmailer.config import Config


def cmd_config(args: argparse.Namespace, config: Config, console: Console) -> int:
    from smtpmailer.config import render_config

    if args.check:
        console.say(f"{config.path}: OK")
        return 0
    console.out.write(render_config(config))
    return 0


def cmd_hash_password(args: argparse.Namespace, config: Config | None, console: Console) -> int:
    """``user:$(smtpmailer hash-password)`` is a users_file line. It reads no config: a
    hash is needed before the users_file the config names exists."""
    import bcrypt

    if console.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
    else:
        password = console.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password")
    console.say(bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode())
    return 0


def add_commands(commands: Any) -> None:
    hashing = commands.add_parser(
        "hash-password", help="print a bcrypt hash for [Submission] users_file (reads stdin)"
    )
    hashing.set_defaults(handler=cmd_hash_password, needs_config=False)

    config = commands.add_parser("config", help="print the effective config (secrets redacted)")
    config.add_argument("--check", action="store_true", help="only validate")
    config.set_defaults(handler=cmd_config)
