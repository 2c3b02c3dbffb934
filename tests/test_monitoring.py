"""packaging/monitoring/: the alert rules pass promtool's check and their unit tests, and
every metric the rules and the Grafana dashboard use is one a running daemon exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import REPO, wait_until
from tests.support import EndToEndCase

MONITORING = os.path.join(REPO, "packaging", "monitoring")
METRIC = re.compile(r"\bsmtpmailer_[a-z0-9_]+")
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: `make test` installs Debian's prometheus"
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, cwd=MONITORING, timeout=120
    )


def used_metrics() -> set[str]:
    with open(os.path.join(MONITORING, "smtpmailer.rules.yml")) as handle:
        names = set(METRIC.findall(handle.read()))
    with open(os.path.join(MONITORING, "grafana-dashboard.json")) as handle:
        dashboard = json.load(handle)
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names |= set(METRIC.findall(target["expr"]))
    return names


class MonitoringTests(EndToEndCase):
    def test_rules_check_and_pass_their_unit_tests(self) -> None:
        checked = promtool("check", "rules", "smtpmailer.rules.yml")
        self.assertEqual(checked.returncode, 0, checked.stdout + checked.stderr)
        self.assertIn("SUCCESS: 9 rules found", checked.stdout)
        tested = promtool("test", "rules", "smtpmailer.rules.test.yml")
        self.assertEqual(tested.returncode, 0, tested.stdout + tested.stderr)

    def test_the_dashboard_is_importable_json(self) -> None:
        with open(os.path.join(MONITORING, "grafana-dashboard.json")) as handle:
            dashboard = json.load(handle)
        titles = [panel["title"] for panel in dashboard["panels"]]
        for wanted in (
            "Queue by state",
            "Delivery rate by outcome and relay",
            "Oldest message waiting",
        ):
            self.assertIn(wanted, titles)
        self.assertTrue(
            any(
                "histogram_quantile" in t["expr"] for p in dashboard["panels"] for t in p["targets"]
            )
        )
        ids = [panel["id"] for panel in dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))

    def test_every_metric_used_is_exposed_by_a_running_daemon(self) -> None:
        """A daemon whose relay refuses its password: the credentials counter has a sample."""
        peer = self.start_peer()
        with open(self.secret, "w") as handle:
            handle.write("wrong\n")
        daemon = self.start_daemon(peer.port).start()
        daemon.send("--from", "app@example.com", "--to", "a@example.org", "--subject", "s")
        wait_until(lambda: daemon.states().get("deferred") == 1, what="a deferral")
        url = open(os.path.join(daemon.state_dir, "status.url")).read().strip()
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            text = response.read().decode()
        families = list(text_string_to_metric_families(text))
        exposed = {family.name for family in families}
        exposed |= {sample.name for family in families for sample in family.samples}
        used = used_metrics()
        self.assertGreater(len(used), 10)
        for name in sorted(used):
            base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
            self.assertTrue(name in exposed or base in exposed, f"{name} is not in /metrics")
        self.assertIn('smtpmailer_relay_auth_failures_total{relay="localhost"} 1.0', text)
