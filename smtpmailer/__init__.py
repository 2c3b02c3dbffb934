"""smtpmailer: an outgoing-mail daemon with a durable queue, run by twistd."""

from typing import Any

__all__ = ["__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `smtpmailer sendmail` runs once per message and should not pay for incremental.
    if name == "__version__":
        from smtpmailer._version import __version__

        return __version__
    raise AttributeError(name)
