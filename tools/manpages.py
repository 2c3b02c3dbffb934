"""Write smtpmailer(8), smtpmailer.conf(5) and smtpmailer-sendmail(8) from the code itself:
the argument parser, the one declaration of config keys, the sendmail option table. Run by
``make install`` (and the tests) with the interpreter of the copy being documented:

    python tools/manpages.py OUTPUT_FOLDER

so the pages cannot drift from what the program accepts.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from collections.abc import Iterator

SOURCE_DATE = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds


def escape(text: str) -> str:
    """Roff-safe text: backslashes, hyphens as minus signs, no line starting a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def header(name: str, section: int, version: str, title: str) -> list[str]:
    stamp = int(SOURCE_DATE) if SOURCE_DATE else None
    when = datetime.datetime.fromtimestamp(stamp or 0, datetime.UTC) if stamp else None
    date = (when or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%d")
    manual = "System Manager's Manual" if section == 8 else "File Formats Manual"
    return [
        f'.TH "{name.upper()}" "{section}" "{date}" "smtpmailer {version}" "{manual}"',
        ".SH NAME",
        f"{escape(name)} \\- {escape(title)}",
    ]


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        if action.option_strings:
            names = ", ".join(action.option_strings)
            if action.nargs != 0:
                names += " " + (action.metavar or action.dest.upper())
        else:
            names = action.metavar or action.dest
        yield names, action.help or ""


def _usage(parser: argparse.ArgumentParser) -> str:
    """``smtpmailer queue show [--json] id``: argparse's usage on one line, without -h."""
    usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
    return usage.replace(" [-h]", "")


def _commands(prefix: str, parser: argparse.ArgumentParser) -> Iterator[str]:
    for name, help_text, sub in _subcommands(parser):
        path = f"{prefix} {name}"
        nested = _subcommands(sub)
        if nested:
            yield from _commands(path, sub)
            continue
        yield f'.SS "{escape(_usage(sub))}"'
        yield escape(help_text[:1].upper() + help_text[1:] + ".") if help_text else ""
        for names, text in _options(sub):
            yield ".TP"
            yield f"\\fB{escape(names)}\\fR"
            yield escape(text)


def smtpmailer_8(version: str) -> str:
    from smtpmailer.cli.main import build_parser

    parser = build_parser()
    lines = header("smtpmailer", 8, version, "an outgoing mail daemon with a durable queue")
    lines += [
        ".SH SYNOPSIS",
        "\\fBsmtpmailer\\fR [\\fB\\-\\-config\\fR \\fIPATH\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".br",
        "\\fBtwistd \\-n smtpmailer\\fR \\fB\\-\\-config\\fR \\fIPATH\\fR",
        ".SH DESCRIPTION",
        escape(
            "smtpmailer keeps every message it accepts in a durable queue and delivers it "
            "through ESMTP relays with retries, exponential backoff, priorities and failover. "
            "Applications hand it mail with smtpmailer send, the sendmail-compatible command, "
            "its local SMTP listener or its HTTP API. The daemon itself runs under twistd; "
            "SIGHUP reloads the configuration, SIGTERM stops it gracefully."
        ),
        ".SH OPTIONS",
    ]
    for names, text in _options(parser):
        lines += [".TP", f"\\fB{escape(names)}\\fR", escape(text)]
    lines += [".SH COMMANDS"]
    lines += [line for line in _commands("smtpmailer", parser) if line != ""]
    lines += [
        ".SH EXIT STATUS",
        "0 on success, 1 on an error (one line on standard error). smtpmailer sendmail "
        "exits with sendmail's codes; see \\fBsmtpmailer\\-sendmail\\fR(8).",
        ".SH ENVIRONMENT",
        ".TP",
        "\\fBSMTPMAILER_CONFIG\\fR",
        "The config file when \\fB\\-\\-config\\fR is not given.",
        ".SH FILES",
        ".TP",
        "\\fI/etc/smtpmailer/smtpmailer.conf\\fR",
        "The configuration; see \\fBsmtpmailer.conf\\fR(5).",
        ".TP",
        "\\fI/var/lib/smtpmailer\\fR",
        "The state folder: the queue, sockets, tokens and keys.",
        ".SH SEE ALSO",
        "\\fBsmtpmailer.conf\\fR(5), \\fBsmtpmailer\\-sendmail\\fR(8), \\fBtwistd\\fR(1)",
    ]
    return "\n".join(lines) + "\n"


def smtpmailer_conf_5(version: str) -> str:
    from smtpmailer.config.declare import declared
    from smtpmailer.config.sections import SECTIONS, TRANSPORT

    lines = header("smtpmailer.conf", 5, version, "configuration of the smtpmailer daemon")
    lines += [
        ".SH SYNOPSIS",
        "\\fI/etc/smtpmailer/smtpmailer.conf\\fR",
        ".SH DESCRIPTION",
        escape(
            "An INI file: [Section] headers, then key = value lines; ; and # start comments. "
            "Unknown sections and keys are errors with FILE:LINE and a did-you-mean hint. "
            "Durations take 30, 30s, 5m, 2h or 5d; sizes 10MB; rates 100/m or 10/s. Paths "
            "are relative to the file's folder. Secrets come from a key, a key_file (mode "
            "0600) or a key_env variable and are never shown or logged. A key written "
            "with nothing after = means empty (for listeners: off)."
        ),
        escape(
            "Relay, OAuth2 and Route sections may be named, [Relay:NAME]; with several "
            "relays each must be."
        ),
    ]
    for section, classes in SECTIONS.items():
        named = section in ("Relay", "API", "OAuth2", "Route")
        lines.append(f'.SH "[{section}{":NAME" if named else ""}]"')
        doc = (classes[0].__doc__ or "").strip()
        if doc and section != "Relay":
            lines.append(escape(" ".join(doc.split())))
        seen: set[str] = set()
        keys: list[tuple[str, str, str | None, str]] = []
        if section == "Relay":
            name, value, default = TRANSPORT
            keys.append((name, value.kind, default, "smtp (an ESMTP relay) or maildir (a capture)"))
        for cls in classes:
            kind_of = getattr(cls, "kind", None)
            for field, spec in declared(cls):
                names = spec.file_names(field)
                if names[0] in seen:
                    continue
                seen.add(names[0])
                meaning = spec.help
                if section == "Relay" and kind_of == "maildir":
                    meaning += " (transport = maildir)"
                if spec.restart:
                    meaning += "; a reload cannot change it (restart)"
                keys.append((", ".join(names), spec.value.kind, spec.default, meaning))
        for names, kind, default, meaning in keys:
            shown = f"default: {default}" if default not in (None, "") else "default: empty"
            lines += [
                ".TP",
                f"\\fB{escape(names)}\\fR ({escape(kind)}; {escape(shown)})",
                escape(meaning + "."),
            ]
    lines += [
        ".SH EXAMPLE",
        ".nf",
        escape("[Relay]\nhost = smtp.example.com\nport = 587\nusername = mailer@example.com"),
        escape("password_file = /etc/smtpmailer/relay-password"),
        ".fi",
        ".SH SEE ALSO",
        "\\fBsmtpmailer\\fR(8), \\fBsmtpmailer\\-sendmail\\fR(8)",
    ]
    return "\n".join(lines) + "\n"


def smtpmailer_sendmail_8(version: str) -> str:
    from smtpmailer.intake.refusals import (
        EX_CONFIG,
        EX_DATAERR,
        EX_IOERR,
        EX_OK,
        EX_TEMPFAIL,
        EX_USAGE,
    )
    from smtpmailer.intake.sendmail.command import OPTIONS

    lines = header("smtpmailer-sendmail", 8, version, "a sendmail-compatible way into smtpmailer")
    lines += [
        ".SH SYNOPSIS",
        "\\fBsmtpmailer\\-sendmail\\fR [\\fB\\-t\\fR] [\\fB\\-i\\fR] [\\fB\\-f\\fR "
        "\\fISENDER\\fR] [\\fB\\-F\\fR \\fINAME\\fR] [\\fIRECIPIENT\\fR ...]",
        ".br",
        "\\fBsmtpmailer sendmail\\fR ...",
        ".SH DESCRIPTION",
        escape(
            "Reads a message on standard input and queues it, as /usr/sbin/sendmail does, "
            "for cron, PHP's mail(), git send-email and monitoring tools. With the daemon "
            "running, the message is handed to it over a UNIX socket and the command exits "
            "after the daemon's commit; without it, the command writes the queue itself. "
            "With -bs it speaks SMTP on standard input and output instead, as Symfony "
            "Mailer, SwiftMailer and Laravel call it: each message is answered with an SMTP "
            "reply (250 with its queue id, or the refusal), and the session exits 0, or 74 "
            "when the client goes away."
        ),
        ".SH OPTIONS",
    ]
    for names, meaning in OPTIONS:
        lines += [
            ".TP",
            f"\\fB{escape(names)}\\fR",
            escape(meaning[:1].upper() + meaning[1:] + "."),
        ]
    lines += [".SH EXIT STATUS"]
    for code, meaning in (
        (EX_OK, "the message is queued"),
        (EX_USAGE, "a command line error"),
        (EX_DATAERR, "a malformed address or message, too large, or too many recipients"),
        (EX_IOERR, "the message could not be read (with -bs: the client went away)"),
        (EX_TEMPFAIL, "the queue is full or busy: try again later"),
        (EX_CONFIG, "the configuration is broken"),
    ):
        lines += [".TP", f"\\fB{code}\\fR", escape(meaning[:1].upper() + meaning[1:] + ".")]
    lines += [".SH SEE ALSO", "\\fBsmtpmailer\\fR(8), \\fBsmtpmailer.conf\\fR(5)"]
    return "\n".join(lines) + "\n"


PAGES = {
    "man8/smtpmailer.8": smtpmailer_8,
    "man5/smtpmailer.conf.5": smtpmailer_conf_5,
    "man8/smtpmailer-sendmail.8": smtpmailer_sendmail_8,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: manpages.py OUTPUT_FOLDER", file=sys.stderr)
        return 2
    from smtpmailer import __version__

    version = __version__.public()
    for relative, make in PAGES.items():
        path = os.path.join(argv[0], relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(make(version))
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
