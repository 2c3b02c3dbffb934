"""``sendmail -bs``: one SMTP session on standard input and output, as Postfix's and Exim's
sendmail run it.

Why: Symfony Mailer, SwiftMailer and Laravel call ``/usr/sbin/sendmail -bs`` unless told
otherwise, to hear each message's answer (its queue id, or why it was refused) instead of
an exit status. Each message takes a plain ``sendmail`` call's way (the daemon's socket,
else the queue written from this process), so the checks and their answers are the same:
a refusal is the SMTP column of the refusal table, given at the end of DATA.

Light, as the rest of the command: no Twisted, no email package. Commands are read one line
at a time and answered in order, which is all PIPELINING asks of a server.
"""

from __future__ import annotations

from smtpmailer.intake.refusals import EX_CONFIG, EX_IOERR, EX_OK

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO

    # (sender, recipients, message) -> (exit status, text): the queue id, or for a
    # refusal its SMTP reply ("552 5.3.4 message is ...") when the path knows it.
    Submit = Callable[[str, list[str], bytes], tuple[int, str]]

MAX_COMMAND = 2048  # RFC 5321 allows 512 with its extensions' parameters; be generous
MAX_RECIPIENTS = 10_000  # past this the session is not a mail client's: refuse more RCPTs
EXTENSIONS = ("PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES")
MAIL_PARAMETERS = ("BODY", "SIZE", "SMTPUTF8")


def _path(rest: bytes, keyword: bytes) -> tuple[str, list[bytes]] | None:
    """``FROM:<address> PARAMS`` (or ``TO:``): the address and the parameters; None if it
    is not that shape. Whether the address is one is the commit's check."""
    head, colon, tail = rest.partition(b":")
    if not colon or head.strip().upper() != keyword:
        return None
    tail = tail.strip()
    if not tail.startswith(b"<"):
        return None
    end = tail.find(b">")
    if end < 0:
        return None
    address = tail[1:end]
    if b"<" in address or b" " in address:
        return None
    try:
        text = address.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text, tail[end + 1 :].split()


def reply_for(status: int, text: str) -> str:
    """The SMTP reply for one message's outcome."""
    if status == EX_OK:
        return f"250 2.0.0 Ok: queued as {text}"
    code = text[:3]
    if code.isdigit() and code[0] in "45" and text[3:4] == " ":
        return text  # the refusal table's reply, made where the message was checked
    if status == EX_CONFIG:
        return f"451 4.3.5 {text}"
    return f"451 4.3.0 {text}"


class Session:
    """The SMTP state of one ``sendmail -bs`` run; ``serve`` reads until QUIT or the end
    of input. ``out`` is unbuffered (a reply is written whole or not at all), so a client
    that went away leaves nothing for the interpreter to fail on at exit."""

    def __init__(self, hostname: str, submit: Submit, stdin: IO[bytes], out: IO[bytes]):
        self.hostname = hostname
        self.submit = submit
        self.stdin = stdin
        self.out = out
        self.sender: str | None = None
        self.recipients: list[str] = []
        self.error: OSError | None = None  # why the session ended early, if it did

    def reply(self, line: str) -> None:
        data = memoryview(line.encode("utf-8", "replace") + b"\r\n")
        while data:
            written = self.out.write(data)
            if not written:
                raise BlockingIOError("standard output takes no more")
            data = data[written:]

    def serve(self) -> int:
        """EX_OK, or EX_IOERR when the client's end of stdin or stdout failed (``error``
        says how); a message is queued only once its DATA was read whole."""
        try:
            return self._serve()
        except OSError as error:
            self.error = error
            return EX_IOERR

    def _serve(self) -> int:
        self.reply(f"220 {self.hostname} ESMTP smtpmailer")
        while True:
            line = self.stdin.readline(MAX_COMMAND + 1)
            if not line:
                return EX_OK  # the client went away: nothing half-sent was queued
            if len(line) > MAX_COMMAND and not line.endswith(b"\n"):
                while line and not line.endswith(b"\n"):  # the rest of that line
                    line = self.stdin.readline(MAX_COMMAND)
                self.reply("500 5.5.2 Error: line too long")
                continue
            verb, _, rest = line.rstrip(b"\r\n").partition(b" ")
            handler = getattr(self, "do_" + verb.decode("ascii", "replace").upper(), None)
            if handler is None or not verb.isalpha():
                self.reply("502 5.5.2 Error: command not recognized")
                continue
            if handler(rest) is False:
                return EX_OK

    # --- commands ---

    def do_HELO(self, rest: bytes) -> None:
        self._reset()
        self.reply(f"250 {self.hostname}")

    def do_EHLO(self, rest: bytes) -> None:
        self._reset()
        lines = [self.hostname, *EXTENSIONS]
        for line in lines[:-1]:
            self.reply(f"250-{line}")
        self.reply(f"250 {lines[-1]}")

    def do_MAIL(self, rest: bytes) -> None:
        if self.sender is not None:
            self.reply("503 5.5.1 Error: nested MAIL command")
            return
        parsed = _path(rest, b"FROM")
        if parsed is None:
            self.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        address, parameters = parsed
        for parameter in parameters:
            name = parameter.partition(b"=")[0].upper().decode("ascii", "replace")
            if name not in MAIL_PARAMETERS:
                self.reply(f"555 5.5.4 Unsupported option: {name}")
                return
        self.sender = address
        self.reply("250 2.1.0 Ok")

    def do_RCPT(self, rest: bytes) -> None:
        if self.sender is None:
            self.reply("503 5.5.1 Error: need MAIL command")
            return
        parsed = _path(rest, b"TO")
        if parsed is None or not parsed[0]:
            self.reply("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        address, parameters = parsed
        if parameters:
            name = parameters[0].partition(b"=")[0].upper().decode("ascii", "replace")
            self.reply(f"555 5.5.4 Unsupported option: {name}")
            return
        if len(self.recipients) >= MAX_RECIPIENTS:
            self.reply("452 4.5.3 Error: too many recipients")
            return
        self.recipients.append(address)
        self.reply("250 2.1.5 Ok")

    def do_DATA(self, rest: bytes) -> bool | None:
        if self.sender is None:
            self.reply("503 5.5.1 Error: need MAIL command")
            return None
        if not self.recipients:
            self.reply("554 5.5.1 Error: no valid recipients")
            return None
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        data = self._read_data()
        if data is None:
            return False  # the input ended inside DATA: no message, and no one to tell
        status, text = self.submit(self.sender, self.recipients, data)
        self._reset()
        self.reply(reply_for(status, text.replace("\r", " ").replace("\n", " ")))
        return None

    def do_RSET(self, rest: bytes) -> None:
        self._reset()
        self.reply("250 2.0.0 Ok")

    def do_NOOP(self, rest: bytes) -> None:
        self.reply("250 2.0.0 Ok")

    def do_VRFY(self, rest: bytes) -> None:
        self.reply("252 2.0.0 Cannot VRFY user, but will accept the message")

    def do_QUIT(self, rest: bytes) -> bool:
        self.reply("221 2.0.0 Bye")
        return False

    # --- helpers ---

    def _reset(self) -> None:
        self.sender = None
        self.recipients = []

    def _read_data(self) -> bytes | None:
        """The message up to the line holding one dot, with dot-stuffing undone; None if
        the input ends first."""
        lines: list[bytes] = []
        for line in self.stdin:
            if line in (b".\r\n", b".\n"):
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)
        return None
