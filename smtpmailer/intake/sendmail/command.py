"""``smtpmailer sendmail`` / ``smtpmailer-sendmail``: a drop-in /usr/sbin/sendmail.

What cron, PHP's mail(), git send-email and monitoring tools call: the message on stdin,
recipients as arguments or from the headers (-t). Exit statuses are sendmail's (sysexits).
With -bs, an SMTP session on stdin and stdout instead (intake/sendmail/session.py), as
Symfony Mailer and Laravel call it.

This runs once per message, so its own imports are the interpreter's bare minimum. With a
daemon running, the message goes over ``state_dir/sendmail.sock`` and the daemon checks and
commits it (sharing one fsync with other submissions); the answer comes after the commit.
Without a daemon, the command checks the message and writes the queue itself.
"""

from __future__ import annotations

import posix  # not os: see smtpmailer.paths
import sys

from smtpmailer.intake.refusals import (
    EX_CONFIG,
    EX_IOERR,
    EX_OK,
    EX_TEMPFAIL,
    EX_USAGE,
    answer_for,
)

# Not typing.TYPE_CHECKING: typing costs this path ~5 ms. mypy honours the name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import IO, Any

    from smtpmailer.message import Envelope

USAGE = (
    "usage: sendmail [-t] [-i|-oi] [-f SENDER|-r SENDER] [-F NAME] [-v] [RECIPIENT ...]\n"
    "       sendmail -bs      (an SMTP session on stdin and stdout)\n"
    "       sendmail -bp      (list the queue; also as mailq)\n"
    "       sendmail -q       (retry every deferred message now)"
)


# What each option does, for smtpmailer-sendmail(8) (tools/manpages.py): beside the parser
# below, which is hand-written because sendmail's syntax is not argparse's.
OPTIONS = (
    ("-t", "take the recipients from the To:, Cc: and Bcc: headers (Bcc: is removed)"),
    ("-i, -oi", "a line holding only a dot does not end the message"),
    ("-f SENDER, -r SENDER", "the envelope sender (default: the user at this host; <> is none)"),
    ("-F NAME", "the sender's full name, for a From: header that is added"),
    ("-v", "say what happened to the message"),
    ("-N DSN", "when to report back: never, or success, failure and delay (RFC 3461 NOTIFY)"),
    ("-R RET", "what a report returns of the message: full or hdrs (RFC 3461 RET)"),
    ("-V ENVID", "an envelope id that reports carry (RFC 3461 ENVID)"),
    ("-bs", "speak SMTP on stdin and stdout: each message's answer is an SMTP reply"),
    ("-bp", "list the queue, as mailq does (called as mailq, the command does this)"),
    ("-bi", "nothing to do: no mail is delivered locally, so there are no aliases (newaliases)"),
    ("-q", "retry every deferred message now"),
    ("-bm", "deliver mail (the default)"),
    ("--config PATH", "the config file (default: $SMTPMAILER_CONFIG, then /etc)"),
    ("-odb, -oem, -B, -L, -h, -X, -O, ...", "accepted and ignored, with their value"),
)

# How long to wait for a running daemon's answer (its commit) before giving up.
DAEMON_ANSWER_TIMEOUT = 60.0


class UsageError(Exception):
    pass


class Arguments:
    """What the command line asked for. A plain class, not attrs: see the module's doc."""

    def __init__(self) -> None:
        self.extract = False
        self.ignore_dots = False
        self.sender: str | None = None
        self.full_name: str | None = None
        self.verbose = False
        self.mode = "deliver"  # deliver, smtp (-bs), list, flush, aliases (-bi)
        self.recipients: list[str] = []
        self.config: str | None = None
        # RFC 3461, as sendmail's -N, -R and -V give them (NOTIFY for every recipient).
        self.notify: str | None = None  # NEVER, or some of SUCCESS,FAILURE,DELAY
        self.ret: str | None = None  # FULL or HDRS
        self.envid: str | None = None  # xtext


# dsn_options.NOTIFY_WORDS, spelled again: that module imports attrs, which this
# command's path does not (the daemon checks what it is sent with dsn_options itself).
NOTIFY_WORDS = ("SUCCESS", "FAILURE", "DELAY")


