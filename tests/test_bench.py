"""The benchmarks and the fault suite in a tiny mode, so they cannot rot: each must finish
and write its JSON. They measure nothing here (timings belong to bench/, on a quiet
machine); the fault suite's checks must hold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

from twisted.trial.unittest import TestCase

from tests.daemon import REPO, environment

BENCH = os.path.join(REPO, "bench")


class TinyBenchTests(TestCase):
    timeout = 600

    def bench(self, name: str, *args: str) -> dict[str, object]:
        directory = tempfile.mkdtemp(prefix="smtpm-bench-")
        self.addCleanup(shutil.rmtree, directory, True)
        output = os.path.join(directory, f"{name}.json")
        result = subprocess.run(
            [sys.executable, os.path.join(BENCH, name), *args, "--json", output],
            capture_output=True,
            text=True,
            env=environment(),
            timeout=550,
        )
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-3000:])
        with open(output) as handle:
            return dict(json.load(handle))

    def test_throughput(self) -> None:
        report = self.bench("throughput", "--messages", "200")
        self.assertEqual((report["messages"], report["failed_or_deferred"]), (200, 0))

    def test_api_against_anymail(self) -> None:
        report = self.bench("api", "--messages", "200", "--runs", "1")
        self.assertEqual(report["messages"], 200)
        self.assertGreater(report["smtpmailer"]["msg_per_s"]["median"], 0)  # type: ignore[index]
        self.assertGreater(report["anymail"]["msg_per_s"]["median"], 0)  # type: ignore[index]

    def test_batch(self) -> None:
        report = self.bench("batch", "--recipients", "200", "--runs", "1")
        self.assertEqual(report["recipients"], 200)

    def test_latency(self) -> None:
        report = self.bench("latency", "--messages", "5")
        self.assertEqual(report["messages"], 5)

    def test_relay_against_postfix(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("bench/relay reconfigures the system's Postfix: it needs root")
        report = self.bench("relay", "--messages", "200", "--sizes", "1024", "--runs", "1")
        self.assertEqual(sorted(report["results"]), ["drain 1024B", "end_to_end 1024B"])  # type: ignore[call-overload]
        for row in report["results"].values():  # type: ignore[attr-defined]
            self.assertGreater(row["cpu_ms_per_message"]["postfix"]["median"], 0)
            self.assertGreater(row["cpu_ms_per_message"]["smtpmailer"]["median"], 0)
        # End to end, smtp-source's CPU is counted with the sink's, and the ceiling is the
        # rate at which our CPU a message and theirs fill the machine's cores.
        row = report["results"]["end_to_end 1024B"]  # type: ignore[index]
        cpu = row["cpu_ms_per_message"]
        self.assertGreater(cpu["sink_and_client"]["median"], 0)
        machine = cpu["smtpmailer"]["median"] + cpu["sink_and_client"]["median"]
        self.assertAlmostEqual(
            row["ceiling"]["msg_per_s"], 1000 * row["ceiling"]["cores"] / machine, places=3
        )

    def test_ceiling(self) -> None:
        """Both sides of each measure ran and relayed everything; the instant relay spends
        less CPU a message than the SMTP client does (what the bench exists to show)."""
        report = self.bench("ceiling", "--messages", "200", "--runs", "1")
        self.assertEqual(sorted(report["results"]), ["drain 1024B", "end_to_end 1024B"])  # type: ignore[call-overload]
        drain = report["results"]["drain 1024B"]  # type: ignore[index]
        for side in ("smtp-sink", "instant"):
            self.assertGreater(drain[side]["msg_per_s"], 0)
        self.assertLess(
            drain["instant"]["cpu_ms_per_message"], drain["smtp-sink"]["cpu_ms_per_message"]
        )

    def test_load(self) -> None:
        report = self.bench("load", "--rate", "200", "--seconds", "1", "--idle", "300")
        self.assertEqual(report["under_load"]["messages"], 200)  # type: ignore[index]
        self.assertEqual(report["at_rest"]["idle_connections"], 300)  # type: ignore[index]

    def test_scale(self) -> None:
        report = self.bench("scale", "--messages", "2000")
        self.assertEqual(report["messages"], 2000)
        self.assertGreater(report["sent_in_first_seconds"], 0)  # type: ignore[operator]

    def test_submit_against_postfix(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("bench/submit reconfigures the system's Postfix: it needs root")
        report = self.bench("submit", "--messages", "200", "--runs", "1", "--calls", "2")
        self.assertIn("ratio", report["accept_per_s"])  # type: ignore[operator]
        self.assertIn("session_ratio", report["sendmail_call_ms"])  # type: ignore[operator]

    def test_cluster(self) -> None:
        from tests.postgres import server

        report = self.bench(
            "cluster",
            "--messages",
            "200",
            "--slow-messages",
            "60",
            "--runs",
            "1",
            "--dsn",
            server(),
        )
        self.assertEqual(sorted(report["nodes, relay 20 ms"]), ["1", "2", "3"])  # type: ignore[call-overload]
        self.assertIn("ratio", report["drain 1KB"])  # type: ignore[operator]

    def test_chaos(self) -> None:
        """The fault suite (bench/chaos): every check must hold, even in its tiny mode."""
        report = self.bench("chaos", "--tiny")
        self.assertEqual(report["kill_storm"]["lost"], 0)  # type: ignore[index]
        self.assertEqual(report["reload_storm"]["lost"], 0)  # type: ignore[index]
        self.assertEqual(report["secrets"]["leaked"], [])  # type: ignore[index]
        self.assertGreater(report["secrets"]["searched"], 5)  # type: ignore[index]
        self.assertTrue(all(part["ok"] for part in report.values()), report)  # type: ignore[attr-defined]

    def test_profile(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("py-spy attaches to the daemon with ptrace: it needs root")
        report = self.bench("profile", "--messages", "200", "--size", "1024", "--rate", "500")
        self.assertEqual(report["messages"], 200)
        self.assertGreater(report["samples"], 0)  # type: ignore[operator]
