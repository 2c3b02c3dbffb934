"""The configuration as frozen attrs objects, one class per INI section, each key declared
on its field (see declare.py). Services receive these; none reads the file itself."""

from __future__ import annotations

import fnmatch
import os
from typing import ClassVar

import attrs

from smtpmailer.config.declare import key, schema
from smtpmailer.config.values import (
    BOOL,
    DURATION,
    LISTEN,
    PATH,
    POSITIVE_DURATION,
    RATE,
    SIZE,
    TEXT,
    WORDS,
    WORKERS,
    Value,
    choice,
    number,
    whole,
)
from smtpmailer.oauth2.providers import FLOWS, PROVIDERS
from smtpmailer.paths import DEFAULT_STATE_DIR, SENDMAIL_SOCKET, WAKEUP_SOCKET

SECURITY_MODES = ("starttls", "tls", "none")
AUTH_MODES = ("auto", "plain", "login", "cram-md5", "xoauth2", "oauthbearer", "none")
OAUTH2_MECHANISMS = ("xoauth2", "oauthbearer")
TRANSPORTS = ("smtp", "maildir")
LOG_LEVELS = ("debug", "info", "warn", "error")


@attrs.frozen
class DaemonConfig:
    state_dir: str = key(PATH, DEFAULT_STATE_DIR, "the queue, sockets and keys", restart=True)
    pid_file: str = key(
        PATH, "/run/smtpmailer/smtpmailer.pid", "for start/stop/status", restart=True
    )
    log_file: str = key(
        PATH, "/var/log/smtpmailer/smtpmailer.log", "for `smtpmailer start`", restart=True
    )
    shutdown_timeout: float = key(
        DURATION, "30s", "how long SIGTERM lets deliveries under way finish"
    )
    http_proxy: str | None = key(
        TEXT,
        None,
        "HTTP for API relays, OAuth2 and webhooks goes through this proxy, tunnelled with"
        " CONNECT: http://[user:password@]host:port, or http_proxy_file (mode 0600) or"
        " http_proxy_env; empty: none",
        restart=True,
        secret=True,
        names=("http_proxy", "http_proxy_file", "http_proxy_env"),
    )
    no_proxy: tuple[str, ...] = key(
        WORDS,
        "localhost, 127.0.0.1, ::1",
        "hosts, .domains and networks (10.0.0.0/8) reached without the proxy",
        restart=True,
    )


@attrs.frozen
class QueueConfig:
    backend: str = key(
        choice("sqlite", "postgresql"), "sqlite", "where the queue is kept", restart=True
    )
    path: str = key(PATH, None, "the SQLite file (default: state_dir/queue.sqlite3)", restart=True)
    dsn: str | None = key(
        TEXT,
        None,
        "postgresql: the database: dsn, dsn_file (mode 0600, for one with a password) or dsn_env",
        secret=True,
        restart=True,
        names=("dsn", "dsn_file", "dsn_env"),
    )
    node: str | None = key(
        TEXT, None, "postgresql: this daemon's name in leases (default: host name)", restart=True
    )
    lease_timeout: float = key(
        POSITIVE_DURATION,
        "60s",
        "postgresql: a node silent this long loses its leases to the others",
        restart=True,
    )
    poll_interval: float = key(POSITIVE_DURATION, "1s", "how often due mail is looked for")
    batch_size: int = key(whole(1, 10000), "50", "messages leased in one poll")
    max_queue_size: int = key(whole(1), "100000", "beyond it new mail is refused")
    retry_delay: float = key(POSITIVE_DURATION, "60s", "wait before the first retry")
    backoff_factor: float = key(number(1.0), "2", "each retry waits this much longer")
    max_retry_delay: float = key(POSITIVE_DURATION, "1h", "the longest wait between tries")
    max_retries: int = key(whole(0), "10", "retries after the first attempt")
    max_age: float = key(POSITIVE_DURATION, "5d", "a message older than this fails")
    max_message_size: int = key(SIZE, "25MB", "larger messages are refused")
    keep_sent: float = key(DURATION, "1d", "how long sent messages stay listed")

    @property
    def where(self) -> str:
        """The queue as the ready line and commands name it."""
        if self.backend == "postgresql":
            return f"postgresql (node {self.node})"
        return self.path


