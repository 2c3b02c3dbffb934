"""Changing a running TimerService's period, for reload."""

from __future__ import annotations

from twisted.application.internet import TimerService


def set_interval(timer: TimerService, seconds: float) -> None:
    """The next tick comes ``seconds`` from now; a tick in progress is left to finish."""
    timer.step = seconds
    loop = getattr(timer, "_loop", None)
    if loop is not None and loop.running:
        loop.interval = seconds
        loop.reset()