def _notify(value: str) -> str:
    words = [word.strip().upper() for word in value.split(",")]
    if words != ["NEVER"] and not (words and all(word in NOTIFY_WORDS for word in words)):
        raise UsageError(f"-N {value!r}: never, or a list of success, failure and delay")
    return ",".join(words)


def _xtext(value: str) -> str:
    """RFC 3461's xtext: printable ASCII but + and =, the rest as +HH."""
    encoded = "".join(
        chr(byte) if 33 <= byte <= 126 and byte not in (43, 61) else f"+{byte:02X}"
        for byte in value.encode("utf-8", "surrogateescape")
    )
    if not encoded or len(encoded) > 100:
        raise UsageError(f"-V {value!r}: an envelope id of 1 to 100 characters (as xtext)")
    return encoded


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
                elif rest == "s":
                    args.mode = "smtp"
                elif rest == "i":
                    args.mode = "aliases"
                elif rest in ("m", ""):
                    args.mode = "deliver"
                else:
                    raise UsageError(f"-b{rest} is not supported (only -bm, -bs, -bp and -bi)")
            elif flag == "q":
                args.mode = "flush"
            elif flag == "N":
                args.notify = _notify(value("-N", rest))
            elif flag == "R":
                args.ret = value("-R", rest).upper()
                if args.ret not in ("FULL", "HDRS"):
                    raise UsageError(f"-R {args.ret.lower()!r}: full or hdrs")
            elif flag == "V":
                args.envid = _xtext(value("-V", rest))
            elif flag in ("B", "L", "h", "X", "O"):
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
    host = posix.uname().nodename or "localhost"  # what socket.gethostname() returns
    return host if "." in host else host + ".localdomain"


def qualify(address: str) -> str:
    """``root`` becomes ``root@HOST``: cron and scripts name local users, and sendmail has
    always qualified them with the host's name."""
    address = address.strip()
    if address and "@" not in address and "<" not in address:
        return f"{address}@{_local_domain()}"
    return address


def local_user() -> str:
    """The calling user's name, looked up as getpass.getuser() does."""
    from smtpmailer.paths import environment

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        value = environment(name)
        if value:
            return value
    try:
        import pwd

        return pwd.getpwuid(posix.getuid()).pw_name
    except (ImportError, KeyError):
        return "nobody"


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
    if full_name is not None:
        from smtpmailer.message import check_header_value

        check_header_value("-F NAME", full_name)  # a line break would add headers
    value = email.utils.formataddr((full_name or "", sender))
    from email.header import Header

    if not value.isascii():
        value = email.utils.formataddr((str(Header(full_name or "", "utf-8")), sender))
    return f"From: {value}\r\n".encode() + data


def prepare_envelope(args: Arguments, user: str, data: bytes, now: float) -> Envelope:
    """sendmail's rules (envelope sender from -f, From or the user; From added when
    missing; -t). MessageError if it cannot be sent. The checks every way in shares (size,
    addresses) come after, where the message is enqueued. The daemon runs this too, for
    messages handed over its socket."""
    from smtpmailer.message import prepare_raw

    # An mbox envelope line ("From user date") is no header and no relay wants it: it goes,
    # as Postfix's sendmail drops it. "From : x" is a header (obsolete syntax), and stays.
    if data.startswith(b"From ") and not data[5:].lstrip(b" \t").startswith(b":"):
        data = data.partition(b"\n")[2]
    null = args.sender is not None and args.sender.strip() == "<>"  # -f '<>', MAIL FROM:<>
    sender = qualify((not null and args.sender) or _header_sender(data) or user)
    envelope = prepare_raw(
        _add_from(data, sender, args.full_name),
        recipients=args.recipients,
        extract_recipients=args.extract,
        sender="<>" if null else sender,
        now=now,
        qualify=qualify,
    )
    if args.notify or args.ret or args.envid:
        import json

        from smtpmailer.dsn_options import DSNOptions
        from smtpmailer.message import Envelope

        notify = dict.fromkeys(envelope.recipients, args.notify) if args.notify else {}
        dsn = DSNOptions(args.ret, args.envid, notify, {})
        envelope = Envelope(
            envelope.sender, envelope.recipients, envelope.data, json.dumps(dsn.as_meta())
        )
    return envelope


