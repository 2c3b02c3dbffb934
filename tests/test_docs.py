"""The documentation stays true: its links resolve and the modules it names exist."""

from __future__ import annotations

import glob
import os
import re

from twisted.trial.unittest import SynchronousTestCase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


class DocsTests(SynchronousTestCase):
    def documents(self) -> list[str]:
        return [os.path.join(REPO, "README.md"), *glob.glob(os.path.join(REPO, "docs", "*.md"))]

    def test_every_relative_link_resolves(self) -> None:
        checked = 0
        for document in self.documents():
            with open(document, encoding="utf-8") as handle:
                text = handle.read()
            for target in LINK.findall(text):
                if re.match(r"^[a-z]+:", target):  # http:, mailto:
                    continue
                path = os.path.normpath(os.path.join(os.path.dirname(document), target))
                self.assertTrue(os.path.exists(path), f"{document}: {target} does not exist")
                checked += 1
        self.assertGreater(checked, 3)

    def test_the_modules_architecture_md_names_exist(self) -> None:
        with open(os.path.join(REPO, "docs", "architecture.md"), encoding="utf-8") as handle:
            text = handle.read()
        named = set(re.findall(r"`?([a-z_]+(?:/[a-z_]+)*(?:\.py|/))`?", text))
        self.assertGreater(len(named), 20)
        everywhere = {
            os.path.relpath(path, os.path.join(REPO, "smtpmailer"))
            for path in glob.glob(os.path.join(REPO, "smtpmailer", "**", "*"), recursive=True)
        }
        for name in sorted(named):
            candidates = [os.path.join(REPO, "smtpmailer", name), os.path.join(REPO, name)]
            found = any(os.path.exists(path) for path in candidates) or (
                "/" not in name.rstrip("/")  # a module named within its folder's row
                and any(os.path.basename(path) == name.rstrip("/") for path in everywhere)
            )
            self.assertTrue(found, f"docs/architecture.md names {name}, which does not exist")

    def test_every_ini_example_names_declared_keys_with_valid_values(self) -> None:
        """A reader copies these blocks into smtpmailer.conf: a misspelt key or a value
        the daemon refuses would stop it at start."""
        from smtpmailer.config.load import Reader
        from smtpmailer.config.sections import SECTIONS
        from smtpmailer.ini import parse_ini

        checked = 0
        for document in self.documents():
            with open(document, encoding="utf-8") as handle:
                blocks = re.findall(r"```ini\n(.*?)```", handle.read(), re.S)
            for number, block in enumerate(blocks):
                where = f"{os.path.relpath(document, REPO)}, ini block {number + 1}"
                for section in parse_ini(block, where):
                    self.assertIn(section.name, SECTIONS, f"{where}: [{section.title}]")
                    reader = Reader(where, section, section.name)  # unknown keys raise
                    for entry in section.entries:
                        reader.get(entry.key)  # a value the daemon refuses raises
                        checked += 1
        self.assertGreater(checked, 20)
