"""A port to hand a server that must be told its port before it binds it.

Probing with ``bind(("127.0.0.1", 0))`` and closing the probe races every other test
running in parallel: the kernel gives that same range out to their ``bind(0)`` and to
their outgoing connections, so the port can be gone by the time the server binds it. A
port below the kernel's ephemeral range is only ever taken by someone asking for it by
number, which no test or benchmark does; the probe still checks that nothing holds it now.
Tests and benchmarks both use it (a server told its port, or a port nothing listens on)."""

from __future__ import annotations

import random
import socket

# Not the module's shared generator: a test that seeds it would give parallel runs one sequence.
_CHOICE = random.SystemRandom()

# Above the ports local services listen on by default (PostgreSQL 5432, Redis 6379, ...);
# the probe in fixed_port steps over any other that is taken.
LOWEST = 10000


def ephemeral_range() -> tuple[int, int]:
    """The range the kernel hands out for port 0 and for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as handle:
            low, high = (int(part) for part in handle.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def fixed_port(host: str = "127.0.0.1", tries: int = 200) -> int:
    """A port on ``host`` that is free now and that no ``bind(0)`` will be given."""
    low, _ = ephemeral_range()
    if low - LOWEST < 1000:  # a machine that gives out nearly every port: take the kernel's
        with socket.socket() as probe:
            probe.bind((host, 0))
            return int(probe.getsockname()[1])
    for _ in range(tries):
        port = _CHOICE.randrange(LOWEST, low)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        return port
    raise AssertionError(f"no free port on {host} between {LOWEST} and {low} in {tries} tries")