# --- the hand-over to a running daemon: one request, one answer, over a Unix socket ---

REQUEST_MAGIC = b"SENDMAIL/1"


def encode_request(args: Arguments, user: str, data: bytes) -> bytes:
    """``SENDMAIL/1 HEADER_LENGTH DATA_LENGTH\\n``, then the header (NUL-separated
    ``key=value`` fields: no argument can hold a NUL), then the message. ``smtp=1`` (-bs)
    asks for a refusal's SMTP reply as its text."""
    fields = [f"user={user}", f"extract={int(args.extract)}"]
    if args.mode == "smtp":
        fields.append("smtp=1")
    if args.sender is not None:
        fields.append(f"sender={args.sender}")
    if args.full_name is not None:
        fields.append(f"name={args.full_name}")
    for key in ("notify", "ret", "envid"):
        if getattr(args, key) is not None:
            fields.append(f"{key}={getattr(args, key)}")
    fields += [f"rcpt={recipient}" for recipient in args.recipients]
    header = "\0".join(fields).encode("utf-8", "surrogateescape")
    return b"%s %d %d\n" % (REQUEST_MAGIC, len(header), len(data)) + header + data


def _dsn_field(key: str, value: str) -> str:
    """A DSN field of a request, checked again by the daemon with the SMTP listener's own
    parsers: any local writer of the socket may send one, and its value goes into SMTP
    commands to relays. BadOption (a ValueError) if it is not as RFC 3461 spells it."""
    from smtpmailer.dsn_options import mail_options, rcpt_options

    param = f"{key.upper()}={value}".encode("utf-8", "surrogateescape")
    if key == "notify":
        notify, _ = rcpt_options([param])
        return str(notify)
    ret, envid = mail_options([param])
    return str(ret if key == "ret" else envid)


def decode_header(header: bytes) -> tuple[Arguments, str]:
    """The Arguments and user of a request's header; ValueError if it is malformed."""
    args = Arguments()
    user = None
    for field in header.decode("utf-8", "surrogateescape").split("\0"):
        key, sep, value = field.partition("=")
        if not sep:
            raise ValueError(f"malformed field {field[:40]!r}")
        if key == "user":
            user = value
        elif key == "extract":
            args.extract = value == "1"
        elif key == "sender":
            args.sender = value
        elif key == "name":
            args.full_name = value
        elif key == "rcpt":
            args.recipients.append(value)
        elif key == "smtp":
            args.mode = "smtp" if value == "1" else "deliver"
        elif key in ("notify", "ret", "envid"):
            setattr(args, key, _dsn_field(key, value))
        else:
            raise ValueError(f"unknown field {key[:40]!r}")
    if not user:
        raise ValueError("no user field")
    return args, user


def hand_to_daemon(
    socket_path: str, request: bytes, timeout: float = DAEMON_ANSWER_TIMEOUT
) -> tuple[int, str] | None:
    """Send the request to the daemon; its (exit status, text) once it has committed, or
    None when no daemon took it (no socket, refused, or it closed without answering),
    and the caller writes the queue itself. A daemon killed between its commit and its
    answer makes that a duplicate, never a loss."""
    import _socket  # not `socket`: that imports enum and selectors, ~4 ms on this path

    connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    connection.settimeout(timeout)
    try:
        try:
            connection.connect(socket_path)
        except OSError:  # gone, refused, not permitted: no daemon takes it
            return None
        chunks = []
        try:
            connection.sendall(request)
            while chunk := connection.recv(4096):
                chunks.append(chunk)
        except TimeoutError:
            return (
                EX_TEMPFAIL,
                f"no answer from the daemon within {timeout:.0f} s; the message may not be queued",
            )
        except OSError:  # reset or broken pipe: the daemon went away before answering
            return None
    finally:
        connection.close()
    answer = b"".join(chunks).decode("utf-8", "replace").rstrip("\n")
    code, _, text = answer.partition(" ")
    if not code.isdigit():
        return None
    return int(code), text


