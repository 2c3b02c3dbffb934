"""The configuration: each key declared once (declare.py) on the section classes that
hold the values (sections.py), read from the INI file (load.py), shown back and compared
(render.py)."""

from smtpmailer.config.load import load_config, parse_config
from smtpmailer.config.render import flatten, keep_restart_only, relay_title, render_config
from smtpmailer.config.sections import (
    Config,
    DaemonConfig,
    LoggingConfig,
    MaildirRelayConfig,
    ManholeConfig,
    QueueConfig,
    RelayConfig,
    RewriteConfig,
    RouteConfig,
    SMTPRelayConfig,
    StatusConfig,
    SubmissionConfig,
)

__all__ = [
    "Config",
    "DaemonConfig",
    "LoggingConfig",
    "MaildirRelayConfig",
    "ManholeConfig",
    "QueueConfig",
    "RelayConfig",
    "RewriteConfig",
    "RouteConfig",
    "SMTPRelayConfig",
    "StatusConfig",
    "SubmissionConfig",
    "flatten",
    "keep_restart_only",
    "load_config",
    "parse_config",
    "relay_title",
    "render_config",
]
