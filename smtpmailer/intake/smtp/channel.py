"""The pipe between the daemon and its submission worker: length-prefixed frames.

The worker speaks SMTP with clients and sends each checked message here; the daemon commits
it (group commit, the single writer of the queue) and answers with the queue id or the
refusal. Both ends are ours and run the same code, so the format is small and strict:

    frame   = 4-byte big-endian length, then that many bytes; the first byte says what it is
    C<pickle of Config>                       daemon -> worker: start with this config
    Y                                         worker -> daemon: listening, take no more
    M<header length> <header><data>           worker -> daemon: a message to queue; the
                                              header is seq, meta (its DSN options, JSON),
                                              the client's address and sender as it gave
                                              them (for the daemon's queued line), then the
                                              checked sender and each recipient, UTF-8,
                                              NUL-separated
    L<level> <text>                           worker -> daemon: a line for the daemon's log
    R<seq> <status> <text>                    daemon -> worker: the answer to message seq;
                                              status ok (text: the id) or a refusal kind
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import attrs

from smtpmailer.intake.refusals import kind_of, refusal_from
from smtpmailer.message import Envelope

_LENGTH = struct.Struct(">I")
CONFIG, READY, MESSAGE, REPLY, LOG = b"C", b"Y", b"M", b"R", b"L"
# A reply's status: "ok" with the queue id, else a refusal's kind (intake/refusals.py).
STATUS_OK = "ok"


class ChannelError(Exception):
    """The other end sent something this end cannot read: a bug, never user input."""


def frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


class FrameReader:
    """Bytes in, whole frames out; a frame over ``limit`` bytes is an error."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._buffer += data
        while len(self._buffer) >= 4:
            (length,) = _LENGTH.unpack_from(self._buffer)
            if length > self.limit:
                raise ChannelError(f"a frame of {length} bytes (limit {self.limit})")
            if len(self._buffer) < 4 + length:
                return
            payload = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            yield payload


@attrs.frozen
class Client:
    """Who handed a message over, as the queued line names them: the client's address and
    the sender as it gave it (the checked envelope's may be rewritten)."""

    peer: str
    sender: str


def encode_message(seq: int, envelope: Envelope, client: Client) -> bytes:
    fields = (
        str(seq),
        envelope.meta,
        client.peer,
        client.sender,
        envelope.sender,
        *envelope.recipients,
    )
    header = "\0".join(fields).encode("utf-8")
    return frame(MESSAGE + str(len(header)).encode() + b" " + header + envelope.data)


def decode_message(payload: bytes) -> tuple[int, Envelope, Client]:
    try:
        length_text, _, rest = payload[1:].partition(b" ")
        length = int(length_text)
        fields = rest[:length].decode("utf-8").split("\0")
        seq, meta, peer, given, sender = int(fields[0]), *fields[1:5]
        recipients = fields[5:]
    except (ValueError, IndexError, TypeError, UnicodeDecodeError) as error:
        raise ChannelError(f"unreadable message frame: {error}") from None
    return seq, Envelope(sender, tuple(recipients), rest[length:], meta), Client(peer, given)


def encode_reply(seq: int, status: str, text: str) -> bytes:
    return frame(REPLY + f"{seq} {status} {text}".encode())


def reply_for(seq: int, result: str | BaseException) -> bytes:
    """The answer to a commit: the id, or the refusal's kind and words, which the worker
    turns back into the same refusal."""
    if isinstance(result, str):
        return encode_reply(seq, STATUS_OK, result)
    return encode_reply(seq, kind_of(result), str(result) or type(result).__name__)


def decode_reply(payload: bytes) -> tuple[int, str | Exception]:
    """seq, and the id or the exception the submission listener maps to its reply code."""
    try:
        seq_text, status, text = payload[1:].decode("utf-8").split(" ", 2)
        seq = int(seq_text)
    except ValueError as error:
        raise ChannelError(f"unreadable reply frame: {error}") from None
    if status == STATUS_OK:
        return seq, text
    return seq, refusal_from(status, text)


def encode_log(level: str, text: str) -> bytes:
    return frame(LOG + f"{level} {text}".encode("utf-8", "backslashreplace"))


def decode_log(payload: bytes) -> tuple[str, str]:
    level, _, text = payload[1:].decode("utf-8", "replace").partition(" ")
    return level, text
