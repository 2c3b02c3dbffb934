"""Where things live: the config file, the state folder and the sockets in it.

Kept free of attrs and of the full config's validation, so that ``sendmail`` can find the
daemon's socket in a millisecond; config.py and control.py use the same functions.
"""

from __future__ import annotations

import os

DEFAULT_CONFIG_PATH = "/etc/smtpmailer/smtpmailer.conf"
DEFAULT_STATE_DIR = "/var/lib/smtpmailer"
# Datagrams here tell the daemon that new mail is due (any local writer may poke it).
WAKEUP_SOCKET = "wakeup.sock"
# sendmail hands messages to a running daemon here (see smtpmailer.intake.sendmail.handover).
SENDMAIL_SOCKET = "sendmail.sock"


def default_config_path() -> str:
    return os.environ.get("SMTPMAILER_CONFIG") or DEFAULT_CONFIG_PATH


def config_folder(config_path: str) -> str:
    return os.path.dirname(os.path.abspath(config_path))


def resolve_path(base: str, value: str) -> str:
    """Relative paths in the file are relative to the file's own folder (``base``),
    whatever the cwd; ``~`` is the user's home."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def state_dir_of(config_path: str, raw: str | None) -> str:
    """``[Daemon] state_dir`` as written (None or empty: the default), made absolute."""
    return resolve_path(config_folder(config_path), raw or DEFAULT_STATE_DIR)