@attrs.frozen(kw_only=True)
class RelayBase:
    """What every kind of relay has: its name and its own pool's limits."""

    kind: ClassVar[str]
    name: str
    max_connections: int = key(whole(1, 1000), "4", "connections (or requests) at once")
    max_messages_per_connection: int = key(whole(1), "100", "then a fresh connection")
    rate_limit: tuple[int, float] | None = key(RATE, None, "e.g. 100/m; empty: no limit")
    timeout: float = key(POSITIVE_DURATION, "60s", "for each step of a session")
    priority: int = key(whole(0), "0", "relays are tried lowest first")


@attrs.frozen(kw_only=True)
class SMTPRelayConfig(RelayBase):
    """A smarthost reached over ESMTP (``transport = smtp``, the default)."""

    kind: ClassVar[str] = "smtp"
    host: str = key(TEXT, None, "the relay's host name")
    port: int = key(whole(1, 65535), None, "default: 587, 465 with tls, 25 with none")
    security: str = key(choice(*SECURITY_MODES), "starttls", "starttls | tls | none")
    verify: bool = key(BOOL, "true", "check the certificate and host name")
    ca_file: str | None = key(PATH, None, "a private CA's certificates (PEM)")
    cert_file: str | None = key(
        PATH,
        None,
        "a client certificate (PEM) shown in TLS, for relays that know a sender by its"
        " certificate (a Microsoft 365 connector, a relay asking for mutual TLS)",
    )
    key_file: str | None = key(
        PATH, None, "the client certificate's private key (PEM, mode 0600); default: in cert_file"
    )
    auth: str = key(choice(*AUTH_MODES), "auto", "the AUTH mechanism, or auto")
    oauth2: str | None = key(TEXT, None, "the [OAuth2:NAME] section for xoauth2 / oauthbearer")
    username: str | None = key(TEXT, None, "for AUTH (and the XOAUTH2/OAUTHBEARER user)")
    password: str | None = key(
        TEXT,
        None,
        "the AUTH secret: password, password_file (mode 0600) or password_env",
        secret=True,
        names=("password", "password_file", "password_env"),
    )
    helo: str = key(TEXT, None, "the name given in EHLO (default: this host's)")
    source_address: str | None = key(
        TEXT,
        None,
        "the local IP address to connect from, on a host with several (for a relay that"
        " knows senders by address); default: the system's choice",
    )
    proxy: str | None = key(
        TEXT,
        None,
        "reach the relay through this SOCKS5 proxy, which also resolves its name (Tor, an"
        " `ssh -D` forward): socks5://[user:password@]host:port, or proxy_file (mode 0600)"
        " or proxy_env; empty: connect directly",
        secret=True,
        names=("proxy", "proxy_file", "proxy_env"),
    )
    defer_on: tuple[str, ...] = key(
        WORDS, "5.4.5", "5xx enhanced codes that mean a quota that resets: defer, not fail"
    )

    @property
    def label(self) -> str:
        """How metrics and /health name this relay: its section name, or the host for a
        lone unnamed ``[Relay]``."""
        return self.host if self.name == "default" else self.name

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"


@attrs.frozen(kw_only=True)
class MaildirRelayConfig(RelayBase):
    """A local Maildir capture (``transport = maildir``): every message becomes a file."""

    kind: ClassVar[str] = "maildir"
    path: str = key(PATH, None, "the Maildir folder (transport = maildir)")

    @property
    def label(self) -> str:
        return f"maildir:{self.path}" if self.name == "default" else self.name

    @property
    def where(self) -> str:
        return f"maildir:{self.path}"


API_PROVIDERS = (
    "sendgrid",
    "mailgun",
    "postmark",
    "ses",
    "sparkpost",
    "mailjet",
    "brevo",
    "resend",
)


