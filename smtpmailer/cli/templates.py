"""``smtpmailer template list|show|render``: the local templates, and a preview of what a
template makes with some variables (nothing is queued)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from smtpmailer.cli.common import CommandError, Console

if TYPE_CHECKING:
    from smtpmailer.config import Config


def cmd_template(args: argparse.Namespace, config: Config, console: Console) -> int:
    from smtpmailer.cli.send import variables
    from smtpmailer.intake.templates import templates_for

    templates = templates_for(config.templates.path)
    if args.action == "list":
        names = templates.names()
        for name in names:
            parts = templates.sources(name)
            console.say(f"{name}  {' '.join(sorted(parts))}")
        if not names:
            console.say(f"no templates in {templates.folder}")
        return 0
    if not args.name:
        raise CommandError(f"template {args.action} needs a NAME")
    if args.action == "show":
        for part, source in templates.sources(args.name).items():
            console.say(f"--- {part}")
            console.say(source.rstrip("\n"))
        return 0
    rendered = templates.render(args.name, variables(args, console))
    console.say(f"Subject: {rendered.subject}")
    console.say("--- text")
    console.say(rendered.text.rstrip("\n"))
    if rendered.html is not None:
        console.say("--- html")
        console.say(rendered.html.rstrip("\n"))
    return 0


def add_commands(commands: Any) -> None:
    template = commands.add_parser(
        "template", help="local templates: list, show, or preview a rendering"
    )
    template.add_argument("action", choices=("list", "show", "render"), help="what to do")
    template.add_argument("name", nargs="?", metavar="NAME", help="the template")
    template.add_argument(
        "--var", action="append", default=[], metavar="KEY=VALUE", help="a variable (render)"
    )
    template.add_argument(
        "--vars-file", metavar="FILE", help="variables, a JSON object (render; '-': stdin)"
    )
    template.set_defaults(handler=cmd_template)
