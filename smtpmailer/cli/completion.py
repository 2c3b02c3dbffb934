"""``smtpmailer completion bash|zsh``: the shell completion script, generated from the
argument parser by shtab (so it knows every command and option the parser does), which
``make install`` also puts where bash-completion and zsh look."""

from __future__ import annotations

import argparse
from typing import Any

from smtpmailer.cli.common import Console

SHELLS = ("bash", "zsh")


def cmd_completion(args: argparse.Namespace, config: Any, console: Console) -> int:
    import shtab

    from smtpmailer.cli.main import build_parser

    script = shtab.complete(build_parser(), shell=args.shell)
    console.out.write(script if script.endswith("\n") else script + "\n")
    return 0


def add_commands(commands: Any) -> None:
    completion = commands.add_parser(
        "completion", help="print the shell completion script (bash or zsh)"
    )
    completion.add_argument("shell", choices=SHELLS, help="bash or zsh")
    completion.set_defaults(handler=cmd_completion, needs_config=False)
