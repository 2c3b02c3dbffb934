"""The OAuth2 files: the refresh token (the operator's, rewritten when the provider rotates
it) and the access-token cache in state_dir. Both hold secrets: mode 0600, and written
whole or not at all (a temporary file, fsync, rename), so a crash never leaves half a token.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import attrs

CACHE_FOLDER = "oauth2"


@attrs.frozen
class CachedToken:
    value: str = attrs.field(repr=False)
    expires_at: float
    lifetime: float


def read_secret_file(path: str) -> str | None:
    """The file's text without its line end; None when it does not exist or is empty."""
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
    except FileNotFoundError:
        return None
    return text or None


def write_private(path: str, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600, owned as the file it replaces
    (``oauth2 authorize`` run by root for the daemon's user keeps the daemon able to read it)."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        before = os.stat(path)
    except FileNotFoundError:
        before = None
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", dir=folder)  # mode 0600
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if before is not None and os.geteuid() == 0:
            os.chown(temporary, before.st_uid, before.st_gid)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def cache_path(state_dir: str, name: str) -> str:
    return os.path.join(state_dir, CACHE_FOLDER, f"{name}.json")


def identity(*parts: str | None) -> str:
    """A digest of what a token was issued for (flow, endpoint, client, scope, grant), so a
    cached token is never used for another account after the config changed."""
    return hashlib.sha256("\0".join(part or "" for part in parts).encode()).hexdigest()


def load_cache(path: str, issued_for: str) -> CachedToken | None:
    """The cached token when it was issued for ``issued_for``; None if absent or unreadable
    (a damaged cache costs one refresh, nothing more)."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        if data.get("issued_for") != issued_for:
            return None
        return CachedToken(
            str(data["access_token"]), float(data["expires_at"]), float(data["lifetime"])
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_cache(path: str, issued_for: str, token: CachedToken) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    record = {
        "issued_for": issued_for,
        "access_token": token.value,
        "expires_at": token.expires_at,
        "lifetime": token.lifetime,
    }
    write_private(path, json.dumps(record))
