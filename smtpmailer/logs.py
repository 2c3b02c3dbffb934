"""Log output: a level threshold that reload can change, and Postfix-style outcome lines."""

from __future__ import annotations

from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
}


class Log:
    """A Logger that drops events under the configured ``[Logging] level``.

    twistd owns the observers, so the threshold lives here, where our events start.
    """

    def __init__(self, namespace: str) -> None:
        self._logger = Logger(namespace=namespace)
        self.threshold = LogLevel.info

    def set_level(self, name: str) -> None:
        self.threshold = _LEVELS[name]

    def _emit(self, level: LogLevel, text: str, **fields: object) -> None:
        if level >= self.threshold:
            self._logger.emit(level, text, **fields)

    def debug(self, text: str, **fields: object) -> None:
        self._emit(LogLevel.debug, text, **fields)

    def info(self, text: str, **fields: object) -> None:
        self._emit(LogLevel.info, text, **fields)

    def warn(self, text: str, **fields: object) -> None:
        self._emit(LogLevel.warn, text, **fields)

    def error(self, text: str, **fields: object) -> None:
        self._emit(LogLevel.error, text, **fields)

    def failure(self, text: str, failure: Failure | None = None, **fields: object) -> None:
        """Log a failure with its traceback (always, whatever the level)."""
        self._logger.failure(text, failure, LogLevel.critical, **fields)


log = Log("smtpmailer")


def set_level(name: str) -> None:
    log.set_level(name)


def outcome_line(
    message_id: str,
    recipient: str,
    relay: str,
    delay: float,
    attempts: int,
    status: str,
    reply: str,
) -> str:
    """``id=Q7F3K2 to=<b@y> relay=smtp.example.com[203.0.113.5]:587 delay=0.42 attempts=1
    status=sent (250 2.0.0 OK)`` -- one per recipient per attempt, as DESIGN.md fixes it."""
    reply = " ".join(reply.split())
    return (
        f"id={message_id} to=<{recipient}> relay={relay} delay={delay:.2f} "
        f"attempts={attempts} status={status} ({reply})"
    )
