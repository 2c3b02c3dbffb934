"""The twistd plugin: found by getPlugins from a real, non-editable install of the package."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import TestCase

from tests.daemon import REPO

FIND_PLUGIN = """
import sys
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
import twisted.plugins.smtpmailer_plugin as module
maker = [p for p in getPlugins(IServiceMaker) if p.tapname == "smtpmailer"]
assert len(maker) == 1, maker
print(module.__file__)
print(maker[0].module)
"""


class PluginTests(TestCase):
    def test_found_in_the_working_tree(self) -> None:
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "smtpmailer"]
        self.assertEqual(len(makers), 1)
        self.assertEqual(makers[0].module, "smtpmailer.tap")
        self.assertEqual(makers[0].options.__module__, "smtpmailer.tap")

    def test_found_in_an_installed_copy(self) -> None:
        """pip installs the plugin file (TWISTED-NOTES: packages must be listed explicitly)."""
        target = tempfile.mkdtemp(prefix="smtpm-site-")
        self.addCleanup(__import__("shutil").rmtree, target, True)
        from tools.install import building

        with building(REPO):  # make install may be building from this tree too
            install = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--no-deps",
                    "--no-build-isolation",
                    "--target",
                    target,
                    REPO,
                ],
                capture_output=True,
                text=True,
                timeout=300,
                cwd=target,
            )
        self.assertEqual(install.returncode, 0, install.stderr)
        self.assertTrue(
            os.path.isfile(os.path.join(target, "twisted", "plugins", "smtpmailer_plugin.py"))
        )
        self.assertFalse(os.path.exists(os.path.join(target, "twisted", "plugins", "__init__.py")))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = target
        found = subprocess.run(
            [sys.executable, "-c", FIND_PLUGIN],
            capture_output=True,
            text=True,
            env=env,
            cwd=target,
            timeout=120,
        )
        self.assertEqual(found.returncode, 0, found.stderr)
        plugin_file, module = found.stdout.split()
        self.assertTrue(plugin_file.startswith(target), plugin_file)
        self.assertEqual(module, "smtpmailer.tap")
