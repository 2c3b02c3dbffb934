"""The ``smtpmailer`` command line: one module per group of commands (see main.py)."""

from smtpmailer.cli.main import main

__all__ = ["main"]
