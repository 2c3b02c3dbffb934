"""``make install`` into a temporary root (DESTDIR), as a package build or an admin would
run it, and ``make uninstall``; the man pages and shell completions it lays down."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from tests.daemon import REPO

PREFIX = "/opt/smtpmailer"


def make(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the installed copy must stand on its own
    return subprocess.run(
        ["make", "-C", REPO, "--no-print-directory", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def files_under(root: str) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
    )


def render_warnings(page: str) -> str:
    """What ``man --warnings`` says about a page (nothing, for a clean one)."""
    env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
    result = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", page],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


class ManPageTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.out = tempfile.mkdtemp(prefix="smtpm-man-")
        self.addCleanup(shutil.rmtree, self.out, True)
        subprocess.run(
            [os.path.join(REPO, ".venv", "bin", "python"), "tools/manpages.py", self.out],
            cwd=REPO,
            check=True,
            capture_output=True,
        )

    def page(self, relative: str) -> str:
        with open(os.path.join(self.out, relative), encoding="utf-8") as handle:
            return handle.read()

    def test_every_page_renders_without_a_warning(self) -> None:
        pages = files_under(self.out)
        self.assertEqual(
            pages, ["man5/smtpmailer.conf.5", "man8/smtpmailer-sendmail.8", "man8/smtpmailer.8"]
        )
        for page in pages:
            self.assertEqual(render_warnings(os.path.join(self.out, page)), "", page)

    def test_smtpmailer_8_has_every_command_and_option(self) -> None:
        from smtpmailer.cli.main import build_parser
        from tools.manpages import _options, _subcommands

        text = self.page("man8/smtpmailer.8").replace("\\-", "-")

        def walk(parser: object, path: str) -> int:
            count = 0
            for name, _, sub in _subcommands(parser):  # type: ignore[arg-type]
                if _subcommands(sub):
                    count += walk(sub, f"{path} {name}")
                    continue
                self.assertIn(f'.SS "{path} {name}', text)
                for names, _ in _options(sub):
                    self.assertIn(f"\\fB{names}\\fR", text.replace("\\e", "\\"))
                count += 1
            return count

        self.assertGreater(walk(build_parser(), "smtpmailer"), 20)

    def test_smtpmailer_conf_5_has_every_section_and_key_with_its_default(self) -> None:
        from smtpmailer.config.sections import SECTIONS, section_schema

        text = self.page("man5/smtpmailer.conf.5").replace("\\-", "-")
        # Each section's keys as the page gives them: names, kind, default.
        parts = re.split(r'^\.SH "\[(\w+)(?::NAME)?\]"$', text, flags=re.MULTILINE)
        pages = dict(zip(parts[1::2], parts[2::2], strict=True))
        self.assertEqual(set(pages), set(SECTIONS))
        for section, body in pages.items():
            shown = {}
            for names, kind, default in re.findall(
                r"^\\fB([a-z0-9_, ]+)\\fR \(([^;]+); default: ([^)]*)\)$", body, re.MULTILINE
            ):
                for name in names.split(", "):
                    shown[name] = (kind, default)
            expected = {
                key: (value.kind, default or "empty")
                for key, (value, default) in section_schema(section).items()
            }
            self.assertEqual(shown, expected, section)

    def test_sendmail_8_lists_the_exit_codes(self) -> None:
        text = self.page("man8/smtpmailer-sendmail.8")
        for code in ("0", "64", "65", "75", "78"):
            self.assertIn(f".TP\n\\fB{code}\\fR\n", text)


class InstallTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = tempfile.mkdtemp(prefix="smtpm-root-")
        self.addCleanup(shutil.rmtree, self.root, True)

    def staged(self, path: str) -> str:
        return self.root + path

    def install(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return make("install", f"DESTDIR={self.root}", f"PREFIX={PREFIX}", *extra)

    def installed_python(self, *args: str) -> str:
        env = {"PATH": os.environ["PATH"]}
        result = subprocess.run(
            [self.staged(f"{PREFIX}/bin/python"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_install_and_uninstall(self) -> None:
        from smtpmailer import __version__

        result = self.install()
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("smtpmailer found", result.stdout)
        # The commands, from the installed copy alone (no PYTHONPATH), and on PATH.
        version = self.installed_python("-m", "smtpmailer.cli", "--version").strip()
        self.assertEqual(version, __version__.public())
        metadata = self.installed_python(
            "-c", "import importlib.metadata as m; print(m.version('smtpmailer'))"
        )
        self.assertEqual(metadata.strip(), version, "the package's own version")
        with open(self.staged(f"{PREFIX}/bin/smtpmailer")) as handle:
            self.assertEqual(handle.readline(), f"#!{PREFIX}/bin/python\n")
        self.check_quick_sendmail()
        for command in ("smtpmailer", "smtpmailer-sendmail"):
            link = self.staged(f"/usr/local/bin/{command}")
            self.assertEqual(os.readlink(link), f"{PREFIX}/bin/{command}")
            self.assertTrue(os.path.exists(self.staged(os.readlink(link))))
        plugins = self.installed_python(
            "-c",
            "import os, twisted.plugins as p; from twisted.plugin import IPlugin, getPlugins\n"
            "print(sorted(getattr(x, 'tapname', '') for x in getPlugins(IPlugin)))\n"
            "print(os.path.exists(os.path.join(os.path.dirname(p.__file__), 'dropin.cache')))",
        )
        self.assertIn("'smtpmailer'", plugins)
        self.assertTrue(plugins.rstrip().endswith("True"), "the plugin cache was written")
        self.check_unit()
        self.check_system_files()
        self.check_completions()
        self.check_sendmail_link()
        self.check_reinstall_keeps_the_config_and_uninstall()

    def check_quick_sendmail(self) -> None:
        """smtpmailer-sendmail starts without site, and still finds the package."""
        with open(self.staged(f"{PREFIX}/bin/smtpmailer-sendmail")) as handle:
            launcher = handle.read()
        self.assertTrue(launcher.startswith(f"#!{PREFIX}/bin/python -IS\n"))
        self.assertIn(f"sys.path.insert(0, '{PREFIX}/lib/python3.", launcher)
        # Run as it would be, from the staged copy (its paths pointed there).
        staged = launcher.replace(PREFIX, self.staged(PREFIX)).split("\n", 1)[1]
        run = subprocess.run(
            [self.staged(f"{PREFIX}/bin/python"), "-IS", "-c", staged, "-bp"],
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"], "SMTPMAILER_CONFIG": self.write_queue_config()},
            timeout=60,
        )
        self.assertEqual((run.returncode, run.stderr), (0, ""))
        self.assertIn("Mail queue is empty", run.stdout)

    def write_queue_config(self) -> str:
        folder = os.path.abspath(self.mktemp())  # outside the staged root
        os.makedirs(folder)
        path = os.path.join(folder, "quick.conf")
        with open(path, "w") as handle:
            handle.write(f"[Daemon]\nstate_dir = {folder}\n[Relay]\nhost = x\n")
        return path

    def check_unit(self) -> None:
        unit_path = self.staged("/etc/systemd/system/smtpmailer.service")
        with open(unit_path) as handle:
            unit = handle.read()
        self.assertIn(f"ExecStart={PREFIX}/bin/twistd -n --pidfile= --logfile=- smtpmailer", unit)
        named = set(re.findall(r"^Exec\w+=(\S+)", unit, re.MULTILINE))
        self.assertEqual(named, {f"{PREFIX}/bin/smtpmailer", f"{PREFIX}/bin/twistd", "/bin/kill"})
        for path in named:
            where = path if path.startswith("/bin/") else self.staged(path)
            self.assertTrue(os.access(where, os.X_OK), f"the unit names {path}")
        # systemd-analyze verify, with the paths pointed into the staged root.
        staged_unit = os.path.join(self.root, "verify", "smtpmailer.service")
        os.makedirs(os.path.dirname(staged_unit))
        with open(staged_unit, "w") as handle:
            handle.write(unit.replace(PREFIX, self.staged(PREFIX)))
        verify = subprocess.run(
            ["systemd-analyze", "verify", staged_unit], capture_output=True, text=True, timeout=120
        )
        self.assertEqual((verify.returncode, verify.stdout + verify.stderr), (0, ""))
        shutil.rmtree(os.path.dirname(staged_unit))

    def check_system_files(self) -> None:
        for path in (
            "/etc/sysusers.d/smtpmailer.conf",
            "/etc/tmpfiles.d/smtpmailer.conf",
            "/etc/logrotate.d/smtpmailer",
        ):
            self.assertTrue(os.path.isfile(self.staged(path)), path)
        config = self.staged("/etc/smtpmailer/smtpmailer.conf")
        self.assertEqual(stat.S_IMODE(os.stat(config).st_mode), 0o640)
        for page in (
            "/usr/local/share/man/man8/smtpmailer.8",
            "/usr/local/share/man/man5/smtpmailer.conf.5",
            "/usr/local/share/man/man8/smtpmailer-sendmail.8",
        ):
            self.assertEqual(render_warnings(self.staged(page)), "", page)

    def check_completions(self) -> None:
        bash = self.staged("/usr/local/share/bash-completion/completions/smtpmailer")
        completed = subprocess.run(
            [
                "bash",
                "-c",
                f"source {bash}; COMP_WORDS=(smtpmailer queue s); COMP_CWORD=2; "
                'COMP_LINE="smtpmailer queue s"; COMP_POINT=${#COMP_LINE}; '
                '_shtab_smtpmailer; echo "${COMPREPLY[@]}"',
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        self.assertEqual(completed.stdout.split(), ["show", "salvage", "stats"], completed.stderr)
        zsh = self.staged("/usr/local/share/zsh/site-functions/_smtpmailer")
        parsed = subprocess.run(["zsh", "-n", zsh], capture_output=True, text=True, timeout=60)
        self.assertEqual((parsed.returncode, parsed.stderr), (0, ""))
        with open(zsh) as handle:
            self.assertIn("oauth2", handle.read())

    def check_sendmail_link(self) -> None:
        self.assertFalse(os.path.lexists(self.staged("/usr/sbin/sendmail")), "only when asked")
        other_mta = self.staged("/usr/sbin/sendmail")
        os.makedirs(os.path.dirname(other_mta))
        with open(other_mta, "w") as handle:
            handle.write("#!/bin/sh\n# postfix's\n")
        refused = self.install("SENDMAIL_LINK=1")
        self.assertNotEqual(refused.returncode, 0)
        self.assertIn("/usr/sbin/sendmail exists (another MTA's?): not replaced", refused.stderr)
        with open(other_mta) as handle:
            self.assertIn("postfix's", handle.read())
        os.unlink(other_mta)
        other_mailq = self.staged("/usr/bin/mailq")  # any one of the names is enough
        os.makedirs(os.path.dirname(other_mailq))
        os.symlink("/usr/sbin/exim4", other_mailq)
        refused = self.install("SENDMAIL_LINK=1")
        self.assertIn("/usr/bin/mailq exists (another MTA's?): not replaced", refused.stderr)
        self.assertFalse(os.path.lexists(other_mta), "nothing linked while one is refused")
        os.unlink(other_mailq)
        linked = self.install("SENDMAIL_LINK=1")
        self.assertEqual(linked.returncode, 0, linked.stderr)
        for name in (
            "/usr/sbin/sendmail",
            "/usr/lib/sendmail",
            "/usr/bin/mailq",
            "/usr/bin/newaliases",
        ):
            self.assertEqual(os.readlink(self.staged(name)), f"{PREFIX}/bin/smtpmailer-sendmail")

    def check_reinstall_keeps_the_config_and_uninstall(self) -> None:
        config = self.staged("/etc/smtpmailer/smtpmailer.conf")
        with open(config, "a") as handle:
            handle.write("\n; edited by the admin\n")
        again = self.install()
        self.assertEqual(again.returncode, 0, again.stderr)
        self.assertIn("/etc/smtpmailer/smtpmailer.conf exists: kept as it is", again.stdout)
        with open(config) as handle:
            self.assertIn("edited by the admin", handle.read())
        # Another MTA installed since put its own newaliases where our link was.
        os.unlink(self.staged("/usr/bin/newaliases"))
        with open(self.staged("/usr/bin/newaliases"), "w") as handle:
            handle.write("#!/bin/sh\n# postfix's\n")
        removed = make("uninstall", f"DESTDIR={self.root}", f"PREFIX={PREFIX}")
        self.assertEqual(removed.returncode, 0, removed.stderr)
        self.assertIn("/etc/smtpmailer/smtpmailer.conf was edited: kept", removed.stdout)
        self.assertIn(
            "/usr/bin/newaliases is no longer ours (another MTA's?): kept", removed.stdout
        )
        self.assertEqual(
            files_under(self.root), ["etc/smtpmailer/smtpmailer.conf", "usr/bin/newaliases"]
        )


class NewsTests(SynchronousTestCase):
    def test_the_changelog_fragments_build_into_news(self) -> None:
        towncrier = os.path.join(REPO, ".venv", "bin", "towncrier")
        result = subprocess.run(
            [towncrier, "build", "--draft", "--version", "9.9.9"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        fragments = sorted(os.listdir(os.path.join(REPO, "changelog.d")))
        self.assertIn("17.feature.md", fragments)
        news = " ".join(result.stdout.split())
        for fragment in fragments:
            name = fragment.split(".")[0]
            if name.startswith("+"):  # towncrier's orphan: a change no issue asked for
                with open(os.path.join(REPO, "changelog.d", fragment), encoding="utf-8") as f:
                    self.assertIn(" ".join(f.read().split()), news, fragment)
                continue
            self.assertIn(f"(#{name})", result.stdout, fragment)
