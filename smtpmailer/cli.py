"""The ``smtpmailer`` command: send mail into the queue, inspect and manage it, check config.

Imports stay inside the commands: ``send`` is run by cron jobs and scripts once per message,
and must not pay for Twisted or OpenSSL.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from smtpmailer.config import Config
    from smtpmailer.queue import MessageInfo
    from smtpmailer.queue.sqlite import SQLiteQueue


class CommandError(Exception):
    """A failure the user must fix: printed as one line on stderr, exit status 1."""


def _read_text(path: str, what: str) -> str:
    try:
        if path == "-":
            return sys.stdin.read()
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as error:
        raise CommandError(f"cannot read {what} {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{what} {path} is not UTF-8 text") from None


def _open_queue(config: Config) -> SQLiteQueue:
    from smtpmailer.queue.sqlite import SQLiteQueue

    return SQLiteQueue(config.queue.path)


def cmd_send(args: argparse.Namespace, config: Config, out: IO[str]) -> int:
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
        data = sys.stdin.buffer.read()
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
            body = _read_text(args.body_file, "body file")
        html = _read_text(args.html_file, "HTML file") if args.html_file else None
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
    store = _open_queue(config)
    try:
        message_id = enqueue_envelope(store, config, envelope, priority, now)
    finally:
        store.close()
    print(message_id, file=out, flush=True)
    wake_daemon(config)
    return 0


def _count(number: int) -> str:
    return f"{number} message{'s' if number != 1 else ''}"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _print_message(info: MessageInfo, now: float, out: IO[str]) -> None:
    from smtpmailer.queue import DEFERRED, priority_name

    print(
        f"{info.id:<15} {info.state:<9} {priority_name(info.priority):<7} "
        f"{_age(now - info.created):>5} {info.attempts:>5}  {info.size:>8}  <{info.sender}>",
        file=out,
    )
    for rcpt in info.recipients:
        note = f" ({rcpt.state})" if rcpt.state != "pending" else ""
        error = f"  {rcpt.last_error}" if rcpt.last_error else ""
        print(f"{'':16}-> <{rcpt.address}>{note}{error}", file=out)
    if info.state == DEFERRED:
        print(f"{'':16}next attempt in {_age(info.next_attempt - now)}", file=out)


def _write_json_stream(items: object, out: IO[str]) -> int:
    """Write an iterable as a JSON array one item at a time: memory stays flat."""
    count = 0
    out.write("[")
    for item in items:  # type: ignore[attr-defined]
        out.write(",\n " if count else "\n ")
        out.write(json.dumps(item, sort_keys=True))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def cmd_queue(args: argparse.Namespace, config: Config, out: IO[str]) -> int:
    from smtpmailer.intake.checks import wake_daemon
    from smtpmailer.queue import STATES

    store = _open_queue(config)
    now = time.time()
    try:
        action = args.queue_command
        if action == "list":
            if args.state and args.state not in STATES:
                raise CommandError(f"--state {args.state!r} is not one of: {', '.join(STATES)}")
            messages = store.messages(state=args.state, limit=args.limit)
            if args.json:
                _write_json_stream((m.as_json(now) for m in messages), out)
                return 0
            count = 0
            for info in messages:
                if count == 0:
                    print(
                        f"{'ID':<15} {'STATE':<9} {'PRIO':<7} {'AGE':>5} {'TRIES':>5}  "
                        f"{'SIZE':>8}  SENDER / RECIPIENTS",
                        file=out,
                    )
                _print_message(info, now, out)
                count += 1
            print(
                f"-- {count} message{'s' if count != 1 else ''}"
                if count
                else "Mail queue is empty",
                file=out,
            )
            return 0
        if action == "show":
            info = store.show(args.id)
            if args.json:
                print(json.dumps(info.as_json(now), indent=2, sort_keys=True), file=out)
                return 0
            _print_message(info, now, out)
            if info.last_error:
                print(f"last error: {info.last_error}", file=out)
            try:
                body = store.body(args.id)
            except Exception:
                return 0
            head = body.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
            print("", file=out)
            print(head.replace("\r\n", "\n"), file=out)
            return 0
        if action == "stats":
            return _stats(store, now, args.json, out)
        if action == "retry":
            if args.all == bool(args.id):
                raise CommandError("give a message ID or --all")
            if args.all:
                count = store.retry_all(now)
                print(
                    f"{count} deferred message{'s' if count != 1 else ''} queued for delivery",
                    file=out,
                )
            else:
                store.retry(args.id, now)
                print(f"{args.id}: queued for delivery", file=out)
            wake_daemon(config)
            return 0
        if action in ("hold", "release"):
            if args.all == bool(args.id):
                raise CommandError("give a message ID or --all")
            if action == "hold":
                if args.all:
                    print(f"{_count(store.hold_all())} held", file=out)
                else:
                    store.hold(args.id)
                    print(f"{args.id}: held", file=out)
                return 0
            if args.all:
                print(f"{_count(store.release_all(now))} released", file=out)
            else:
                store.release(args.id, now)
                print(f"{args.id}: released", file=out)
            wake_daemon(config)
            return 0
        if action == "delete":
            store.delete(args.id)
            print(f"{args.id}: deleted", file=out)
            return 0
        raise AssertionError(action)
    finally:
        store.close()


def _stats(store: SQLiteQueue, now: float, as_json: bool, out: IO[str]) -> int:
    from smtpmailer.queue import STATES

    counts = store.counts()
    oldest = store.oldest_pending()
    rates = store.recent_outcomes(now - 3600)
    stats = {
        "counts": {state: counts.get(state, 0) for state in STATES},
        "oldest_pending_age": round(now - oldest, 3) if oldest is not None else None,
        "last_hour": rates,
    }
    if as_json:
        print(json.dumps(stats, indent=2, sort_keys=True), file=out)
        return 0
    for state in STATES:
        print(f"{state:<10} {counts.get(state, 0):>9}", file=out)
    print(f"{'oldest':<10} {_age(now - oldest) if oldest is not None else '-':>9}", file=out)
    print(
        f"last hour: {rates['sent']} sent, {rates['failed']} failed, {rates['deferred']} deferred",
        file=out,
    )
    return 0


def cmd_config(args: argparse.Namespace, config: Config, out: IO[str]) -> int:
    from smtpmailer.config import render_config

    if args.check:
        print(f"{config.path}: OK", file=out)
        return 0
    out.write(render_config(config))
    return 0


def status_url(config: Config) -> str:
    """Where the running daemon's status service answers: what it wrote at start, else
    what the config asks for."""
    import os

    from smtpmailer.listeners import parse_listen

    try:
        with open(os.path.join(config.daemon.state_dir, "status.url")) as handle:
            return handle.read().strip()
    except OSError:
        pass
    if not config.status.listen:
        raise CommandError("the status service is off ([Status] listen is empty)")
    spec = parse_listen(config.status.listen)
    if spec.kind == "unix":
        raise CommandError("the status service listens on a UNIX socket; use curl --unix-socket")
    host = "127.0.0.1" if spec.interface in ("0.0.0.0", "::") else spec.interface
    return f"http://{'[' + host + ']' if ':' in host else host}:{spec.port}"


def cmd_test(args: argparse.Namespace, config: Config, out: IO[str]) -> int:
    """Connect to each relay (or --relay NAME): EHLO, STARTTLS, AUTH, QUIT, step by step."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred

    from smtpmailer.config import MaildirRelayConfig
    from smtpmailer.delivery.smtp.protocol import SMTPClientProtocol
    from smtpmailer.delivery.smtp.session import SMTPSession
    from smtpmailer.delivery.smtp.transport import describe_error, start_tls, tcp_connector

    relays = [r for r in config.relays if args.relay in (None, r.name)]
    if not relays:
        names = ", ".join(r.name for r in config.relays)
        raise CommandError(f"no relay named {args.relay!r} (relays: {names})")
    failures = 0

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    async def probe() -> None:
        nonlocal failures
        connect = tcp_connector(reactor)
        for relay in relays:
            if isinstance(relay, MaildirRelayConfig):
                say(f"[{relay.name}] maildir {relay.path}: nothing to connect to")
                continue
            say(f"[{relay.name}] {relay.host}:{relay.port} security={relay.security}")
            protocol = SMTPClientProtocol(reactor, relay.timeout)
            try:
                await connect(relay, protocol)
                peer = protocol.transport.getPeer()  # type: ignore[union-attr]
                say(f"  connect: ok ({getattr(peer, 'host', '?')})")
                session = SMTPSession(protocol, relay, relay.helo or "localhost", start_tls(relay))
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