@attrs.frozen(kw_only=True)
class APIRelayConfig(RelayBase):
    """``[API:NAME]``: an HTTP mail API as a relay, with a priority, failover and routes like
    ``[Relay:NAME]``; ``max_connections`` is the requests in flight."""

    kind: ClassVar[str] = "api"
    provider: str = key(choice(*API_PROVIDERS), None, " | ".join(API_PROVIDERS))
    api_key: str | None = key(
        TEXT,
        None,
        "the API key: api_key, api_key_file (mode 0600) or api_key_env",
        secret=True,
        names=("api_key", "api_key_file", "api_key_env"),
    )
    endpoint: str = key(TEXT, None, "base URL: default from provider (EU regions, a test server)")
    domain: str | None = key(TEXT, None, "mailgun: the sending domain")
    region: str | None = key(TEXT, None, "ses: e.g. eu-west-1; mailgun: us or eu")
    access_key_id: str | None = key(TEXT, None, "ses: else the standard AWS credential chain")
    secret_access_key: str | None = key(
        TEXT,
        None,
        "ses: secret_access_key_file (mode 0600) or secret_access_key_env",
        secret=True,
        names=("secret_access_key", "secret_access_key_file", "secret_access_key_env"),
    )

    @property
    def label(self) -> str:
        return f"api:{self.name}"

    @property
    def where(self) -> str:
        return f"api:{self.name} ({self.endpoint})"


# A relay is one of these kinds, told apart by ``kind``; delivery picks the transport by it.
RelayConfig = SMTPRelayConfig | MaildirRelayConfig | APIRelayConfig
RELAY_KINDS: dict[str, type[RelayBase]] = {
    SMTPRelayConfig.kind: SMTPRelayConfig,
    MaildirRelayConfig.kind: MaildirRelayConfig,
    APIRelayConfig.kind: APIRelayConfig,
}
# The one Relay key that is no field: it picks the class.
TRANSPORT = ("transport", choice(*TRANSPORTS), "smtp")


@attrs.frozen(kw_only=True)
class RouteConfig:
    """``[Route:NAME]``: mail whose envelope sender matches one of ``sender`` (globs,
    case-insensitive) goes to the relays ``via``, in that order. The first route that
    matches wins; mail no route matches uses every relay in priority order."""

    name: str
    sender: tuple[str, ...] = key(
        WORDS, None, "globs on the envelope sender, e.g. *@billing.example.com"
    )
    via: tuple[str, ...] = key(WORDS, None, "relay names, tried in this order")

    def matches(self, sender: str) -> bool:
        address = sender.lower()
        return any(fnmatch.fnmatchcase(address, glob.lower()) for glob in self.sender)


@attrs.frozen
class RewriteConfig:
    """``[Rewrite]``: the senders cron and daemons use (``root@host``) made real addresses
    at intake, before the commit, and recipients such as ``root`` sent to a real mailbox.
    ``rules`` and ``recipient_rules`` are the map files' lines, read with the config (a
    reload reads the maps again)."""

    map_file: str | None = key(PATH, None, "lines 'PATTERN ADDRESS': root, root@*, *@localhost")
    header_from: bool = key(BOOL, "true", "rewrite a matching From: header too")
    recipient_map_file: str | None = key(
        PATH,
        None,
        "the same lines for envelope recipients, e.g. 'root admin@example.com': cron's mail"
        " to root goes to a mailbox someone reads",
    )
    rules: tuple[tuple[str, str], ...] = ()
    recipient_rules: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class ServiceAccount:
    """A Google service account's JSON key, as read from ``service_account_file``."""

    client_email: str
    private_key: str = attrs.field(repr=False)
    private_key_id: str | None = None


