"""The daemon's own text log observer writes exactly the lines twistd's would."""

from __future__ import annotations

import time

from twisted.logger import FileLogObserver, LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial import unittest

from smtpmailer.logs import LogTarget, SecondClock, classic_text, observer_for, text_observer


def twistd_line(event: dict[str, object]) -> str | None:
    """What twistd's textFileLogObserver writes for ``event``."""
    return formatEventAsClassicLogText(event)


def events(now: float) -> list[dict[str, object]]:
    failure = Failure(ValueError("refused"))
    base = {"log_time": now, "log_namespace": "smtpmailer", "log_level": LogLevel.info}
    return [
        {**base, "log_format": "{line}", "line": "id=Q1 to=<b@y> status=sent (250 {ok})"},
        {**base, "log_format": "{text}", "text": "two\nlines", "log_level": LogLevel.warn},
        {**base, "log_format": "config: {detail}", "detail": "a {brace}"},
        {**base, "log_format": "{line}", "line": "with a system", "log_system": "worker"},
        {**base, "log_format": "{text}", "text": "boom", "log_failure": failure},
        {**base, "log_format": "{line}", "line": ""},
        {**base, "log_format": "{line}", "line": 42},
        {"log_time": now, "log_format": "{text}", "text": "no namespace or level"},
        {"log_format": "{text}", "text": "no time"},
        {**base, "log_format": None},
    ]


class ClassicTextTests(unittest.TestCase):
    def test_same_lines_as_twistd(self) -> None:
        clock = SecondClock()
        for now in (time.time(), 1_700_000_000.999, 1_700_000_001.0, 1_700_000_000.5):
            for event in events(now):
                with self.subTest(event=event.get("log_format"), now=now):
                    self.assertEqual(classic_text(event, clock), twistd_line(event))

    def test_the_stamp_follows_the_second(self) -> None:
        clock = SecondClock()
        self.assertEqual(clock(1_700_000_000.2), clock(1_700_000_000.9))
        self.assertNotEqual(clock(1_700_000_000.9), clock(1_700_000_001.0))
        self.assertEqual(clock(None), "-")

    def test_the_observer_writes_twistds_line_to_the_log_file(self) -> None:
        path = self.mktemp()
        observer = text_observer(LogTarget(logfile=path, nodaemon=False))
        event = events(time.time())[0]
        observer(event)
        with open(path) as written:
            self.assertEqual(written.read(), twistd_line(event))


class ChosenTests(unittest.TestCase):
    """The observer the daemon gives twistd, by format and by what twistd was told."""

    def test_text_by_default_json_when_asked(self) -> None:
        self.assertIsInstance(observer_for("text", LogTarget(logfile="-")), FileLogObserver)
        json_one = observer_for("json", LogTarget(logfile="-"))
        self.assertIsNotNone(json_one)
        self.assertNotIsInstance(json_one, FileLogObserver)

    def test_syslog_or_a_logger_left_to_twistd(self) -> None:
        self.assertIsNone(observer_for("text", LogTarget(logfile="-", elsewhere=True)))


class EventTests(unittest.TestCase):
    """Our Log makes the events Twisted's Logger.emit makes, without its per-call cost."""

    def test_the_same_event_as_logger_emit(self) -> None:
        from twisted.logger import Logger, LogPublisher

        from smtpmailer.logs import Log

        ours: list[dict[str, object]] = []
        theirs: list[dict[str, object]] = []
        log = Log("smtpmailer")
        log._logger = Logger(namespace="smtpmailer", observer=LogPublisher(ours.append))
        twisted = Logger(namespace="smtpmailer", observer=LogPublisher(theirs.append))
        before = time.time()
        log.info("{line}", line="id=Q1 status=sent", id="Q1")
        log.warn("x={x}", x=1)
        log.debug("under the threshold")
        twisted.emit(LogLevel.info, "{line}", line="id=Q1 status=sent", id="Q1")
        twisted.emit(LogLevel.warn, "x={x}", x=1)
        self.assertEqual(len(ours), 2)
        for mine, emitted in zip(ours, theirs, strict=True):
            self.assertGreaterEqual(mine.pop("log_time"), before)  # type: ignore[arg-type]
            emitted.pop("log_time")
            self.assertIs(mine.pop("log_logger"), log._logger)
            emitted.pop("log_logger")
            self.assertEqual(mine, emitted)
