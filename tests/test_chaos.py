"""The fault suite (bench/chaos) in its tiny mode: every check must hold, so the suite
cannot rot; `make chaos` runs it at full size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from tests.daemon import REPO, environment


class TinyChaosTests(TestCase):
    timeout = 900

    def test_every_fault_gets_its_answer_and_nothing_is_lost(self) -> None:
        directory = tempfile.mkdtemp(prefix="smtpm-chaos-test-")
        self.addCleanup(shutil.rmtree, directory, True)
        output = os.path.join(directory, "chaos.json")
        result = subprocess.run(
            [sys.executable, os.path.join(REPO, "bench", "chaos"), "--tiny", "--json", output],
            capture_output=True,
            text=True,
            env=environment(),
            timeout=850,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-4000:] + result.stderr[-4000:])
        with open(output) as handle:
            report = json.load(handle)
        self.assertEqual(report["kill_storm"]["lost"], 0)
        self.assertEqual(report["reload_storm"]["lost"], 0)
        self.assertEqual(report["secrets"]["leaked"], [])
        self.assertGreater(report["secrets"]["searched"], 5)
        self.assertTrue(all(part["ok"] for part in report.values()), report)
