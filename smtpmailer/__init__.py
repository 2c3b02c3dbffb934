"""smtpmailer: an outgoing-mail daemon with a durable queue, run by twistd."""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING`: importing typing costs sendmail's fast path ~5 ms.
# mypy treats a module constant of this name the same way.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from incremental import Version

__all__ = ["__version__"]


def __getattr__(name: str) -> Version:
    # Lazy: `smtpmailer sendmail` runs once per message and should not pay for incremental.
    if name == "__version__":
        from smtpmailer._version import __version__

        return __version__
    raise AttributeError(name)