@attrs.frozen(kw_only=True)
class OAuth2Config:
    """``[OAuth2:NAME]``: where a relay's access tokens come from. The endpoints and scope
    are filled in from the provider's defaults when the file leaves them empty."""

    name: str
    provider: str = key(choice(*PROVIDERS), "google", "google | microsoft | generic")
    flow: str = key(
        choice(*FLOWS), "refresh_token", "refresh_token | client_credentials | service_account"
    )
    client_id: str | None = key(TEXT, None, "the OAuth client (application) id")
    client_secret: str | None = key(
        TEXT,
        None,
        "the client secret: client_secret, client_secret_file (mode 0600) or client_secret_env",
        secret=True,
        names=("client_secret", "client_secret_file", "client_secret_env"),
    )
    refresh_token_file: str | None = key(
        PATH, None, "written by oauth2 authorize; rewritten atomically (0600) when rotated"
    )
    tenant: str | None = key(TEXT, None, "microsoft: tenant id, organizations or consumers")
    token_url: str | None = key(TEXT, None, "default from provider")
    scope: str | None = key(TEXT, None, "default from provider and flow")
    authorize_url: str | None = key(TEXT, None, "for oauth2 authorize; default from provider")
    device_url: str | None = key(TEXT, None, "for oauth2 authorize --device; default from provider")
    service_account_file: str | None = key(
        PATH, None, "google service_account: the JSON key (mode 0600)"
    )
    subject: str | None = key(TEXT, None, "service_account: the mailbox to send as")
    refresh_before: float = key(DURATION, "10m", "renew this long before expiry")
    timeout: float = key(POSITIVE_DURATION, "30s", "for each request to the token endpoint")
    service_account: ServiceAccount | None = None


@attrs.frozen
class BounceConfig:
    """``[Bounce]``: delivery status notifications (RFC 3464) to the sender of mail that
    failed. ``sender`` is the key ``from`` (a Python keyword)."""

    enabled: bool = key(BOOL, "true", "a DSN to the envelope sender for failed recipients")
    delay_warning: float = key(DURATION, "4h", "one 'delayed' DSN after this long; 0: off")
    sender: str = key(
        TEXT, "MAILER-DAEMON", "From: of a DSN (its envelope sender is always <>)", names=("from",)
    )
    max_per_hour: int = key(whole(1, 1000000), "100", "DSNs to one sender address, at most")


@attrs.frozen(kw_only=True)
class WebhookConfig:
    """``[Webhook:NAME]``: the application hears what happened to its mail. Each event is
    POSTed as JSON, signed (``X-Smtpmailer-Signature``: hex HMAC-SHA256 of the body with the
    secret), in the order it happened, until the URL answers 2xx."""

    name: str
    url: str = key(TEXT, None, "where events are POSTed: https, or http to 127.0.0.1")
    events: tuple[str, ...] = key(
        WORDS, "sent, deferred, failed, bounced, delayed", "which events to send"
    )
    secret: str | None = key(
        TEXT,
        None,
        "HMAC-SHA256 key: secret_file (first line, mode 0600) or secret_env",
        secret=True,
        names=("secret", "secret_file", "secret_env"),
    )
    timeout: float = key(POSITIVE_DURATION, "10s", "one request, answer included")
    max_backlog: int = key(
        whole(1, 10**9), "100000", "events not yet told; beyond this /health fails"
    )


@attrs.frozen
class TemplatesConfig:
    """``[Templates]``: local templates, a folder each (subject.txt, text.txt and optionally
    html.html), rendered at intake with the submission's variables."""

    path: str | None = key(PATH, None, "the folder holding one folder per template; empty: off")
    max_batch: int = key(whole(1, 100000), "10000", "messages in one batch submission, at most")


@attrs.frozen
class LoggingConfig:
    level: str = key(choice(*LOG_LEVELS), "info", "debug | info | warn | error")
    format: str = key(choice("text", "json"), "text", "text | json", restart=True)
    stats_interval: float = key(DURATION, "5m", "a statistics line this often; 0: off")


@attrs.frozen
class StatusConfig:
    """The HTTP status service; ``listen`` empty turns it off."""

    listen: str = key(LISTEN, "tcp:8025:interface=127.0.0.1", "endpoint; empty: off")
    token: str | None = key(
        PATH,
        None,
        "bearer token for /v1/* and / (required off loopback)",
        secret=True,
        names=("token_file",),
    )
    stuck_after: float = key(POSITIVE_DURATION, "1h", "/health warns of older mail")


