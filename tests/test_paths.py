"""Where sendmail finds the daemon's socket: its own join of plain paths (no os import)
must name the very file os.path's rules give, for every path a config can hold."""

from __future__ import annotations

import os
import random
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.paths import (
    DEFAULT_STATE_DIR,
    SENDMAIL_SOCKET,
    _is_plain,
    default_config_path,
    environment,
    sendmail_socket_of,
    state_dir_of,
)

PARTS = ("etc", "smtpmailer", "a b", "ü", ".", "..", "", "~", "~root", "x.conf", "state")


def random_path(rng: random.Random) -> str:
    path = "/".join(rng.choice(PARTS) for _ in range(rng.randint(1, 4)))
    return rng.choice(("", "/", "//", "./", "~/")) + path + rng.choice(("", "", "/"))


class SocketPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        here = os.getcwd()
        self.addCleanup(os.chdir, here)

    def assertSameAsOsPath(self, config_path: str, raw: str | None) -> None:
        expected = os.path.join(state_dir_of(config_path, raw), SENDMAIL_SOCKET)
        self.assertEqual(sendmail_socket_of(config_path, raw), expected, (config_path, raw))

    def test_the_usual_places(self) -> None:
        os.chdir(tempfile.gettempdir())
        cases = {
            ("/etc/smtpmailer/smtpmailer.conf", None): "/var/lib/smtpmailer/sendmail.sock",
            ("/etc/smtpmailer/smtpmailer.conf", "/srv/mail/"): "/srv/mail/sendmail.sock",
            ("/etc/smtpmailer/smtpmailer.conf", "state"): "/etc/smtpmailer/state/sendmail.sock",
            ("/x.conf", "state"): "/state/sendmail.sock",
            ("/x.conf", "/"): "/sendmail.sock",
            ("conf/x.conf", "state"): os.path.join(os.getcwd(), "conf/state/sendmail.sock"),
            ("conf/x.conf", "../state"): os.path.join(os.getcwd(), "state/sendmail.sock"),
        }
        for (config_path, raw), expected in cases.items():
            self.assertEqual(sendmail_socket_of(config_path, raw), expected)

    def test_a_seeded_corpus_agrees_with_os_path(self) -> None:
        rng = random.Random(20)
        folders = ["/", tempfile.mkdtemp(prefix="smtpm-paths-")]
        self.addCleanup(os.rmdir, folders[1])
        plain = 0
        for _ in range(3000):
            os.chdir(rng.choice(folders))
            config_path, raw = random_path(rng), rng.choice((None, "", random_path(rng)))
            self.assertSameAsOsPath(config_path, raw)
            plain += _is_plain(config_path) and _is_plain(raw or DEFAULT_STATE_DIR)
        self.assertGreater(plain, 300)  # both ways are exercised

    def test_environment_reads_as_os_environ(self) -> None:
        names = {"SMTPMAILER_TEST_PLAIN": "/etc/x.conf", "SMTPMAILER_TEST_UTF8": "/tmp/ü.conf"}
        for name, value in names.items():
            os.environ[name] = value
            self.addCleanup(os.environ.pop, name)
            self.assertEqual(environment(name), os.environ[name])
        self.assertIsNone(environment("SMTPMAILER_TEST_UNSET"))

    def test_the_config_path_comes_from_the_environment(self) -> None:
        old = os.environ.pop("SMTPMAILER_CONFIG", None)
        if old is not None:
            self.addCleanup(os.environ.__setitem__, "SMTPMAILER_CONFIG", old)
        self.assertEqual(default_config_path(), "/etc/smtpmailer/smtpmailer.conf")
        os.environ["SMTPMAILER_CONFIG"] = "/srv/smtpmailer.conf"
        self.addCleanup(os.environ.pop, "SMTPMAILER_CONFIG", None)
        self.assertEqual(default_config_path(), "/srv/smtpmailer.conf")
