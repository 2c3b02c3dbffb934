"""The configuration: load the INI file, validate every key, and return a frozen Config."""

from __future__ import annotations

import difflib
import os
import stat
from collections.abc import Callable
from typing import Any

import attrs

from smtpmailer.ini import ConfigError, Entry, Section, parse_ini
from smtpmailer.paths import (
    DEFAULT_STATE_DIR,
    SENDMAIL_SOCKET,
    WAKEUP_SOCKET,
    config_folder,
    default_config_path,
    resolve_path,
)
from smtpmailer.units import (
    format_duration,
    format_size,
    parse_duration,
    parse_rate,
    parse_size,
)

SECURITY_MODES = ("starttls", "tls", "none")
AUTH_MODES = ("auto", "plain", "login", "cram-md5", "none")
TRANSPORTS = ("smtp", "maildir")
LOG_LEVELS = ("debug", "info", "warn", "error")
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
# Named in DESIGN.md but not built yet: refusing them is more honest than ignoring them.
NOT_YET = {
    "OAuth2": "AUTH XOAUTH2 is not implemented yet",
    "API": "HTTP API providers are not implemented yet",
}


@attrs.frozen
class DaemonConfig:
    state_dir: str
    pid_file: str
    log_file: str
    shutdown_timeout: float


@attrs.frozen
class QueueConfig:
    backend: str
    path: str
    poll_interval: float
    batch_size: int
    max_queue_size: int
    retry_delay: float
    backoff_factor: float
    max_retry_delay: float
    max_retries: int
    max_age: float
    max_message_size: int
    keep_sent: float


@attrs.frozen
class SMTPRelayConfig:
    """A smarthost reached over ESMTP (``transport = smtp``, the default)."""

    name: str
    host: str
    port: int
    security: str
    verify: bool
    ca_file: str | None
    auth: str
    username: str | None
    password: str | None = attrs.field(repr=False)
    helo: str
    max_connections: int
    max_messages_per_connection: int
    rate_limit: tuple[int, float] | None
    timeout: float
    priority: int
    kind: str = "smtp"

    @property
    def label(self) -> str:
        """How metrics and /health name this relay: its section name, or the host for a
        lone unnamed ``[Relay]``."""
        return self.host if self.name == "default" else self.name

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@attrs.frozen
class MaildirRelayConfig:
    """A local Maildir capture (``transport = maildir``): every message becomes a file."""

    name: str
    path: str
    max_connections: int
    max_messages_per_connection: int
    rate_limit: tuple[int, float] | None
    timeout: float
    priority: int
    kind: str = "maildir"

    @property
    def label(self) -> str:
        return f"maildir:{self.path}" if self.name == "default" else self.name

    @property
    def where(self) -> str:
        return f"maildir:{self.path}"


# A relay is one of these kinds, told apart by ``kind``; delivery picks the transport by it.
RelayConfig = SMTPRelayConfig | MaildirRelayConfig


@attrs.frozen
class LoggingConfig:
    level: str
    format: str
    stats_interval: float


@attrs.frozen
class StatusConfig:
    """The HTTP status service; ``listen`` empty turns it off."""

    listen: str
    token: str | None = attrs.field(repr=False)
    stuck_after: float


@attrs.frozen
class ManholeConfig:
    """The SSH console; on only when ``authorized_keys`` is set."""

    listen: str
    authorized_keys: str | None
    host_key: str


@attrs.frozen
class SubmissionConfig:
    """The local ESMTP listener; ``listen`` empty turns it off."""

    listen: str
    tls_cert: str | None
    tls_key: str | None
    users_file: str | None
    max_recipients: int
    max_connections_per_client: int
    workers: int = 0


@attrs.frozen
class Config:
    path: str
    daemon: DaemonConfig
    queue: QueueConfig
    relays: tuple[RelayConfig, ...]
    logging: LoggingConfig
    status: StatusConfig = StatusConfig("", None, 3600.0)
    manhole: ManholeConfig = ManholeConfig("", None, "")
    submission: SubmissionConfig = SubmissionConfig("", None, None, None, 100, 50)
    warnings: tuple[str, ...] = ()

    @property
    def wakeup_socket(self) -> str:
        """The datagram socket the CLI pokes so that the daemon picks up new mail at once."""
        return os.path.join(self.daemon.state_dir, WAKEUP_SOCKET)

    @property
    def sendmail_socket(self) -> str:
        """The stream socket where ``sendmail`` hands messages to a running daemon."""
        return os.path.join(self.daemon.state_dir, SENDMAIL_SOCKET)


