"""twistd plugin for smtpmailer: a bare ServiceMaker so that importing it costs nothing."""

from twisted.application.service import ServiceMaker

smtpmailer = ServiceMaker(
    "smtpmailer",
    "smtpmailer.tap",
    "Outgoing-mail daemon: durable queue delivered through ESMTP relays",
    "smtpmailer",
)