def refusal_text(error: object, smtp: bool, text: str | None = None) -> str:
    """What a refused message is told: the error's words (``; try again later`` when it
    may), or with ``smtp`` (-bs) its SMTP reply from the refusal table."""
    answer = answer_for(error)
    words = str(error) if text is None else text
    if smtp:
        code, enhanced = answer.smtp(words)
        return f"{code} {enhanced}"
    later = "; try again later" if answer.sendmail == EX_TEMPFAIL and text is None else ""
    return words + later


def _enqueue_directly(config_path: str | None, args: Arguments, user: str, data: bytes) -> Outcome:
    """No daemon: check the message and commit it to the queue from this process."""
    import time

    from smtpmailer.config import load_config
    from smtpmailer.ini import ConfigError
    from smtpmailer.intake.checks import enqueue_envelope, wake_daemon
    from smtpmailer.intake.refusals import Refusal
    from smtpmailer.queue import PRIORITY_NAMES, QueueError

    try:
        config = load_config(config_path)
    except ConfigError as error:
        return Outcome(EX_CONFIG, str(error))
    now = time.time()
    try:
        envelope = prepare_envelope(args, user, data, now)
        from smtpmailer.queue.backends import open_store

        store = open_store(config)
        try:
            message_id = enqueue_envelope(store, config, envelope, PRIORITY_NAMES["normal"], now)
        finally:
            store.close()
    except (Refusal, QueueError) as error:
        return Outcome(answer_for(error).sendmail, refusal_text(error, args.mode == "smtp"))
    wake_daemon(config)
    return Outcome(EX_OK, message_id, f" for {', '.join(envelope.recipients)}")


class Outcome:
    """What became of one message: sendmail's exit status and its text (the queue id, or
    why not); ``detail`` is what -v adds after the id."""

    __slots__ = ("detail", "status", "text")

    def __init__(self, status: int, text: str, detail: str = "") -> None:
        self.status = status
        self.text = text
        self.detail = detail


def submit(config_path: str, args: Arguments, user: str, data: bytes) -> Outcome:
    """One message to the running daemon, else into the queue from this process."""
    socket_path = _daemon_socket(config_path)
    answer = None
    if socket_path is not None:  # else the full load says what is wrong with the file
        answer = hand_to_daemon(socket_path, encode_request(args, user, data))
    if answer is None:
        return _enqueue_directly(config_path, args, user, data)
    return Outcome(*answer)


def _daemon_socket(config_path: str) -> str | None:
    """Where a running daemon for this config would listen; None if the file cannot be
    read as INI (the full load then reports the problem)."""
    from smtpmailer.ini import ConfigError, parse_ini
    from smtpmailer.paths import sendmail_socket_of

    try:
        with open(config_path, encoding="utf-8") as handle:
            sections = parse_ini(handle.read(), config_path)
    except (OSError, UnicodeDecodeError, ConfigError):
        return None
    raw = None
    for section in sections:
        if section.name == "Daemon" and section.label is None:
            raw = next((e.value for e in section.entries if e.key == "state_dir"), None)
    return sendmail_socket_of(config_path, raw)


def _queue_command(args: Arguments, out: IO[str], err: IO[str]) -> int:
    """``-bp`` lists the queue, ``-q`` retries every deferred message: the queue
    commands' own functions, called directly."""
    import time

    from smtpmailer.cli.common import open_queue
    from smtpmailer.cli.queue import list_messages, retry_all
    from smtpmailer.config import load_config
    from smtpmailer.ini import ConfigError
    from smtpmailer.intake.checks import wake_daemon
    from smtpmailer.queue import QueueError

    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"sendmail: {error}", file=err)
        return EX_CONFIG
    try:
        store = open_queue(config, read_only=args.mode == "list")
        try:
            if args.mode == "list":
                list_messages(store, time.time(), out)
            else:
                retry_all(store, time.time(), out)
        finally:
            store.close()
    except QueueError as error:
        print(f"sendmail: {error}", file=err)
        return answer_for(error).sendmail
    if args.mode != "list":
        wake_daemon(config)
    return EX_OK


