"""The files in packaging/: the systemd unit verifies clean, the plist parses, the post-install
step finds the plugin."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from tests.daemon import BIN, REPO, environment

PACKAGING = os.path.join(REPO, "packaging")


class PackagingTests(TestCase):
    def test_systemd_unit_verifies_without_a_warning(self) -> None:
        """systemd-analyze verify prints problems and still exits 0: any output fails."""
        analyze = shutil.which("systemd-analyze")
        if analyze is None:
            self.fail("systemd-analyze is missing: `make test` installs Debian's systemd")
        with open(os.path.join(PACKAGING, "systemd", "smtpmailer.service")) as handle:
            unit = handle.read()
        self.assertIn("Type=notify", unit)
        self.assertIn("ExecReload=/bin/kill -HUP $MAINPID", unit)
        for setting in (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "PrivateDevices=yes",
            "CapabilityBoundingSet=\n",
            "RestrictAddressFamilies=",
            "ReadWritePaths=",
            "LimitNOFILE=",
        ):
            self.assertIn(setting, unit)
        # Point the commands at this checkout so verify can check they exist.
        unit = unit.replace("/usr/bin/twistd", os.path.join(BIN, "twistd")).replace(
            "/usr/bin/smtpmailer", f"{sys.executable} -m smtpmailer.cli"
        )
        directory = tempfile.mkdtemp(prefix="smtpm-unit-")
        self.addCleanup(shutil.rmtree, directory, True)
        path = os.path.join(directory, "smtpmailer.service")
        with open(path, "w") as handle:
            handle.write(unit)
        result = subprocess.run(
            [analyze, "verify", path], capture_output=True, text=True, timeout=120
        )
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_launchd_plist_parses(self) -> None:
        with open(os.path.join(PACKAGING, "launchd", "org.smtpmailer.daemon.plist"), "rb") as f:
            job = plistlib.load(f)
        self.assertEqual(job["Label"], "org.smtpmailer.daemon")
        self.assertEqual(
            job["ProgramArguments"][1:5],
            ["-n", "--pidfile=", job["ProgramArguments"][3], "smtpmailer"],
        )

    def test_post_install_regenerates_the_plugin_cache(self) -> None:
        env = environment()
        env["PYTHON"] = sys.executable
        result = subprocess.run(
            ["sh", os.path.join(PACKAGING, "post-install.sh")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("smtpmailer found", result.stdout)

    def test_tmpfiles_and_sysusers_name_the_same_account(self) -> None:
        with open(os.path.join(PACKAGING, "sysusers.d", "smtpmailer.conf")) as handle:
            users = [line.split() for line in handle if line.strip() and line[0] != "#"]
        self.assertEqual(users[0][:2], ["u", "smtpmailer"])
        with open(os.path.join(PACKAGING, "tmpfiles.d", "smtpmailer.conf")) as handle:
            folders = {
                line.split()[1]: line.split() for line in handle if line.strip() and line[0] != "#"
            }
        self.assertEqual(folders["/var/lib/smtpmailer"][2:4], ["0700", "smtpmailer"])
