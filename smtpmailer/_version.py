"""Provides smtpmailer version information."""

from incremental import Version

__version__ = Version("smtpmailer", 0, 1, 0)
__all__ = ["__version__"]