def cmd_hash_password(args: argparse.Namespace, config: Config, out: IO[str]) -> int:
    """``user:$(smtpmailer hash-password)`` is a users_file line."""
    import bcrypt

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise CommandError("empty password")
    print(bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode(), file=out)
    return 0


def cmd_health(args: argparse.Namespace, config: Config, out: IO[str]) -> int:
    """For monitors: one nagios-style line; exit 0 when /health says ok, else 1."""
    import urllib.error
    import urllib.request

    url = status_url(config) + "/health"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as response:  # noqa: S310
            report = json.load(response)
    except urllib.error.HTTPError as error:
        report = json.load(error) if error.code == 503 else {"reasons": [f"HTTP {error.code}"]}
    except (OSError, ValueError) as error:
        print(f"SMTPMAILER CRITICAL - cannot reach {url}: {error}", file=out)
        return 1
    queue = report.get("queue", {})
    counts = " ".join(
        f"{state}={queue.get(state, 0)}"
        for state in ("queued", "deferred", "active", "held", "failed")
    )
    if report.get("status") == "ok":
        oldest = report.get("oldest_pending_age")
        age = f"{oldest:.0f}s" if oldest is not None else "-"
        print(f"SMTPMAILER OK - {counts} oldest={age}", file=out)
        return 0
    print(f"SMTPMAILER CRITICAL - {'; '.join(report.get('reasons', []))} | {counts}", file=out)
    return 1