def run(argv: Sequence[str], stdin: IO[bytes], out: IO[str], err: IO[str]) -> int:
    try:
        args = parse_arguments(argv)
    except UsageError as error:
        print(f"sendmail: {error}\n{USAGE}", file=err)
        return EX_USAGE
    if args.mode == "smtp":
        return _smtp_session(args, stdin, out, err)
    if args.mode == "aliases":
        # Package scripts run newaliases after installing an MTA; failing them helps no one.
        print("newaliases: smtpmailer delivers no mail locally: no aliases to build", file=err)
        return EX_OK
    if args.mode != "deliver":
        return _queue_command(args, out, err)
    from smtpmailer.paths import default_config_path

    if not args.extract and not args.recipients:
        print(f"sendmail: no recipients (give them as arguments, or use -t)\n{USAGE}", file=err)
        return EX_USAGE
    try:
        data = read_message(stdin, args.ignore_dots)
    except OSError as error:
        print(f"sendmail: cannot read the message: {error}", file=err)
        return EX_IOERR
    outcome = submit(args.config or default_config_path(), args, local_user(), data)
    if outcome.status != EX_OK:
        print(f"sendmail: {outcome.text}", file=err)
    elif args.verbose:
        print(f"queued as {outcome.text}{outcome.detail}", file=out)
    return outcome.status


def _smtp_session(args: Arguments, stdin: IO[bytes], out: IO[str], err: IO[str]) -> int:
    """-bs: every message of the session goes the way one plain call's goes."""
    from smtpmailer.intake.sendmail.session import Session
    from smtpmailer.paths import default_config_path

    config_path = args.config or default_config_path()
    user = local_user()

    def submit_one(sender: str, recipients: list[str], data: bytes) -> tuple[int, str]:
        message = Arguments()
        message.mode = "smtp"
        message.sender = sender or "<>"
        message.recipients = recipients
        message.full_name = args.full_name
        outcome = submit(config_path, message, user, data)
        return outcome.status, outcome.text

    try:  # unbuffered: see Session
        binary_out: Any = open(out.fileno(), "wb", buffering=0, closefd=False)
    except (AttributeError, OSError, ValueError):  # not a file (a test's)
        binary_out = getattr(out, "buffer", out)
    session = Session(_local_domain(), submit_one, stdin, binary_out)
    status = session.serve()
    if session.error is not None:
        print(f"sendmail: the SMTP session ended: {session.error}", file=err)
    return status


class _ClosedInput:
    """Standard input that was closed when the command started: reading it fails as a
    read error does, with sendmail's answer for one."""

    def read(self, *args: object) -> bytes:
        raise OSError("standard input is closed")

    def __iter__(self) -> Iterator[bytes]:
        raise OSError("standard input is closed")


# The names an MTA's sendmail is also installed as (tools/install.py links them).
CALLED_AS = {"mailq": "-bp", "newaliases": "-bi"}


def as_called(argv: Sequence[str]) -> list[str]:
    """The arguments, with what the name we were called by means (mailq is -bp)."""
    name = argv[0].rpartition("/")[2] if argv else ""
    flag = CALLED_AS.get(name)
    return [flag, *argv[1:]] if flag else list(argv[1:])


def main() -> None:
    """Leaves through ``_exit`` once its output is flushed. By then the message is
    committed or refused and the socket or queue is closed: nothing is left to tidy, and
    the interpreter's own teardown was 1.3 ms of a 10.6 ms call (bench/submit)."""
    stdin: Any = sys.stdin.buffer if sys.stdin is not None else _ClosedInput()
    code = run(as_called(sys.argv), stdin, sys.stdout, sys.stderr)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: started with that descriptor closed
                stream.flush()
    except OSError:  # a broken pipe: the interpreter's exit reports it
        sys.exit(code)
    posix._exit(code)


if __name__ == "__main__":
    main()
