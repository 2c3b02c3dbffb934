"""``smtpmailer sendmail`` / ``smtpmailer-sendmail``: a drop-in /usr/sbin/sendmail.

What cron, PHP's mail(), git send-email and monitoring tools call: the message on stdin,
recipients as arguments or from the headers (-t). Exit statuses are sendmail's (sysexits).
Imports are lazy: this runs once per message.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO

import attrs

# sysexits.h
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_CONFIG = 78

USAGE = (
    "usage: sendmail [-t] [-i|-oi] [-f SENDER|-r SENDER] [-F NAME] [-v] [RECIPIENT ...]\n"
    "       sendmail -bp      (list the queue)\n"
    "       sendmail -q       (retry every deferred message now)"
)


class UsageError(Exception):
    pass


@attrs.define
class Arguments:
    extract: bool = False
    ignore_dots: bool = False
    sender: str | None = None
    full_name: str | None = None
    verbose: bool = False
    mode: str = "deliver"  # deliver, list, flush
    recipients: list[str] = attrs.Factory(list)
    config: str | None = None


def parse_arguments(argv: Sequence[str]) -> Arguments:
    """sendmail's own syntax: ``-fADDR`` or ``-f ADDR``, ``-oi``, ``-odb``, ``-bp``..."""
    args = Arguments()
    items = list(argv)
    index = 0

    def value(option: str, rest: str) -> str:
        nonlocal index
        if rest:
            return rest
        index += 1
        if index >= len(items):
            raise UsageError(f"option {option} needs a value")
        return items[index]

    while index < len(items):
        item = items[index]
        if item == "--":
            args.recipients += items[index + 1 :]
            break
        if item.startswith("--config"):
            args.config = value("--config", item.partition("=")[2])
        elif not item.startswith("-") or item == "-":
            args.recipients.append(item)
        else:
            flag, rest = item[1:2], item[2:]
            if flag == "t":
                args.extract = True
                if rest == "i":  # -ti
                    args.ignore_dots = True
            elif flag == "i":
                args.ignore_dots = True
            elif flag in ("f", "r"):
                args.sender = value(f"-{flag}", rest)
            elif flag == "F":
                args.full_name = value("-F", rest)
            elif flag == "v":
                args.verbose = True
            elif flag == "o":
                if rest == "i":
                    args.ignore_dots = True
                elif rest in ("", "A", "B", "C", "F", "L", "X"):
                    value(f"-o{rest}", "")  # an option with its value in the next word
                # -odb, -oem, -oee, -om ...: accepted; they mean nothing here.
            elif flag == "b":
                if rest == "p":
                    args.mode = "list"
                elif rest in ("m", ""):
                    args.mode = "deliver"
                else:
                    raise UsageError(f"-b{rest} is not supported (only -bm and -bp)")
            elif flag == "q":
                args.mode = "flush"
            elif flag in ("B", "N", "R", "V", "L", "h", "X", "O"):
                value(f"-{flag}", rest)  # accepted and ignored, with their value
            elif flag in ("U", "G", "n", "m", "e", "x", "s", "d"):
                pass  # old flags sendmail still takes
            else:
                raise UsageError(f"unknown option {item}")
        index += 1
    return args


def read_message(stream: IO[bytes], ignore_dots: bool) -> bytes:
    """Read stdin; without -i a line holding only '.' ends the message, as in sendmail."""
    if ignore_dots:
        return stream.read()
    lines = []
    for line in stream:
        if line.rstrip(b"\r\n") == b".":
            break
        lines.append(line)
    return b"".join(lines)


def _local_domain() -> str:
    import socket

    host = socket.gethostname() or "localhost"
    return host if "." in host else host + ".localdomain"


def qualify(address: str) -> str:
    """``root`` becomes ``root@HOST``: cron and scripts name local users, and sendmail has
    always qualified them with the host's name."""
    address = address.strip()
    if address and "@" not in address and "<" not in address:
        return f"{address}@{_local_domain()}"
    return address


def _local_sender() -> str:
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "nobody"
    return qualify(user)


def _header_sender(data: bytes) -> str | None:
    """The first address of the From header, if the message has one."""
    import email.utils
    from email.parser import BytesParser

    headers = BytesParser().parsebytes(data, headersonly=True)
    addresses = email.utils.getaddresses(headers.get_all("from", []))
    return addresses[0][1] if addresses and addresses[0][1] else None


def _add_from(data: bytes, sender: str, full_name: str | None) -> bytes:
    """A message without a From header gets one, from -f/-F or the calling user."""
    import email.utils

    head = data.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    for line in head.splitlines():
        if line[:5].lower() == b"from:":
            return data
    value = email.utils.formataddr((full_name or "", sender))
    from email.header import Header

    if not value.isascii():
        value = email.utils.formataddr((str(Header(full_name or "", "utf-8")), sender))
    return f"From: {value}\r\n".encode() + data


def run(argv: Sequence[str], stdin: IO[bytes], out: IO[str], err: IO[str]) -> int:
    try:
        args = parse_arguments(argv)
    except UsageError as error:
        print(f"sendmail: {error}\n{USAGE}", file=err)
        return EX_USAGE
    if args.mode != "deliver":
        from smtpmailer.cli import main

        command = ["queue", "list"] if args.mode == "list" else ["queue", "retry", "--all"]
        prefix = ["--config", args.config] if args.config else []
        code = main([*prefix, *command], out=out)
        return EX_OK if code == 0 else EX_TEMPFAIL
    from smtpmailer.config import load_config
    from smtpmailer.ini import ConfigError
    from smtpmailer.message import MessageError, prepare_raw
    from smtpmailer.queue import PRIORITY_NAMES, QueueError, QueueFull
    from smtpmailer.submit import check_envelope, enqueue_envelope, wake_daemon

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"sendmail: {error}", file=err)
        return EX_CONFIG
    if not args.extract and not args.recipients:
        print(f"sendmail: no recipients (give them as arguments, or use -t)\n{USAGE}", file=err)
        return EX_USAGE
    try:
        data = read_message(stdin, args.ignore_dots)
    except OSError as error:
        print(f"sendmail: cannot read the message: {error}", file=err)
        return EX_IOERR
    import time

    now = time.time()
    try:
        sender = qualify(args.sender or _header_sender(data) or _local_sender())
        data = _add_from(data, sender, args.full_name)
        envelope = check_envelope(
            config,
            prepare_raw(
                data,
                recipients=args.recipients,
                extract_recipients=args.extract,
                sender=sender,
                now=now,
                qualify=qualify,
            ),
        )
    except MessageError as error:
        print(f"sendmail: {error}", file=err)
        return EX_DATAERR
    try:
        from smtpmailer.queue.sqlite import SQLiteQueue

        store = SQLiteQueue(config.queue.path)
        try:
            message_id = enqueue_envelope(store, config, envelope, PRIORITY_NAMES["normal"], now)
        finally:
            store.close()
    except MessageError as error:  # too big
        print(f"sendmail: {error}", file=err)
        return EX_DATAERR
    except QueueFull as error:
        print(f"sendmail: {error}; try again later", file=err)
        return EX_TEMPFAIL
    except QueueError as error:
        print(f"sendmail: {error}", file=err)
        return EX_TEMPFAIL if "busy" in str(error) else EX_CANTCREAT
    if args.verbose:
        print(f"queued as {message_id} for {', '.join(envelope.recipients)}", file=out)
    wake_daemon(config)
    return EX_OK


def main() -> None:
    sys.exit(run(sys.argv[1:], sys.stdin.buffer, sys.stdout, sys.stderr))


if __name__ == "__main__":
    main()
