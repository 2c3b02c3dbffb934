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


def cmd_send(args: argparse.Namespace, config: Config, console: Console) -> int:
    from smtpmailer.intake.checks import enqueue_envelope, wake_daemon
    from smtpmailer.message import Attachment, build_message, parse_header_option, prepare_raw
    from smtpmailer.queue import parse_priority

    try:
        priority = parse_priority(args.priority)
    except ValueError as error:
        raise CommandError(str(error)) from None
    now = time.time()
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
        if args.subject is None:
            raise CommandError("--subject is required (or use -t to send a message from stdin)")
        if args.body is not None and args.body_file is not None:
            raise CommandError("give --body or --body-file, not both")
        body = args.body if args.body is not None else ""
        if args.body_file is not None:
            body = _read_text(args.body_file, "body file", console)
        html = _read_text(args.html_file, "HTML file", console) if args.html_file else None
        envelope = build_message(
            sender=args.sender,
            to=args.to,
            cc=args.cc,
            bcc=args.bcc,
            subject=args.subject,
            body=body,
            html=html,
            attachments=[Attachment.from_path(p) for p in args.attach],
            headers=[parse_header_option(h) for h in args.header],
            now=now,
        )
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
