"""The daemon's reactor: asyncio on uvloop unless twistd was given one, Twisted's default
without uvloop. Each case runs in a fresh interpreter, where no reactor is installed yet."""

from __future__ import annotations

import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.daemon import environment


def chosen(prelude: str) -> list[str]:
    """What install_reactor says, and the class of the reactor then imported."""
    script = (
        f"{prelude}\n"
        "from smtpmailer.event_loop import install_reactor\n"
        "print(install_reactor())\n"
        "from twisted.internet import reactor\n"
        "print(type(reactor).__name__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=environment(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("\n")[:2]


class InstallReactorTests(SynchronousTestCase):
    def test_uvloop_when_installed(self) -> None:
        self.assertEqual(chosen(""), ["asyncio on uvloop", "AsyncioSelectorReactor"])

    def test_twisteds_default_without_uvloop(self) -> None:
        self.assertEqual(
            chosen("import sys; sys.modules['uvloop'] = None  # import fails"),
            ["twisted's default", "EPollReactor"],
        )

    def test_a_reactor_chosen_before_is_kept(self) -> None:
        """twistd -r NAME installs its reactor while parsing options, before ours."""
        self.assertEqual(
            chosen("from twisted.internet import pollreactor; pollreactor.install()"),
            ["PollReactor", "PollReactor"],
        )
