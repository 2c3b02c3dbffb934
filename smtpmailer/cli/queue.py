"""``smtpmailer queue ...``: list, show, retry, hold, release and delete messages; stats."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import IO, TYPE_CHECKING, Any

from smtpmailer.cli.common import CommandError, Console, open_queue

if TYPE_CHECKING:
    from smtpmailer.config import Config
    from smtpmailer.queue import MessageInfo, QueueStore


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


def list_messages(
    store: QueueStore,
    now: float,
    out: IO[str],
    state: str | None = None,
    limit: int | None = None,
    as_json: bool = False,
) -> None:
    """Like ``mailq``; ``sendmail -bp`` calls this too."""
    from smtpmailer.queue import STATES

    if state and state not in STATES:
        raise CommandError(f"--state {state!r} is not one of: {', '.join(STATES)}")
    messages = store.messages(state=state, limit=limit)
    if as_json:
        _write_json_stream((m.as_json(now) for m in messages), out)
        return
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
    print(f"-- {_count(count)}" if count else "Mail queue is empty", file=out)


def show_message(
    store: QueueStore, now: float, out: IO[str], message_id: str, as_json: bool
) -> None:
    from smtpmailer.queue import QueueError

    info = store.show(message_id)
    if as_json:
        print(json.dumps(info.as_json(now, with_history=True), indent=2, sort_keys=True), file=out)
        return
    _print_message(info, now, out)
    if info.relay or info.relay_address:
        where = f" ({info.relay_address})" if info.relay_address else ""
        print(f"relay: {info.relay or '?'}{where}", file=out)
    if info.last_error:
        print(f"last error: {info.last_error}", file=out)
    if info.origin_text():
        print(f"built from: {info.origin_text()}", file=out)
    if info.history:
        print("attempts:", file=out)
        for attempt in info.history:
            for line in attempt.as_text():
                print(f"  {line}", file=out)
    try:
        body = store.body(message_id)
    except QueueError:  # sent: the content is no longer kept
        return
    head = body.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    print("", file=out)
    print(head.replace("\r\n", "\n"), file=out)


def retry_all(store: QueueStore, now: float, out: IO[str]) -> None:
    """Every deferred message due now; ``sendmail -q`` calls this too."""
    count = store.retry_all(now)
    print(f"{count} deferred message{'s' if count != 1 else ''} queued for delivery", file=out)


# The actions that only look: they open the queue read-only and never take its write lock.
LOOKING = ("list", "show", "stats", "nodes")


def _one_or_all(args: argparse.Namespace) -> None:
    if args.all == bool(args.id):
        raise CommandError("give a message ID or --all")


def check_or_salvage(action: str, config: Config, console: Console) -> int:
    """``queue check`` and ``queue salvage``: for a queue file that may be damaged, so
    they do not open it as a store."""
    from smtpmailer.daemon.lock import holder
    from smtpmailer.queue import repair

    path = config.queue.path
    if action == "check":
        problems = repair.check(path)
        if not problems:
            console.say(f"{path}: ok")
            return 0
        for problem in problems:
            console.say(f"{path}: {problem}")
        console.warn(
            f"smtpmailer: {path} is damaged; stop the daemon and run: smtpmailer queue salvage"
        )
        return 1
    if holder(config.daemon.state_dir) is not None:
        raise CommandError("the daemon is running: stop it first (smtpmailer stop)")
    report = repair.salvage(path)
    console.say(f"{_count(report.copied)} copied into a new {path}")
    if report.lost or report.unreadable_rows:
        console.say(
            f"lost: {_count(len(report.lost) + report.unreadable_rows)}"
            + (f" ({', '.join(report.lost[:20])})" if report.lost else "")
        )
    console.say(f"the damaged file is kept as {report.kept}")
    return 0


def cmd_queue(args: argparse.Namespace, config: Config, console: Console) -> int:
    from smtpmailer.intake.checks import wake_daemon

    out = console.out
    action = args.queue_command
    if action in ("check", "salvage"):
        return check_or_salvage(action, config, console)
    if action == "migrate":
        return migrate_from(args.source, config, console)
    store = open_queue(config, read_only=action in LOOKING)
    now = time.time()
    try:
        if action == "list":
            list_messages(store, now, out, args.state, args.limit, args.json)
        elif action == "show":
            show_message(store, now, out, args.id, args.json)
        elif action == "stats":
            _stats(store, now, args.json, out)
        elif action == "nodes":
            _nodes(store, now, args.json, out)
        elif action == "delete":
            store.delete(args.id)
            print(f"{args.id}: deleted", file=out)
        elif action == "retry":
            _one_or_all(args)
            if args.all:
                retry_all(store, now, out)
            else:
                store.retry(args.id, now)
                print(f"{args.id}: queued for delivery", file=out)
        elif action == "hold":
            _one_or_all(args)
            if args.all:
                print(f"{_count(store.hold_all())} held", file=out)
            else:
                store.hold(args.id)
                print(f"{args.id}: held", file=out)
        elif action == "release":
            _one_or_all(args)
            if args.all:
                print(f"{_count(store.release_all(now))} released", file=out)
            else:
                store.release(args.id, now)
                print(f"{args.id}: released", file=out)
        else:
            raise AssertionError(action)
    finally:
        store.close()
    if action in ("retry", "release"):
        wake_daemon(config)
    return 0


def migrate_from(source: str, config: Config, console: Console) -> int:
    """``queue migrate --from sqlite:PATH``: resumable, idempotent, with counts."""
    from smtpmailer.daemon.lock import holder
    from smtpmailer.queue.migrate import migrate

    kind, _, path = source.partition(":")
    if kind != "sqlite" or not path:
        raise CommandError(
            "--from takes sqlite:PATH, e.g. sqlite:/var/lib/smtpmailer/queue.sqlite3"
        )
    if config.queue.backend != "postgresql":
        raise CommandError("queue migrate copies into backend = postgresql: set it first")
    folder = os.path.dirname(os.path.abspath(path))
    if holder(folder) is not None:
        raise CommandError(f"a daemon is running on {path}: stop it first")
    store = open_queue(config)
    try:
        report = migrate(path, store)
    finally:
        store.close()
    console.say(
        f"{_count(report.copied)} copied from {path}, {_count(report.already_there)} already there"
    )
    return 0


def _nodes(store: QueueStore, now: float, as_json: bool, out: IO[str]) -> None:
    """The daemons sharing this queue: how long since each heartbeat, the leases it holds."""
    nodes = getattr(store, "nodes", None)
    if nodes is None:
        raise CommandError(
            "queue nodes is for a shared queue (backend = postgresql); this one is a "
            "SQLite file with one daemon"
        )
    found = nodes(now)
    if as_json:
        print(json.dumps(found, indent=2, sort_keys=True), file=out)
        return
    print(f"{'NODE':<24} {'HEARTBEAT':>10} {'LEASES':>7}  STATE", file=out)
    for node in found:
        state = "alive" if node["alive"] else "silent (its leases go to the others)"
        age = f"{node['heartbeat_age']:.0f}s ago"
        print(f"{node['node']:<24} {age:>10} {node['leases']:>7}  {state}", file=out)


def _stats(store: QueueStore, now: float, as_json: bool, out: IO[str]) -> None:
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
        return
    for state in STATES:
        print(f"{state:<10} {counts.get(state, 0):>9}", file=out)
    print(f"{'oldest':<10} {_age(now - oldest) if oldest is not None else '-':>9}", file=out)
    print(
        f"last hour: {rates['sent']} sent, {rates['failed']} failed, {rates['deferred']} deferred",
        file=out,
    )


def add_commands(commands: Any) -> None:
    queue = commands.add_parser("queue", help="inspect and manage the queue")
    queue.set_defaults(handler=cmd_queue)
    actions = queue.add_subparsers(dest="queue_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list messages, oldest first (like mailq)")
    listing.add_argument(
        "--state", help="only this state: queued, deferred, active, held, failed, sent"
    )
    listing.add_argument("--limit", type=int, help="at most this many messages")
    listing.add_argument("--json", action="store_true", help="a JSON array, one object each")
    show = actions.add_parser("show", help="one message with its headers")
    show.add_argument("id", help="the queue id")
    show.add_argument(
        "--json", action="store_true", help="as JSON (recipients, relay, last errors)"
    )
    retry = actions.add_parser("retry", help="attempt a message now; --all flushes deferred")
    retry.add_argument("id", nargs="?", help="the queue id")
    retry.add_argument("--all", action="store_true", help="every deferred message")
    actions.add_parser("delete", help="remove a message").add_argument("id", help="the queue id")
    for name, text in (
        ("hold", "keep a message (or --all) from delivery"),
        ("release", "let a held message (or --all) go"),
    ):
        held = actions.add_parser(name, help=text)
        held.add_argument("id", nargs="?", help="the queue id")
        held.add_argument("--all", action="store_true", help="every message that could be")
    actions.add_parser("check", help="check the queue file for damage (SQLite's integrity check)")
    actions.add_parser(
        "salvage",
        help="copy what can be read of a damaged queue into a new file (daemon stopped)",
    )
    migrating = actions.add_parser(
        "migrate", help="copy a SQLite queue into the PostgreSQL queue (resumable)"
    )
    migrating.add_argument(
        "--from", dest="source", required=True, metavar="sqlite:PATH", help="the SQLite queue"
    )
    nodes = actions.add_parser(
        "nodes", help="shared queue: the daemons on it, their heartbeat age and leases"
    )
    nodes.add_argument("--json", action="store_true", help="as a JSON array")
    stats = actions.add_parser("stats", help="counts by state, oldest age, last hour's outcomes")
    stats.add_argument("--json", action="store_true", help="as one JSON object")
