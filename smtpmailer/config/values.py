"""The kinds of value a config key holds: how each is parsed from the file and shown back.

Every parser takes the text as written and raises ValueError with a clear reason; every
``show`` spells a parsed value the way the file would, for ``smtpmailer config``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import attrs

from smtpmailer.units import format_duration, format_size, parse_duration, parse_rate, parse_size


def _plain(value: Any) -> str:
    return "" if value is None else str(value)


@attrs.frozen
class Value:
    parse: Callable[[str], Any]
    show: Callable[[Any], str] = _plain
    kind: str = "text"  # what smtpmailer.conf(5) calls it


def whole(low: int, high: int | None = None) -> Value:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{value} is out of range (must be {bound})")
        return value

    between = f"{low}..{high}" if high is not None else f"{low} or more"
    return Value(parse, kind=f"integer, {between}")


def number(low: float) -> Value:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if value < low:
            raise ValueError(f"{value:g} is out of range (must be at least {low:g})")
        return value

    return Value(parse, lambda value: f"{value:g}", kind=f"number, {low:g} or more")


def choice(*choices: str) -> Value:
    def parse(text: str) -> str:
        value = text.lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of: {', '.join(choices)}")
        return value

    return Value(parse, kind="one of " + " | ".join(choices))


def _bool(text: str) -> bool:
    value = text.lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def _show_rate(rate: tuple[int, float] | None) -> str:
    return f"{rate[0]}/{format_duration(rate[1])[-1]}" if rate else ""


def _listen(text: str) -> str:
    from smtpmailer.endpoints import parse_listen

    parse_listen(text)
    return text


def _workers(text: str) -> int:
    """Submission worker processes: ``auto`` is one where there is a second CPU to run
    it (and fork-and-pass-a-socket, so not on Windows), else none."""
    if text.strip().lower() == "auto":
        return 1 if os.name == "posix" and (os.cpu_count() or 1) >= 2 else 0
    parse: Callable[[str], int] = whole(0, 16).parse
    return parse(text)


def _words(text: str) -> tuple[str, ...]:
    """``a, b c``: a list, split at commas and white space."""
    return tuple(word for word in text.replace(",", " ").split() if word)


TEXT = Value(lambda text: text)
WORDS = Value(_words, lambda words: ", ".join(words or ()), kind="list")
# Resolved against the config file's folder where the section is read.
PATH = Value(lambda text: text, kind="path")
BOOL = Value(_bool, lambda value: str(value).lower(), kind="boolean")
DURATION = Value(parse_duration, format_duration, kind="duration")
POSITIVE_DURATION = Value(_positive_duration, format_duration, kind="duration")
SIZE = Value(parse_size, format_size, kind="size")
RATE = Value(lambda text: parse_rate(text) if text else None, _show_rate, kind="rate")
LISTEN = Value(_listen, kind="endpoint")
WORKERS = Value(_workers, kind="auto, or 0..16")
