"""ReloadService: SIGHUP re-reads the config, validates it fully, then applies it child by child.

Buildbot-style, made safer: nothing is touched until the whole file is valid; keys that need
a restart are refused by name and the rest is applied; the running Config is replaced only
after every child took the new one; one reload runs at a time (a SIGHUP during a reload
runs once more afterwards); every reload ends in one outcome line, and in a status file
that ``smtpmailer reload`` reads back.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed

from smtpmailer.config import Config, flatten, keep_restart_only, load_config
from smtpmailer.daemon.systemd import Notifier
from smtpmailer.ini import ConfigError
from smtpmailer.logs import log

STATUS_FILE = "reload.json"


def changed_keys(old: Config, new: Config) -> list[str]:
    before, after = flatten(old), flatten(new)
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


async def _call(function: Callable[[Config], Any], config: Config) -> None:
    """Run a reconfigure that may be plain, return a Deferred, or be a coroutine."""
    result = function(config)
    if hasattr(result, "__await__"):
        await result


class ReloadService(Service):
    """Installs the SIGHUP handler (in startService: the main thread) and runs reloads."""

    name = "reload"

    def __init__(
        self,
        mailer: Any,
        schedule: Callable[[Callable[[], Any]], Any],
        load: Callable[[str], Config] = load_config,
        install_handler: Callable[[int, Any], Any] = signal.signal,
        notifier: Notifier | None = None,
    ) -> None:
        self.mailer = mailer
        self._schedule = schedule
        self._load = load
        self._install = install_handler
        self._notifier = notifier or Notifier({})
        self._previous: Any = None
        self._running: Deferred[None] | None = None
        self._again = False
        self.reloads = 0
        self.failures = 0
        self.generation = self._read_status().get("generation", 0)

    # --- signal ---

    def startService(self) -> None:
        super().startService()
        self._previous = self._install(signal.SIGHUP, self._on_signal)

    def stopService(self) -> None:
        super().stopService()
        self._install(signal.SIGHUP, self._previous or signal.SIG_DFL)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """Runs inside a signal handler: only hand the work to the reactor."""
        self._schedule(self.request)

    # --- reload ---

    def request(self) -> Deferred[None]:
        """Reload now, or once more after the reload in progress."""
        if self._running is not None:
            self._again = True
            return self._running
        self._running = Deferred.fromCoroutine(self._reload())
        self._running.addErrback(lambda failure: log.failure("reload crashed", failure=failure))

        def done(_: object) -> Deferred[None]:
            self._running = None
            if self._again:
                self._again = False
                return self.request()
            return succeed(None)

        return self._running.addBoth(done)

    async def _reload(self) -> None:
        self._notifier.reloading()
        try:
            ok, message = await self._apply()
        finally:
            self._notifier.notify("READY=1", "STATUS=delivering")
        self.reloads += 1
        metrics = getattr(self.mailer, "metrics", None)
        if metrics is not None:
            metrics.reloads.inc()
        if not ok:
            self.failures += 1
            if metrics is not None:
                metrics.reload_failures.inc()
            log.error("{line}", line=message)
        else:
            log.info("{line}", line=message)
        self._write_status(ok, message)

    async def _apply(self) -> tuple[bool, str]:
        old: Config = self.mailer.config
        try:
            loaded = self._load(old.path)
        except ConfigError as error:
            return False, f"reload failed: {error}; the running configuration is unchanged"
        new, refused = keep_restart_only(old, loaded)
        for key in refused:
            log.warn(
                "reload: {key} changed; it needs a restart and keeps its running value", key=key
            )
        changes = changed_keys(old, new)
        if not changes:
            suffix = f" (refused, restart needed: {', '.join(refused)})" if refused else ""
            return True, f"reload: no changes{suffix}"
        try:
            await _call(self.mailer.reconfigure, new)
        except Exception as error:
            log.failure("reload: applying the new configuration failed")
            try:
                await _call(self.mailer.reconfigure, old)
            except Exception:
                log.failure("reload: could not put the previous configuration back")
            return (
                False,
                f"reload failed while applying: {error}; the previous configuration is back",
            )
        suffix = f"; refused, restart needed: {', '.join(refused)}" if refused else ""
        return True, f"reload: applied ({', '.join(changes)}){suffix}"

    # --- status for `smtpmailer reload` ---

    def _status_path(self) -> str:
        return os.path.join(self.mailer.config.daemon.state_dir, STATUS_FILE)

    def _read_status(self) -> dict[str, Any]:
        try:
            with open(self._status_path()) as handle:
                return dict(json.load(handle))
        except (OSError, ValueError):
            return {}

    def _write_status(self, ok: bool, message: str) -> None:
        self.generation += 1
        status = {"generation": self.generation, "ok": ok, "message": message, "pid": os.getpid()}
        path = self._status_path()
        try:
            handle = tempfile.NamedTemporaryFile(
                "w", dir=os.path.dirname(path), prefix=".reload-", delete=False
            )
            with handle:
                json.dump(status, handle)
            os.replace(handle.name, path)
        except OSError as error:
            log.warn("could not write {path}: {error}", path=path, error=error)
