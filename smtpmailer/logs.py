"""Log output: a level threshold that reload can change, and Postfix-style outcome lines."""

from __future__ import annotations

import json
import sys
from time import time
from typing import IO, Any

import attrs
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.failure import Failure
from zope.interface import provider

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
        """The event Logger.emit makes, made here: Logger.emit first checks the level
        against every LogLevel, sorted anew on each call, which was a third of an outcome
        line's cost (8.0 against 5.3 us a line; ours are always one of them)."""
        if level >= self.threshold:
            logger = self._logger
            fields.update(
                log_logger=logger,
                log_level=level,
                log_namespace=logger.namespace,
                log_source=logger.source,
                log_format=text,
                log_time=time(),
            )
            logger.observer(fields)

    def debug(self, text: str, **fields: object) -> None:
        self._emit(LogLevel.debug, text, **fields)

    def info(self, text: str, **fields: object) -> None:
        self._emit(LogLevel.info, text, **fields)

    def warn(self, text: str, **fields: object) -> None:
        self._emit(LogLevel.warn, text, **fields)

    def error(self, text: str, **fields: object) -> None:
        self._emit(LogLevel.error, text, **fields)

    def relay(self, level_name: str, text: str) -> None:
        """A line another process of ours logged (a submission worker), at its level; it
        already passed the same threshold there."""
        try:
            level = LogLevel.levelWithName(level_name)
        except Exception:
            level = LogLevel.info
        self._logger.emit(level, "{text}", text=text)

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


@attrs.frozen
class LogTarget:
    """Where twistd was told to log (``--logfile``, ``-n``): our observers go there too.
    ``elsewhere``: twistd was given ``--syslog`` or ``--logger``, which the text format
    leaves to twistd."""

    logfile: str = ""
    nodaemon: bool = True
    elsewhere: bool = False


def _open_target(target: LogTarget) -> IO[str]:
    """As twistd decides: stdout for ``-`` (or -n without --logfile), else a LogFile that
    SIGUSR1 rotates."""
    if target.logfile == "-" or (target.nodaemon and not target.logfile):
        return sys.stdout
    import signal

    from twisted.python.logfile import LogFile

    logfile = LogFile.fromFullPath(target.logfile or "twistd.log")

    def rotate(signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        running: Any = reactor
        running.callFromThread(logfile.rotate)

    signal.signal(signal.SIGUSR1, rotate)
    stream: Any = logfile
    return stream


def json_event(event: dict[str, Any]) -> dict[str, Any]:
    """One log event as a flat JSON object: time, level, namespace, message, and the
    event's own fields (an outcome line carries id, to, relay, status...)."""
    level = event.get("log_level")
    record: dict[str, Any] = {
        "time": event.get("log_time"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in record or key in ("line", "format"):
            continue
        if isinstance(value, str | int | float | bool) or value is None:
            record[key] = value
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return record


class SecondClock:
    """twistd's time stamps (RFC 3339 to the second, local offset), made once a second:
    Twisted's formatTime works out the zone and formats anew for every line, the largest
    part of an outcome line's cost."""

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self._second:
            self._second, self._text = second, formatTime(when)
        return self._text


def classic_text(event: dict[str, Any], clock: SecondClock) -> str | None:
    """An event as twistd's text log writes it, ``TIME [namespace#level] text``; our own
    one-field events (``{line}``, ``{text}``) without the format string's parsing."""
    template = event.get("log_format")
    if (
        (template == "{line}" or template == "{text}")
        and "log_failure" not in event
        and "log_system" not in event
    ):
        body = event.get(template[1:-1])
        if isinstance(body, str) and body:
            level = event.get("log_level")
            text = (
                f"{clock(event.get('log_time'))} [{event.get('log_namespace', '-')}"
                f"#{'-' if level is None else level.name}] {body}"
            )
            return text.replace("\n", "\n\t") + "\n"
    return formatEventAsClassicLogText(event, formatTime=clock)


def text_observer(target: LogTarget) -> ILogObserver:
    """``[Logging] format = text``: the lines twistd's own observer writes, made faster."""
    clock = SecondClock()
    observer: Any = FileLogObserver(_open_target(target), lambda e: classic_text(e, clock))
    return observer


def json_observer(target: LogTarget) -> ILogObserver:
    """``[Logging] format = json``: one JSON object per line."""
    stream = _open_target(target)

    @provider(ILogObserver)
    def observe(event: dict[str, Any]) -> None:
        stream.write(json.dumps(json_event(event), default=str) + "\n")
        stream.flush()

    return observe


def observer_for(log_format: str, target: LogTarget) -> ILogObserver | None:
    """The observer the daemon gives twistd in place of its own: JSON, or twistd's text
    lines made faster; none when twistd was told to log through syslog or a ``--logger``
    of the user's with the text format."""
    if log_format == "json":
        return json_observer(target)
    if target.elsewhere:
        return None
    return text_observer(target)
