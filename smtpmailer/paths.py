"""Where things live: the config file, the state folder and the sockets in it.

Kept free of attrs and of the full config's validation, so that ``sendmail`` can find the
daemon's socket in a millisecond; config.py and control.py use the same functions. Free of
``os`` at import too: os and what it imports cost each sendmail call about 1 ms (Python
3.11, bench/submit), so that path reads ``posix`` and joins plain paths itself.
"""

from __future__ import annotations

import posix
import sys

DEFAULT_CONFIG_PATH = "/etc/smtpmailer/smtpmailer.conf"
DEFAULT_STATE_DIR = "/var/lib/smtpmailer"
# Datagrams here tell the daemon that new mail is due (any local writer may poke it).
WAKEUP_SOCKET = "wakeup.sock"
# sendmail hands messages to a running daemon here (see smtpmailer.intake.sendmail.handover).
SENDMAIL_SOCKET = "sendmail.sock"


def environment(name: str) -> str | None:
    """``os.environ.get(name)``, read from posix.environ (bytes) and decoded as os does."""
    value = posix.environ.get(name.encode(sys.getfilesystemencoding(), "surrogateescape"))
    if value is None:
        return None
    return value.decode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())


def default_config_path() -> str:
    return environment("SMTPMAILER_CONFIG") or DEFAULT_CONFIG_PATH


def config_folder(config_path: str) -> str:
    import os

    return os.path.dirname(os.path.abspath(config_path))


def resolve_path(base: str, value: str) -> str:
    """Relative paths in the file are relative to the file's own folder (``base``),
    whatever the cwd; ``~`` is the user's home."""
    import os

    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def state_dir_of(config_path: str, raw: str | None) -> str:
    """``[Daemon] state_dir`` as written (None or empty: the default), made absolute."""
    return resolve_path(config_folder(config_path), raw or DEFAULT_STATE_DIR)


def _is_plain(path: str) -> bool:
    """No ``~``, no ``.`` or ``..`` part, no empty part: normpath would change nothing
    but a trailing slash."""
    parts = path.rstrip("/").split("/")
    if path.startswith("/"):
        parts = parts[1:]
    return bool(path) and not path.startswith("~") and all(p not in ("", ".", "..") for p in parts)


def _joined(folder: str, name: str) -> str:
    return folder + name if folder.endswith("/") else f"{folder}/{name}"


def sendmail_socket_of(config_path: str, raw: str | None) -> str:
    """``state_dir_of(config_path, raw)/sendmail.sock``, joined here without os when both
    paths are plain (the usual case); os.path's rules for the rest."""
    value = raw or DEFAULT_STATE_DIR
    if _is_plain(config_path) and not config_path.endswith("/") and _is_plain(value):
        if value.startswith("/"):
            state_dir = value.rstrip("/") or "/"
        else:
            config = (
                config_path if config_path.startswith("/") else _joined(posix.getcwd(), config_path)
            )
            state_dir = _joined(config.rpartition("/")[0] or "/", value.rstrip("/"))
        return _joined(state_dir, SENDMAIL_SOCKET)
    import os

    return os.path.join(state_dir_of(config_path, raw), SENDMAIL_SOCKET)
