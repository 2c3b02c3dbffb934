"""Managing the running daemon: start, stop, status, reload, and health for monitors."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from smtpmailer.cli.common import CommandError, Console

if TYPE_CHECKING:
    from smtpmailer.config import Config


def status_url(config: Config) -> str:
    """Where the running daemon's status service answers: what it wrote at start, else
    what the config asks for."""
    import os

    from smtpmailer.endpoints import parse_listen

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


def cmd_health(args: argparse.Namespace, config: Config, console: Console) -> int:
    """For monitors: one nagios-style line; exit 0 when /health says ok, else 1."""
    import urllib.error
    import urllib.request

    out = console.out
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


def cmd_daemon(args: argparse.Namespace, console: Console) -> int:
    """start/stop/status/reload: these work even when the config file is broken now."""
    from smtpmailer.daemon import control

    target = control.find_daemon(args.config)
    pidfile = args.pidfile or target.daemon.pid_file
    action = args.command
    if target.problem and action != "start":
        console.warn(f"smtpmailer: warning: {target.problem}")
    if action == "status":
        result = control.status(target, pidfile)
    elif action == "start":
        result = control.start(target, pidfile)
    elif action == "stop":
        result = control.stop(target, pidfile)
    else:
        result = control.reload(target, pidfile)
    quiet = result.code in (0, control.EXIT_NOT_RUNNING)
    print(result.message, file=console.out if quiet else console.err)
    return result.code


def add_commands(commands: Any) -> None:
    for name, text in (
        ("start", "start the daemon in the background; returns once it is ready"),
        ("stop", "stop the daemon (SIGTERM); in-flight deliveries may finish"),
        ("status", "is the daemon running? exit 0 if so, 3 if not"),
        ("reload", "re-read the config (SIGHUP) and report whether it was applied"),
    ):
        daemon = commands.add_parser(name, help=text)
        daemon.add_argument("--pidfile", help="default: [Daemon] pid_file")
        daemon.set_defaults(handler=None, daemon_handler=cmd_daemon)

    health = commands.add_parser("health", help="exit 0 if the daemon's /health is ok, else 1")
    health.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    health.set_defaults(handler=cmd_health)