@attrs.frozen
class ManholeConfig:
    """The SSH console; on only when ``authorized_keys`` is set."""

    listen: str = key(LISTEN, "tcp:8022:interface=127.0.0.1", "endpoint; empty: off")
    authorized_keys: str | None = key(PATH, None, "the keys that may log in; empty: off")
    host_key: str = key(PATH, None, "default: state_dir/ssh_host_ed25519_key")


@attrs.frozen
class SubmissionConfig:
    """The local ESMTP listener; ``listen`` empty turns it off."""

    listen: str = key(LISTEN, None, "endpoint, e.g. tcp:2525:interface=127.0.0.1; empty: off")
    tls_cert: str | None = key(PATH, None, "STARTTLS certificate (PEM)")
    tls_key: str | None = key(PATH, None, "its key, when not in tls_cert")
    users_file: str | None = key(PATH, None, "AUTH users, name:HASH (bcrypt/argon2)")
    max_recipients: int = key(whole(1, 100000), "100", "per message, by any way in")
    max_connections_per_client: int = key(whole(1, 100000), "50", "per client address")
    workers: int = key(WORKERS, "auto", "SMTP worker processes; auto: 1 with 2+ CPUs")


# Section name -> the classes its keys are declared on (a Relay is one of its kinds).
SECTIONS: dict[str, tuple[type, ...]] = {
    "Daemon": (DaemonConfig,),
    "Queue": (QueueConfig,),
    "Relay": (SMTPRelayConfig, MaildirRelayConfig),
    "API": (APIRelayConfig,),
    "OAuth2": (OAuth2Config,),
    "Route": (RouteConfig,),
    "Rewrite": (RewriteConfig,),
    "Templates": (TemplatesConfig,),
    "Bounce": (BounceConfig,),
    "Webhook": (WebhookConfig,),
    "Logging": (LoggingConfig,),
    "Status": (StatusConfig,),
    "Manhole": (ManholeConfig,),
    "Submission": (SubmissionConfig,),
}


def section_schema(section: str) -> dict[str, tuple[Value, str | None]]:
    keys = schema(*SECTIONS[section])
    if section == "Relay":
        name, value, default = TRANSPORT
        keys = {name: (value, default), **keys}
    return keys


@attrs.frozen
class Config:
    path: str
    daemon: DaemonConfig
    queue: QueueConfig
    relays: tuple[RelayConfig, ...]
    logging: LoggingConfig
    routes: tuple[RouteConfig, ...] = ()
    oauth2: tuple[OAuth2Config, ...] = ()
    status: StatusConfig = StatusConfig("", None, 3600.0)
    manhole: ManholeConfig = ManholeConfig("", None, "")
    submission: SubmissionConfig = SubmissionConfig("", None, None, None, 100, 50, 0)
    rewrite: RewriteConfig = RewriteConfig(None, True, None)
    templates: TemplatesConfig = TemplatesConfig(None, 10000)
    bounce: BounceConfig = BounceConfig(True, 4 * 3600.0, "MAILER-DAEMON", 100)
    webhooks: tuple[WebhookConfig, ...] = ()
    warnings: tuple[str, ...] = ()

    def relays_for(self, sender: str) -> tuple[str, ...]:
        """The relay names to try for mail from ``sender``, in order: the first route
        that matches, else every relay by priority."""
        for route in self.routes:
            if route.matches(sender):
                return route.via
        return tuple(relay.name for relay in self.relays)

    @property
    def wakeup_socket(self) -> str:
        """The datagram socket the CLI pokes so that the daemon picks up new mail at once."""
        return os.path.join(self.daemon.state_dir, WAKEUP_SOCKET)

    @property
    def sendmail_socket(self) -> str:
        """The stream socket where ``sendmail`` hands messages to a running daemon."""
        return os.path.join(self.daemon.state_dir, SENDMAIL_SOCKET)


# The Config attribute that holds each single section.
SECTION_ATTRIBUTES = {
    "Daemon": "daemon",
    "Queue": "queue",
    "Logging": "logging",
    "Status": "status",
    "Manhole": "manhole",
    "Submission": "submission",
    "Rewrite": "rewrite",
    "Templates": "templates",
    "Bounce": "bounce",
}
