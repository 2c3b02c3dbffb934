"""Parsers for the human-friendly values of the config file: durations, sizes, rates."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|k|mb|mib|m|gb|gib|g)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h|d)\s*$")


def parse_duration(text: str) -> float:
    """``30``, ``30s``, ``5m``, ``2h``, ``5d`` (and ``ms``, ``w``) to seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 5m, 2h, 5d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"]


def parse_size(text: str) -> int:
    """``25MB`` to bytes. Units are binary (1 MB = 1,048,576 bytes), as in most mail servers."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size (examples: 512KB, 25MB, 1GB)")
    unit = (match.group(2) or "b").lower()[0]
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_rate(text: str) -> tuple[int, float]:
    """``100/m`` to (100 messages, 60.0 seconds)."""
    match = _RATE.match(text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a rate (examples: 10/s, 100/m, 5000/h)")
    return int(match.group(1)), float(_DURATION_UNITS[match.group(2)])


def format_duration(seconds: float) -> str:
    """The shortest exact spelling of a duration, for ``smtpmailer config`` output."""
    for unit in ("w", "d", "h", "m", "s"):
        size = _DURATION_UNITS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def format_size(size: int) -> str:
    """The shortest exact spelling of a size."""
    for unit, label in (("g", "GB"), ("m", "MB"), ("k", "KB")):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]}{label}"
    return str(size)
