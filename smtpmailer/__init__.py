"""smtpmailer: an outgoing-mail daemon with a durable queue, run by twistd."""

from smtpmailer._version import __version__

__all__ = ["__version__"]
