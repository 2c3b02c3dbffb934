"""``smtpmailer send``: build a message (or take a raw one from stdin) and queue it."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from smtpmailer.cli.common import CommandError, Console, open_queue

if TYPE_CHECKING:
    from smtpmailer.config import Config


def _read_text(path: str, what: str, console: Console) -> str:
    try:
        if path == "-":
            return console.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise CommandError(f"cannot read {what} {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{what} {path} is not UTF-8 text") from None


def variables(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """--vars-file (a JSON object), then each --var key=value over it."""
    import json

    found: dict[str, Any] = {}
    if args.vars_file:
        try:
            found = json.loads(_read_text(args.vars_file, "vars file", console))
        except ValueError as error:
            raise CommandError(f"vars file {args.vars_file} is not JSON: {error}") from None
        if not isinstance(found, dict):
            raise CommandError(f"vars file {args.vars_file} must hold a JSON object")
    for pair in args.var:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise CommandError(f"--var {pair!r}: give it as key=value")
        found[key] = value
    return found


def _batch_rows(path: str, console: Console) -> list[tuple[str, dict[str, str]]]:
    """The CSV's rows as (address, variables): a header row names the columns; the
    address is the column named to, email or address (else the first)."""
    import csv
    import io

    text = _read_text(path, "recipients file", console)
    reader = csv.reader(io.StringIO(text))
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise CommandError(f"recipients file {path} is empty") from None
    lower = [name.lower() for name in header]
    column = next((lower.index(n) for n in ("to", "email", "address") if n in lower), 0)
    rows = []
    for number, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise CommandError(
                f"{path}:{number}: {len(row)} columns, the header row has {len(header)}"
            )
        values = dict(zip(header, row, strict=True))
        rows.append((row[column].strip(), {k: v for k, v in values.items() if k != header[column]}))
    if not rows:
        raise CommandError(f"recipients file {path} has no recipient rows")
    return rows


def _send_batch(
    args: argparse.Namespace, config: Config, console: Console, priority: int, now: float
) -> int:
    """--template with --recipients FILE.csv: a message each, committed all together."""
    import secrets

    from smtpmailer.intake.checks import check_envelope, wake_daemon
    from smtpmailer.message import parse_header_option
    from smtpmailer.queue import NewMessage, QueueError

    if args.to or args.cc or args.bcc:
        raise CommandError("--recipients gives the recipients: no --to, --cc or --bcc with it")
    rows = _batch_rows(args.batch_file, console)
    if len(rows) > config.templates.max_batch:
        raise CommandError(
            f"{len(rows)} recipients, over [Templates] max_batch ({config.templates.max_batch})"
        )
    common = variables(args, console)
    headers = [parse_header_option(h) for h in args.header]
    make = _maker(args, config, headers, now)
    batch = secrets.token_hex(8)
    messages = []
    for address, row in rows:
        checked = check_envelope(config, make([address], {**common, **row}))
        messages.append(
            NewMessage(
                checked.sender, checked.recipients, checked.data, priority, batch, checked.meta
            )
        )
    store = open_queue(config)
    try:
        results = store.enqueue_many(messages, now, config.queue.max_queue_size)
    finally:
        store.close()
    refused = next((r for r in results if isinstance(r, QueueError)), None)
    if refused is not None:
        raise refused
    for (address, _), message_id in zip(rows, results, strict=True):
        console.say(f"{message_id} {address}")
    wake_daemon(config)
    return 0


def _maker(
    args: argparse.Namespace, config: Config, headers: list[tuple[str, str]], now: float
) -> Any:
    """(recipients, variables) -> the message: from a local template, or naming the API
    provider's template (refused at once when mail from this sender may reach a relay
    that cannot send it)."""
    from smtpmailer.message import build_message

    if args.provider_template:
        from smtpmailer.intake.provider_templates import check_route

        check_route(config, args.sender)
        return lambda to, found: build_message(
            sender=args.sender, to=to, cc=args.cc, bcc=args.bcc, subject=args.subject or "",
            headers=headers, now=now, provider_template=(args.provider_template, found),
        )  # fmt: skip
    from smtpmailer.intake.templates import templates_for

    templates = templates_for(config.templates.path)
    return lambda to, found: templates.build(
        args.template, found, sender=args.sender, to=to, cc=args.cc, bcc=args.bcc,
        headers=headers, now=now,
    )  # fmt: skip


def cmd_send(args: argparse.Namespace, config: Config, console: Console) -> int:
    from smtpmailer.message import Attachment, build_message, parse_header_option, prepare_raw
    from smtpmailer.queue import parse_priority

    try:
        priority = parse_priority(args.priority)
    except ValueError as error:
        raise CommandError(str(error)) from None
    now = time.time()
    if args.template and args.provider_template:
        raise CommandError("give --template (local) or --provider-template (the provider's)")
    templated = args.template or args.provider_template
    if (args.var or args.vars_file or args.batch_file) and not templated:
        raise CommandError(
            "--var, --vars-file and --recipients go with --template or --provider-template"
        )
    if args.provider_template is not None:
        from smtpmailer.intake.http import TEMPLATE_ID

        if not TEMPLATE_ID.match(args.provider_template):
            raise CommandError(f"--provider-template {args.provider_template!r}: not an id")
    if args.provider_template and (args.body is not None or args.body_file or args.html_file):
        raise CommandError("--provider-template: the provider's template gives the body")
    if args.provider_template and not args.batch_file:
        if not args.sender:
            raise CommandError("--from is required")
        headers = [parse_header_option(h) for h in args.header]
        envelope = _maker(args, config, headers, now)(args.to, variables(args, console))
        return _enqueue_one(config, console, envelope, priority, now)
    if templated:
        if args.template and (
            args.subject is not None or args.body is not None or args.body_file or args.html_file
        ):
            raise CommandError("--template gives the subject and body: no --subject or --body")
        if args.extract or args.recipients:
            raise CommandError("--template builds the message: no -t or RCPT arguments")
        if not args.sender:
            raise CommandError("--from is required")
        if args.batch_file:
            return _send_batch(args, config, console, priority, now)
    if args.extract or args.recipients:
        if args.subject is not None or args.to or args.cc or args.bcc or args.attach:
            raise CommandError(
                "-t and RCPT arguments read a whole message from stdin; "
                "--to/--cc/--bcc/--subject/--attach build one instead"
            )
        data = console.stdin_bytes.read()
        envelope = prepare_raw(
            data,
            recipients=args.recipients,
            extract_recipients=args.extract,
            sender=args.sender,
            now=now,
        )
    else:
        if not args.sender:
            raise CommandError("--from is required")
        if args.subject is None and not args.template:
            raise CommandError("--subject is required (or use -t to send a message from stdin)")
        if args.body is not None and args.body_file is not None:
            raise CommandError("give --body or --body-file, not both")
        body = args.body if args.body is not None else ""
        if args.body_file is not None:
            body = _read_text(args.body_file, "body file", console)
        html = _read_text(args.html_file, "HTML file", console) if args.html_file else None
        subject = args.subject
        if args.template:
            from smtpmailer.intake.templates import templates_for

            templates = templates_for(config.templates.path)
            rendered = templates.render(args.template, variables(args, console))
            subject, body, html = rendered.subject, rendered.text, rendered.html
        envelope = build_message(
            sender=args.sender,
            to=args.to,
            cc=args.cc,
            bcc=args.bcc,
            subject=subject,
            body=body,
            html=html,
            attachments=[Attachment.from_path(p) for p in args.attach],
            headers=[parse_header_option(h) for h in args.header],
            now=now,
        )
    return _enqueue_one(config, console, envelope, priority, now)


def _enqueue_one(config: Config, console: Console, envelope: Any, priority: int, now: float) -> int:
    from smtpmailer.intake.checks import enqueue_envelope, wake_daemon

    store = open_queue(config)
    try:
        message_id = enqueue_envelope(store, config, envelope, priority, now)
    finally:
        store.close()
    console.say(message_id)
    wake_daemon(config)
    return 0


def add_commands(commands: Any) -> None:
    send = commands.add_parser("send", help="queue a message; prints its queue id")
    send.add_argument(
        "--from", dest="sender", metavar="ADDRESS", help="the sender: address or 'Name <address>'"
    )
    send.add_argument("--to", action="append", default=[], metavar="ADDRESS", help="a recipient")
    send.add_argument("--cc", action="append", default=[], metavar="ADDRESS", help="a copy to")
    send.add_argument(
        "--bcc", action="append", default=[], metavar="ADDRESS", help="a hidden recipient"
    )
    send.add_argument("--subject", help="the Subject: header")
    send.add_argument("--body", help="the text body")
    send.add_argument("--body-file", metavar="FILE", help="'-' reads stdin")
    send.add_argument("--html-file", metavar="FILE", help="an HTML alternative to the text")
    send.add_argument("--attach", action="append", default=[], metavar="FILE", help="attach a file")
    send.add_argument(
        "--header", action="append", default=[], metavar="'K: V'", help="an extra header"
    )
    send.add_argument("--priority", default="normal", help="high, normal, low or 0-9")
    send.add_argument(
        "--template", metavar="NAME", help="build the message from a [Templates] template"
    )
    send.add_argument(
        "--provider-template",
        metavar="ID",
        help="the API provider's own template (SendGrid, Postmark, Mailgun, Brevo, Mailjet)",
    )
    send.add_argument(
        "--var", action="append", default=[], metavar="KEY=VALUE", help="a template variable"
    )
    send.add_argument(
        "--vars-file", metavar="FILE", help="template variables, a JSON object ('-': stdin)"
    )
    send.add_argument(
        "--recipients",
        dest="batch_file",
        metavar="FILE.csv",
        help="with --template: a message to each row (header row: to or email, then variables)",
    )
    send.add_argument(
        "-t",
        dest="extract",
        action="store_true",
        help="read a raw message from stdin; recipients from To/Cc/Bcc",
    )
    send.add_argument(
        "recipients",
        nargs="*",
        metavar="RCPT",
        help="read a raw message from stdin and send it to these recipients",
    )
    send.set_defaults(handler=cmd_send)