def cmd_daemon(args: argparse.Namespace, out: IO[str]) -> int:
    """start/stop/status/reload: these work even when the config file is broken now."""
    from smtpmailer import control

    target = control.find_daemon(args.config)
    pidfile = args.pidfile or target.daemon.pid_file
    action = args.command
    if target.problem and action != "start":
        print(f"smtpmailer: warning: {target.problem}", file=sys.stderr)
    if action == "status":
        result = control.status(target, pidfile)
    elif action == "start":
        result = control.start(target, pidfile)
    elif action == "stop":
        result = control.stop(target, pidfile)
    else:
        result = control.reload(target, pidfile)
    print(result.message, file=out if result.code in (0, control.EXIT_NOT_RUNNING) else sys.stderr)
    return result.code


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

    send = commands.add_parser("send", help="queue a message; prints its queue id")
    send.add_argument("--from", dest="sender", metavar="ADDRESS")
    send.add_argument("--to", action="append", default=[], metavar="ADDRESS")
    send.add_argument("--cc", action="append", default=[], metavar="ADDRESS")
    send.add_argument("--bcc", action="append", default=[], metavar="ADDRESS")
    send.add_argument("--subject")
    send.add_argument("--body")
    send.add_argument("--body-file", metavar="FILE", help="'-' reads stdin")
    send.add_argument("--html-file", metavar="FILE")
    send.add_argument("--attach", action="append", default=[], metavar="FILE")
    send.add_argument("--header", action="append", default=[], metavar="'K: V'")
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

    queue = commands.add_parser("queue", help="inspect and manage the queue")
    queue.set_defaults(handler=cmd_queue)
    actions = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list messages, oldest first (like mailq)")
    listing.add_argument("--state")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--json", action="store_true")
    show = actions.add_parser("show", help="one message with its headers")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    retry = actions.add_parser("retry", help="attempt a message now; --all flushes deferred")
    retry.add_argument("id", nargs="?")
    retry.add_argument("--all", action="store_true")
    actions.add_parser("delete", help="remove a message").add_argument("id")
    for name, text in (
        ("hold", "keep a message (or --all) from delivery"),
        ("release", "let a held message (or --all) go"),
    ):
        held = actions.add_parser(name, help=text)
        held.add_argument("id", nargs="?")
        held.add_argument("--all", action="store_true")
    stats = actions.add_parser("stats", help="counts by state, oldest age, last hour's outcomes")
    stats.add_argument("--json", action="store_true")

    for name, text in (
        ("start", "start the daemon in the background; returns once it is ready"),
        ("stop", "stop the daemon (SIGTERM); in-flight deliveries may finish"),
        ("status", "is the daemon running? exit 0 if so, 3 if not"),
        ("reload", "re-read the config (SIGHUP) and report whether it was applied"),
    ):
        daemon = commands.add_parser(name, help=text)
        daemon.add_argument("--pidfile", help="default: [Daemon] pid_file")
        daemon.set_defaults(handler=None, daemon_handler=cmd_daemon)

    probe = commands.add_parser("test", help="connect to the relay(s): EHLO, STARTTLS, AUTH, QUIT")
    probe.add_argument("--relay", metavar="NAME", help="only this [Relay:NAME]")
    probe.set_defaults(handler=cmd_test)

    hashing = commands.add_parser(
        "hash-password", help="print a bcrypt hash for [Submission] users_file (reads stdin)"
    )
    hashing.set_defaults(handler=cmd_hash_password)

    # Routed before argparse (sendmail's syntax); listed here for --help.
    commands.add_parser(
        "sendmail", help="sendmail-compatible: -t, -i/-oi, -f, -F, -bp, -q; message on stdin"
    )
    health = commands.add_parser("health", help="exit 0 if the daemon's /health is ok, else 1")
    health.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    health.set_defaults(handler=cmd_health)

    config = commands.add_parser("config", help="print the effective config (secrets redacted)")
    config.add_argument("--check", action="store_true", help="only validate")
    config.set_defaults(handler=cmd_config)
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


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    from smtpmailer.config import load_config
    from smtpmailer.ini import ConfigError
    from smtpmailer.message import MessageError
    from smtpmailer.queue import QueueError

    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    sendmail_args = _sendmail_arguments(argv)
    if sendmail_args is not None:
        from smtpmailer.intake.sendmail.command import run

        return run(sendmail_args, sys.stdin.buffer, out, sys.stderr)
    args = build_parser().parse_args(argv)
    if getattr(args, "daemon_handler", None):
        return int(args.daemon_handler(args, out))
    handler: Callable[[argparse.Namespace, Config, IO[str]], int] = args.handler
    try:
        config = load_config(args.config)
        for warning in config.warnings:
            print(f"smtpmailer: warning: {warning}", file=sys.stderr)
        return handler(args, config, out)
    except (ConfigError, MessageError, QueueError, CommandError) as error:
        print(f"smtpmailer: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