# --- value parsers: each takes the raw string and raises ValueError with a clear reason ---


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{value} is out of range (must be {bound})")
        return value

    return parse


def _float(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a number") from None
        if value < low:
            raise ValueError(f"{value:g} is out of range (must be at least {low:g})")
        return value

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.lower()
        if value not in choices:
            raise ValueError(f"{text!r} is not one of: {', '.join(choices)}")
        return value

    return parse


def _bool(text: str) -> bool:
    value = text.lower()
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


def _positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def _text(text: str) -> str:
    return text


def _optional_rate(text: str) -> tuple[int, float] | None:
    return parse_rate(text) if text else None


# key -> (parser, default as written in the file); a default of None means "empty"
Schema = dict[str, tuple[Callable[[str], Any], str | None]]

DAEMON_KEYS: Schema = {
    "state_dir": (_text, DEFAULT_STATE_DIR),
    "pid_file": (_text, "/run/smtpmailer/smtpmailer.pid"),
    "log_file": (_text, "/var/log/smtpmailer/smtpmailer.log"),
    "shutdown_timeout": (parse_duration, "30s"),
}
QUEUE_KEYS: Schema = {
    "backend": (_choice("sqlite", "postgresql"), "sqlite"),
    "path": (_text, None),
    "dsn": (_text, None),
    "poll_interval": (_positive_duration, "1s"),
    "batch_size": (_int(1, 10000), "50"),
    "max_queue_size": (_int(1), "100000"),
    "retry_delay": (_positive_duration, "60s"),
    "backoff_factor": (_float(1.0), "2"),
    "max_retry_delay": (_positive_duration, "1h"),
    "max_retries": (_int(0), "10"),
    "max_age": (_positive_duration, "5d"),
    "max_message_size": (parse_size, "25MB"),
    "keep_sent": (parse_duration, "1d"),
}
RELAY_KEYS: Schema = {
    "transport": (_choice(*TRANSPORTS), "smtp"),
    "host": (_text, None),
    "port": (_int(1, 65535), None),
    "security": (_choice(*SECURITY_MODES), "starttls"),
    "verify": (_bool, "true"),
    "ca_file": (_text, None),
    "auth": (_choice(*AUTH_MODES, "xoauth2"), "auto"),
    "username": (_text, None),
    "password": (_text, None),
    "password_file": (_text, None),
    "password_env": (_text, None),
    "helo": (_text, None),
    "max_connections": (_int(1, 1000), "4"),
    "max_messages_per_connection": (_int(1), "100"),
    "rate_limit": (_optional_rate, None),
    "timeout": (_positive_duration, "60s"),
    "priority": (_int(0), "0"),
    "path": (_text, None),
}
LOGGING_KEYS: Schema = {
    "level": (_choice(*LOG_LEVELS), "info"),
    "format": (_choice("text", "json"), "text"),
    "stats_interval": (parse_duration, "5m"),
}


def _listen(text: str) -> str:
    from smtpmailer.listeners import parse_listen

    parse_listen(text)
    return text


STATUS_KEYS: Schema = {
    "listen": (_listen, "tcp:8025:interface=127.0.0.1"),
    "token_file": (_text, None),
    "stuck_after": (_positive_duration, "1h"),
}
MANHOLE_KEYS: Schema = {
    "listen": (_listen, "tcp:8022:interface=127.0.0.1"),
    "authorized_keys": (_text, None),
    "host_key": (_text, None),
}


def _workers(text: str) -> int:
    """Submission worker processes: ``auto`` is one where there is a second CPU to run
    it (and fork-and-pass-a-socket, so not on Windows), else none."""
    if text.strip().lower() == "auto":
        return 1 if os.name == "posix" and (os.cpu_count() or 1) >= 2 else 0
    return _int(0, 16)(text)


SUBMISSION_KEYS: Schema = {
    "listen": (_listen, None),
    "tls_cert": (_text, None),
    "tls_key": (_text, None),
    "users_file": (_text, None),
    "max_recipients": (_int(1, 100000), "100"),
    "max_connections_per_client": (_int(1, 100000), "50"),  # as Postfix's smtpd
    "workers": (_workers, "auto"),
}
SECTIONS: dict[str, Schema] = {
    "Daemon": DAEMON_KEYS,
    "Queue": QUEUE_KEYS,
    "Relay": RELAY_KEYS,
    "Logging": LOGGING_KEYS,
    "Status": STATUS_KEYS,
    "Manhole": MANHOLE_KEYS,
    "Submission": SUBMISSION_KEYS,
}


def _hint(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Reader:
    """Turns one section's entries into typed values, with FILE:LINE on every error."""

    def __init__(self, path: str, section: Section | None, schema: Schema) -> None:
        self.path = path
        self.section = section
        self.schema = schema
        self.entries: dict[str, Entry] = {e.key: e for e in section.entries} if section else {}
        for entry in self.entries.values():
            if entry.key not in schema:
                assert section is not None
                raise ConfigError(
                    path,
                    entry.line,
                    f"unknown key {entry.key!r} in [{section.title}]{_hint(entry.key, schema)}",
                )

    def line(self, key: str) -> int | None:
        entry = self.entries.get(key)
        if entry:
            return entry.line
        return self.section.line if self.section else None

    def raw(self, key: str) -> str | None:
        entry = self.entries.get(key)
        if entry is not None and entry.value != "":
            return entry.value
        return self.schema[key][1]

    def turned_off(self, key: str) -> bool:
        """``key =`` written with nothing after it: for listeners, that means off."""
        entry = self.entries.get(key)
        return entry is not None and entry.value == ""

    def get(self, key: str) -> Any:
        raw = self.raw(key)
        if raw is None:
            return None
        try:
            return self.schema[key][0](raw)
        except ValueError as error:
            raise ConfigError(self.path, self.line(key), f"{key}: {error}") from None

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.line(key), message)


def _world_readable(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def _read_secret(reader: _Reader, base: str, warnings: list[str]) -> str | None:
    given = [k for k in ("password", "password_file", "password_env") if reader.raw(k)]
    if len(given) > 1:
        raise reader.fail(given[1], f"give only one of {', '.join(given)}")
    if not given:
        return None
    key = given[0]
    value = reader.get(key)
    if key == "password":
        if _world_readable(reader.path):
            warnings.append(
                f"{reader.path}:{reader.line(key)}: the file holds a password and is "
                "world-readable; chmod 0600 it or use password_file"
            )
        return str(value)
    if key == "password_env":
        secret = os.environ.get(value)
        if secret is None:
            raise reader.fail(key, f"password_env: environment variable {value} is not set")
        return secret
    secret_path = resolve_path(base, value)
    try:
        with open(secret_path, encoding="utf-8") as handle:
            secret = handle.read().rstrip("\r\n")
    except OSError as error:
        raise reader.fail(
            key, f"password_file: cannot read {secret_path}: {error.strerror}"
        ) from None
    if _world_readable(secret_path):
        warnings.append(f"{secret_path}: password file is world-readable; chmod 0600 it")
    return secret


def _relay(path: str, base: str, section: Section, warnings: list[str]) -> RelayConfig:
    reader = _Reader(path, section, RELAY_KEYS)
    transport = reader.get("transport")
    security = reader.get("security")
    auth = reader.get("auth")
    if auth == "xoauth2":
        raise reader.fail("auth", "auth: xoauth2 is not implemented yet (use plain or login)")
    host = reader.get("host")
    maildir = reader.get("path")
    if transport == "smtp":
        if not host:
            raise reader.fail("host", f"[{section.title}] needs a host")
        if maildir:
            raise reader.fail("path", "path is only for transport = maildir")
    else:
        if not maildir:
            raise reader.fail("path", f"[{section.title}] with transport = maildir needs a path")
        maildir = resolve_path(base, maildir)
    username = reader.get("username")
    password = _read_secret(reader, base, warnings)
    if auth in ("plain", "login", "cram-md5") and not (username and password is not None):
        raise reader.fail("auth", f"auth = {auth} needs username and a password")
    if password is not None and not username:
        raise reader.fail("username", "a password is set but username is empty")
    if auth == "none":
        username = password = None
    ca_file = reader.get("ca_file")
    if ca_file:
        ca_file = resolve_path(base, ca_file)
        if not os.path.isfile(ca_file):
            raise reader.fail("ca_file", f"ca_file: no such file {ca_file}")
    if transport == "smtp" and security == "none" and password is not None:
        warnings.append(
            f"{path}:{section.line}: [{section.title}] sends its password without TLS "
            "(security = none)"
        )
    if transport == "smtp" and security != "none" and not reader.get("verify"):
        warnings.append(
            f"{path}:{reader.line('verify')}: [{section.title}] does not verify the relay's "
            "certificate (verify = false)"
        )
    pool: dict[str, Any] = {
        "name": section.label or "default",
        "max_connections": reader.get("max_connections"),
        "max_messages_per_connection": reader.get("max_messages_per_connection"),
        "rate_limit": reader.get("rate_limit"),
        "timeout": reader.get("timeout"),
        "priority": reader.get("priority"),
    }
    if transport == "maildir":
        return MaildirRelayConfig(path=maildir, **pool)
    return SMTPRelayConfig(
        host=host or "",
        port=reader.get("port") or DEFAULT_PORTS[security],
        security=security,
        verify=reader.get("verify"),
        ca_file=ca_file,
        auth=auth,
        username=username,
        password=password,
        helo=reader.get("helo") or "",
        **pool,
    )


def parse_config(text: str, path: str) -> Config:
    """Validate the whole file; raise ConfigError at the first problem."""
    base = config_folder(path)
    sections = parse_ini(text, path)
    by_name: dict[str, Section] = {}
    relays: list[Section] = []
    for section in sections:
        if section.name in NOT_YET:
            raise ConfigError(path, section.line, f"[{section.title}]: {NOT_YET[section.name]}")
        if section.name not in SECTIONS:
            raise ConfigError(
                path,
                section.line,
                f"unknown section [{section.title}]{_hint(section.name, SECTIONS)}",
            )
        if section.name == "Relay":
            relays.append(section)
        elif section.label:
            raise ConfigError(path, section.line, f"[{section.name}] takes no ':NAME' label")
        else:
            by_name[section.name] = section
    if not relays:
        raise ConfigError(path, None, "no [Relay] section: there is nowhere to deliver mail")
    if len(relays) > 1 and any(s.label is None for s in relays):
        unnamed = next(s for s in relays if s.label is None)
        raise ConfigError(path, unnamed.line, "with several relays, name each: [Relay:NAME]")

    warnings: list[str] = []
    daemon = _Reader(path, by_name.get("Daemon"), DAEMON_KEYS)
    state_dir = resolve_path(base, daemon.get("state_dir"))
    queue = _Reader(path, by_name.get("Queue"), QUEUE_KEYS)
    if queue.get("backend") == "postgresql":
        raise queue.fail("backend", "backend: postgresql is not implemented yet (use sqlite)")
    if queue.get("dsn"):
        raise queue.fail("dsn", "dsn is only for backend = postgresql")
    queue_path = queue.get("path")
    logging = _Reader(path, by_name.get("Logging"), LOGGING_KEYS)
    queue_config = QueueConfig(
        backend="sqlite",
        path=resolve_path(base, queue_path)
        if queue_path
        else os.path.join(state_dir, "queue.sqlite3"),
        poll_interval=queue.get("poll_interval"),
        batch_size=queue.get("batch_size"),
        max_queue_size=queue.get("max_queue_size"),
        retry_delay=queue.get("retry_delay"),
        backoff_factor=queue.get("backoff_factor"),
        max_retry_delay=queue.get("max_retry_delay"),
        max_retries=queue.get("max_retries"),
        max_age=queue.get("max_age"),
        max_message_size=queue.get("max_message_size"),
        keep_sent=queue.get("keep_sent"),
    )
    if queue_config.max_retry_delay < queue_config.retry_delay:
        raise queue.fail("max_retry_delay", "max_retry_delay is shorter than retry_delay")
    relay_configs = sorted(
        (_relay(path, base, section, warnings) for section in relays),
        key=lambda relay: relay.priority,
    )
    status = _status(path, base, by_name.get("Status"), warnings)
    manhole_reader = _Reader(path, by_name.get("Manhole"), MANHOLE_KEYS)
    keys_file = manhole_reader.get("authorized_keys")
    host_key = manhole_reader.get("host_key")
    manhole = ManholeConfig(
        listen="" if manhole_reader.turned_off("listen") else manhole_reader.get("listen"),
        authorized_keys=resolve_path(base, keys_file) if keys_file else None,
        host_key=resolve_path(base, host_key)
        if host_key
        else os.path.join(state_dir, "ssh_host_ed25519_key"),
    )
    if manhole.authorized_keys and not os.path.isfile(manhole.authorized_keys):
        raise manhole_reader.fail(
            "authorized_keys", f"authorized_keys: no such file {manhole.authorized_keys}"
        )
    return Config(
        path=path,
        daemon=DaemonConfig(
            state_dir=state_dir,
            pid_file=resolve_path(base, daemon.get("pid_file")),
            log_file=resolve_path(base, daemon.get("log_file")),
            shutdown_timeout=daemon.get("shutdown_timeout"),
        ),
        queue=queue_config,
        relays=tuple(relay_configs),
        logging=LoggingConfig(
            level=logging.get("level"),
            format=logging.get("format"),
            stats_interval=logging.get("stats_interval"),
        ),
        status=status,
        manhole=manhole,
        submission=_submission(path, base, by_name.get("Submission")),
        warnings=tuple(warnings),
    )


def _submission(path: str, base: str, section: Section | None) -> SubmissionConfig:
    from smtpmailer.listeners import parse_listen

    reader = _Reader(path, section, SUBMISSION_KEYS)

    def existing(key: str) -> str | None:
        value = reader.get(key)
        if not value:
            return None
        resolved = resolve_path(base, value)
        if not os.path.isfile(resolved):
            raise reader.fail(key, f"{key}: no such file {resolved}")
        return resolved

    listen = reader.get("listen") or ""
    cert, key, users = existing("tls_cert"), existing("tls_key"), existing("users_file")
    if users:
        with open(users, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                name, _, stored = line.partition(":")
                if not name or not stored.startswith(("$2a$", "$2b$", "$2y$", "$argon2")):
                    raise ConfigError(
                        users,
                        number,
                        "expected 'user:HASH' with a bcrypt or argon2 hash (plain-text "
                        "passwords are refused; make one with: smtpmailer hash-password)",
                    )
    if listen and not parse_listen(listen).loopback and not users:
        raise reader.fail(
            "listen",
            f"listen = {listen} is reachable from other hosts: set users_file (AUTH) "
            "or listen on 127.0.0.1",
        )
    if key and not cert:
        raise reader.fail("tls_key", "tls_key without tls_cert")
    return SubmissionConfig(
        listen=listen,
        tls_cert=cert,
        tls_key=key,
        users_file=users,
        max_recipients=reader.get("max_recipients"),
        max_connections_per_client=reader.get("max_connections_per_client"),
        workers=reader.get("workers"),
    )


def _status(path: str, base: str, section: Section | None, warnings: list[str]) -> StatusConfig:
    from smtpmailer.listeners import parse_listen

    reader = _Reader(path, section, STATUS_KEYS)
    listen = "" if reader.turned_off("listen") else reader.get("listen")
    token = None
    token_file = reader.get("token_file")
    if token_file:
        token_path = resolve_path(base, token_file)
        try:
            with open(token_path, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as error:
            raise reader.fail(
                "token_file", f"token_file: cannot read {token_path}: {error.strerror}"
            ) from None
        if len(token) < 16:
            raise reader.fail("token_file", "token_file: the token must be 16 characters or more")
        if _world_readable(token_path):
            warnings.append(f"{token_path}: token file is world-readable; chmod 0600 it")
    if listen and not parse_listen(listen).loopback and token is None:
        raise reader.fail(
            "listen",
            f"listen = {listen} is reachable from other hosts: set token_file "
            "(a bearer token for /v1/* and /) or listen on 127.0.0.1",
        )
    return StatusConfig(listen=listen, token=token, stuck_after=reader.get("stuck_after"))


def load_config(path: str | None = None) -> Config:
    """Read and validate the file at ``path`` (default: $SMTPMAILER_CONFIG, then /etc)."""
    path = path or default_config_path()
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(path, None, "no such config file") from None
    except OSError as error:
        raise ConfigError(path, None, f"cannot read config file: {error.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "config file is not UTF-8 text") from None
    return parse_config(text, path)


def relay_title(config: Config, relay: RelayConfig) -> str:
    """``Relay`` for a lone unnamed relay, else ``Relay:NAME``, as the file spells it."""
    return "Relay" if len(config.relays) == 1 and relay.name == "default" else f"Relay:{relay.name}"


def render_config(config: Config) -> str:
    """The effective configuration as an INI file, with secrets redacted."""
    out = [f"; effective configuration of {config.path}"]

    def block(title: str, values: list[tuple[str, Any]]) -> None:
        out.append("")
        out.append(f"[{title}]")
        for key, value in values:
            out.append(f"{key} = {value}" if value not in (None, "") else f"{key} =")

    d, q, lg = config.daemon, config.queue, config.logging
    block(
        "Daemon",
        [
            ("state_dir", d.state_dir),
            ("pid_file", d.pid_file),
            ("log_file", d.log_file),
            ("shutdown_timeout", format_duration(d.shutdown_timeout)),
        ],
    )
    block(
        "Queue",
        [
            ("backend", q.backend),
            ("path", q.path),
            ("poll_interval", format_duration(q.poll_interval)),
            ("batch_size", q.batch_size),
            ("max_queue_size", q.max_queue_size),
            ("retry_delay", format_duration(q.retry_delay)),
            ("backoff_factor", f"{q.backoff_factor:g}"),
            ("max_retry_delay", format_duration(q.max_retry_delay)),
            ("max_retries", q.max_retries),
            ("max_age", format_duration(q.max_age)),
            ("max_message_size", format_size(q.max_message_size)),
            ("keep_sent", format_duration(q.keep_sent)),
        ],
    )
    for relay in config.relays:
        title = relay_title(config, relay)
        rate = (
            f"{relay.rate_limit[0]}/{format_duration(relay.rate_limit[1])[-1]}"
            if relay.rate_limit
            else None
        )
        values: list[tuple[str, Any]] = [("transport", relay.kind)]
        if isinstance(relay, MaildirRelayConfig):
            values.append(("path", relay.path))
        else:
            values += [
                ("host", relay.host),
                ("port", relay.port),
                ("security", relay.security),
                ("verify", str(relay.verify).lower()),
                ("ca_file", relay.ca_file),
                ("auth", relay.auth),
                ("username", relay.username),
                ("password", "<redacted>" if relay.password is not None else None),
                ("helo", relay.helo),
            ]
        values += [
            ("max_connections", relay.max_connections),
            ("max_messages_per_connection", relay.max_messages_per_connection),
            ("rate_limit", rate),
            ("timeout", format_duration(relay.timeout)),
            ("priority", relay.priority),
        ]
        block(title, values)
    block(
        "Logging",
        [
            ("level", lg.level),
            ("format", lg.format),
            ("stats_interval", format_duration(lg.stats_interval)),
        ],
    )
    block(
        "Status",
        [
            ("listen", config.status.listen),
            ("token_file", "<redacted>" if config.status.token else None),
            ("stuck_after", format_duration(config.status.stuck_after)),
        ],
    )
    block(
        "Manhole",
        [
            ("listen", config.manhole.listen),
            ("authorized_keys", config.manhole.authorized_keys),
            ("host_key", config.manhole.host_key),
        ],
    )
    sub = config.submission
    block(
        "Submission",
        [
            ("listen", sub.listen),
            ("tls_cert", sub.tls_cert),
            ("tls_key", sub.tls_key),
            ("users_file", sub.users_file),
            ("max_recipients", sub.max_recipients),
            ("max_connections_per_client", sub.max_connections_per_client),
            ("workers", sub.workers),
        ],
    )
    return "\n".join(out) + "\n"
