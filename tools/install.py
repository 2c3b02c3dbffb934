"""``make install`` and ``make uninstall``: smtpmailer as a server runs it.

install: a virtualenv at PREFIX (default /opt/smtpmailer) with the project's wheel and its
dependencies, Twisted's plugin cache regenerated, the commands linked into BINDIR, the
systemd unit (ExecStart pointing into PREFIX), sysusers.d, tmpfiles.d and logrotate files,
/etc/smtpmailer/smtpmailer.conf only if there is none, man pages and bash and zsh
completions where those look, and /usr/sbin/sendmail only when asked (SENDMAIL_LINK=1)
and never over another MTA's. Everything is written under DESTDIR when given (a package
build, or a test), with the paths inside the files as they will be once installed.

Every file put outside PREFIX is listed in PREFIX/share/smtpmailer/installed-files, which
uninstall reads: it removes those and PREFIX, and keeps a config file that was edited.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFEST = "share/smtpmailer/installed-files"
COMMANDS = ("smtpmailer", "smtpmailer-sendmail")


def digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


class Installer:
    def __init__(self, options: argparse.Namespace) -> None:
        self.o = options
        self.destdir = os.path.abspath(options.destdir) if options.destdir else ""
        self.installed: list[str] = []  # final paths, outside PREFIX

    def staged(self, path: str) -> str:
        """Where a final path is written now: under DESTDIR, if there is one."""
        return self.destdir + path if self.destdir else path

    def say(self, text: str) -> None:
        print(f"install: {text}", flush=True)

    def run(self, *command: str) -> None:
        subprocess.run(command, check=True)

    def put(self, final: str, text: str, mode: int = 0o644) -> None:
        target = self.staged(final)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(target, mode)
        self.installed.append(final)

    def link(self, final: str, points_to: str) -> None:
        target = self.staged(final)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if os.path.islink(target):
            os.unlink(target)
        os.symlink(points_to, target)
        self.installed.append(final)

    # --- the steps ---

    def virtualenv(self) -> str:
        prefix = self.o.prefix
        venv = self.staged(prefix)
        if not os.path.exists(os.path.join(venv, "bin", "python")):
            self.run(self.o.python, "-m", "venv", venv)
        python = os.path.join(venv, "bin", "python")
        with tempfile.TemporaryDirectory(prefix="smtpmailer-wheel-") as wheels:
            self.say("building the wheel")
            with building(REPO):
                self.run(
                    sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, REPO
                )
            (wheel,) = [name for name in os.listdir(wheels) if name.endswith(".whl")]
            self.say(f"installing {wheel} and its dependencies into {prefix}")
            self.run(python, "-m", "pip", "install", "-q", "--upgrade", "pip")
            self.run(
                python,
                "-m",
                "pip",
                "install",
                "-q",
                "--force-reinstall",
                "--no-deps",
                os.path.join(wheels, wheel),
            )
            self.run(python, "-m", "pip", "install", "-q", os.path.join(wheels, wheel))
        self.relocate(venv, prefix)
        self.quick_sendmail(venv, prefix, python)
        # The plugin cache: the daemon's user cannot write it (ProtectSystem=strict).
        found = subprocess.run(
            [
                python,
                "-c",
                "from twisted.plugin import IPlugin, getPlugins\n"
                "print(sorted(getattr(p, 'tapname', '') for p in getPlugins(IPlugin)))",
            ],
            check=True,
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"]},
        ).stdout
        if "'smtpmailer'" not in found:
            raise SystemExit("install: twistd does not find the smtpmailer plugin")
        self.say("twisted plugin cache regenerated; smtpmailer found")
        return python

    def quick_sendmail(self, venv: str, prefix: str, python: str) -> None:
        """smtpmailer-sendmail runs once per message (cron, PHP's mail(), git): pip's script
        starts Python with site, which reads every .pth file of the virtualenv. This one
        starts it isolated and without site (-IS) and names the virtualenv's site-packages
        itself: a few milliseconds less a call."""
        site = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
            env={"PATH": os.environ["PATH"]},
        ).stdout.strip()
        site = prefix + site[len(venv) :] if site.startswith(venv) else site
        script = (
            f"#!{prefix}/bin/python -IS\n"
            "# smtpmailer-sendmail, started without site (see tools/install.py)\n"
            "import sys\n"
            f"sys.path.insert(0, {site!r})\n"
            "from smtpmailer.intake.sendmail.command import main\n"
            "sys.exit(main())\n"
        )
        target = os.path.join(venv, "bin", "smtpmailer-sendmail")
        with open(target, "w") as handle:
            handle.write(script)
        os.chmod(target, 0o755)

    def relocate(self, venv: str, prefix: str) -> None:
        """Scripts and activate files name the folder the venv was made in; under DESTDIR
        that is not where it will run."""
        if venv == prefix:
            return
        for folder in (os.path.join(venv, "bin"), venv):
            for name in os.listdir(folder):
                path = os.path.join(folder, name)
                if os.path.islink(path) or not os.path.isfile(path):
                    continue
                with open(path, "rb") as handle:
                    data = handle.read()
                if venv.encode() in data and (folder == venv) == (name == "pyvenv.cfg"):
                    with open(path, "wb") as handle:
                        handle.write(data.replace(venv.encode(), prefix.encode()))

    def system_files(self, python: str) -> None:
        o = self.o
        bin_dir = os.path.join(o.prefix, "bin")
        for command in COMMANDS:
            self.link(os.path.join(o.bindir, command), os.path.join(bin_dir, command))
        with open(os.path.join(REPO, "packaging", "systemd", "smtpmailer.service")) as handle:
            unit = handle.read()
        unit = unit.replace("/usr/bin/twistd", os.path.join(bin_dir, "twistd"))
        unit = unit.replace("/usr/bin/smtpmailer", os.path.join(bin_dir, "smtpmailer"))
        unit = unit.replace(
            "# Paths assume a system-wide install (pip install . as root, or a distribution "
            "package);\n# adjust /usr/bin/twistd and /usr/bin/smtpmailer for a virtualenv.\n",
            f"# Installed by make install: the daemon runs from {o.prefix}.\n",
        )
        self.put(os.path.join(o.unitdir, "smtpmailer.service"), unit)
        for source, final in (
            (
                "sysusers.d/smtpmailer.conf",
                os.path.join(o.sysconfdir, "sysusers.d/smtpmailer.conf"),
            ),
            (
                "tmpfiles.d/smtpmailer.conf",
                os.path.join(o.sysconfdir, "tmpfiles.d/smtpmailer.conf"),
            ),
            ("logrotate/smtpmailer", os.path.join(o.sysconfdir, "logrotate.d/smtpmailer")),
        ):
            with open(os.path.join(REPO, "packaging", source)) as handle:
                self.put(final, handle.read())
        config = os.path.join(o.sysconfdir, "smtpmailer", "smtpmailer.conf")
        if os.path.exists(self.staged(config)):
            self.say(f"{config} exists: kept as it is")
        else:
            with open(os.path.join(REPO, "conf", "smtpmailer.conf")) as handle:
                self.put(config, handle.read(), 0o640)
            self.config_digest = digest(self.staged(config))
        with tempfile.TemporaryDirectory(prefix="smtpmailer-man-") as pages:
            subprocess.run(
                [python, os.path.join(REPO, "tools", "manpages.py"), pages],
                check=True,
                capture_output=True,
                env={"PATH": os.environ["PATH"]},
            )
            for root, _, files in os.walk(pages):
                for name in files:
                    with open(os.path.join(root, name)) as handle:
                        relative = os.path.relpath(os.path.join(root, name), pages)
                        self.put(os.path.join(o.mandir, relative), handle.read())
        for shell, final in (
            ("bash", os.path.join(o.bashcompletiondir, "smtpmailer")),
            ("zsh", os.path.join(o.zshcompletiondir, "_smtpmailer")),
        ):
            script = subprocess.run(
                [python, "-m", "smtpmailer.cli", "completion", shell],
                check=True,
                capture_output=True,
                text=True,
                env={"PATH": os.environ["PATH"]},
            ).stdout
            self.put(final, script)
        if o.sendmail_link:
            self.sendmail_link(os.path.join(bin_dir, "smtpmailer-sendmail"))

    def sendmail_link(self, ours: str) -> None:
        """The names an MTA answers to: sendmail (and its old /usr/lib place), mailq and
        newaliases, which the command tells apart by the name it is called by. None is
        made while any of them is another MTA's."""
        names = (self.o.sendmail, self.o.lib_sendmail, self.o.mailq, self.o.newaliases)
        for final in names:
            target = self.staged(final)
            if os.path.lexists(target) and not (
                os.path.islink(target) and os.readlink(target) == ours
            ):
                raise SystemExit(
                    f"install: {final} exists (another MTA's?): not replaced. Remove that "
                    "MTA first, or install without SENDMAIL_LINK=1"
                )
        for final in names:
            self.link(final, ours)

    def write_manifest(self) -> None:
        path = os.path.join(self.staged(self.o.prefix), MANIFEST)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        previous = read_manifest(path)
        lines = sorted(set(self.installed) | set(previous))
        with open(path, "w") as handle:
            for final in lines:
                handle.write(final + "\n")
            config_digest = getattr(self, "config_digest", None) or previous.get("#config", "")
            if config_digest:
                handle.write(f"#config {config_digest}\n")

    def install(self) -> None:
        python = self.virtualenv()
        self.system_files(python)
        self.write_manifest()
        self.say("done. Then, as root:")
        print("  systemd-sysusers; systemd-tmpfiles --create")
        print("  edit /etc/smtpmailer/smtpmailer.conf; smtpmailer config --check; smtpmailer test")
        print("  systemctl daemon-reload; systemctl enable --now smtpmailer")


@contextlib.contextmanager
def building(repo: str) -> Iterator[None]:
    """One build from this source tree at a time: setuptools writes build/ and the
    egg-info inside it, and two builds at once (make test runs the install test, the
    plugin test and bench/submit's install side by side) fail on each other's files."""
    import fcntl

    folder = os.path.join(repo, "build")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def read_manifest(path: str) -> dict[str, str]:
    found: dict[str, str] = {}
    try:
        with open(path) as handle:
            for line in handle:
                line = line.rstrip("\n")
                if line.startswith("#config "):
                    found["#config"] = line.split(" ", 1)[1]
                elif line:
                    found[line] = ""
    except FileNotFoundError:
        pass
    return found


def uninstall(options: argparse.Namespace) -> None:
    installer = Installer(options)
    prefix = installer.staged(options.prefix)
    manifest = read_manifest(os.path.join(prefix, MANIFEST))
    if not manifest:
        raise SystemExit(f"uninstall: no {MANIFEST} under {options.prefix}: nothing installed")
    config = os.path.join(options.sysconfdir, "smtpmailer", "smtpmailer.conf")
    # Where install put a link; another MTA installed since may have put its own there.
    links = {options.sendmail, options.lib_sendmail, options.mailq, options.newaliases}
    links |= {os.path.join(options.bindir, command) for command in COMMANDS}
    for final in sorted(path for path in manifest if not path.startswith("#")):
        target = installer.staged(final)
        if final == config and os.path.exists(target):
            if digest(target) != manifest.get("#config"):
                print(f"uninstall: {final} was edited: kept")
                continue
        if final in links and os.path.lexists(target):
            if not os.path.islink(target) or not os.readlink(target).startswith(
                options.prefix.rstrip("/") + "/"
            ):
                print(f"uninstall: {final} is no longer ours (another MTA's?): kept")
                continue
        if os.path.lexists(target):
            os.unlink(target)
    shutil.rmtree(prefix)
    print(f"uninstall: removed {options.prefix} and {len(manifest)} files outside it")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="tools/install.py")
    parser.add_argument("action", choices=("install", "uninstall"))
    parser.add_argument("--prefix", default="/opt/smtpmailer")
    parser.add_argument("--destdir", default="")
    parser.add_argument("--python", default="python3", help="the interpreter for the venv")
    parser.add_argument("--bindir", default="/usr/local/bin")
    parser.add_argument("--sysconfdir", default="/etc")
    parser.add_argument("--unitdir", default="/etc/systemd/system")
    parser.add_argument("--mandir", default="/usr/local/share/man")
    parser.add_argument(
        "--bashcompletiondir", default="/usr/local/share/bash-completion/completions"
    )
    parser.add_argument("--zshcompletiondir", default="/usr/local/share/zsh/site-functions")
    parser.add_argument("--sendmail", default="/usr/sbin/sendmail")
    parser.add_argument("--lib-sendmail", default="/usr/lib/sendmail")
    parser.add_argument("--mailq", default="/usr/bin/mailq")
    parser.add_argument("--newaliases", default="/usr/bin/newaliases")
    parser.add_argument("--sendmail-link", action="store_true")
    options = parser.parse_args(argv)
    if not os.path.isabs(options.prefix):
        parser.error("--prefix must be an absolute path")
    if options.action == "install":
        Installer(options).install()
    else:
        uninstall(options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
