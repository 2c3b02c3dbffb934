"""Loading the INI file: every key validated, every error with FILE:LINE, a frozen Config.

Plain keys are read from their declarations (``read_section``); what needs more than its
own value (paths relative to the file, secrets read from files, keys that only make sense
together) is done here, section by section.
"""

from __future__ import annotations

import difflib
import os
import socket
import stat
from collections.abc import Callable
from typing import Any

from smtpmailer.config.declare import declared
from smtpmailer.config.sections import (
    OAUTH2_MECHANISMS,
    RELAY_KINDS,
    SECTIONS,
    APIRelayConfig,
    BounceConfig,
    Config,
    DaemonConfig,
    LoggingConfig,
    MaildirRelayConfig,
    ManholeConfig,
    OAuth2Config,
    QueueConfig,
    RelayConfig,
    RewriteConfig,
    RouteConfig,
    ServiceAccount,
    SMTPRelayConfig,
    StatusConfig,
    SubmissionConfig,
    TemplatesConfig,
    WebhookConfig,
    section_schema,
)
from smtpmailer.ini import ConfigError, Entry, Section, parse_ini
from smtpmailer.oauth2 import providers
from smtpmailer.paths import config_folder, default_config_path, resolve_path

DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
# The base URL each [API:NAME] provider's API lives at (SES's by region).
API_ENDPOINTS = {
    "sendgrid": "https://api.sendgrid.com",
    "mailgun": "https://api.mailgun.net",
    "sparkpost": "https://api.sparkpost.com",
    "postmark": "https://api.postmarkapp.com",
    "resend": "https://api.resend.com",
    "brevo": "https://api.brevo.com",
    "mailjet": "https://api.mailjet.com",
    "ses": "https://email.{region}.amazonaws.com",
}


def _hint(word: str, candidates: Any) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Reader:
    """Turns one section's entries into typed values, with FILE:LINE on every error."""

    def __init__(self, path: str, section: Section | None, name: str) -> None:
        self.path = path
        self.section = section
        self.schema = section_schema(name)
        self.entries: dict[str, Entry] = {e.key: e for e in section.entries} if section else {}
        for entry in self.entries.values():
            if entry.key not in self.schema:
                assert section is not None
                raise ConfigError(
                    path,
                    entry.line,
                    f"unknown key {entry.key!r} in [{section.title}]"
                    f"{_hint(entry.key, self.schema)}",
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
            return self.schema[key][0].parse(raw)
        except ValueError as error:
            raise ConfigError(self.path, self.line(key), f"{key}: {error}") from None

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.line(key), message)


def read_section(reader: Reader, cls: type, **given: Any) -> Any:
    """``cls`` with every declared key read from the file, except those ``given``."""
    values = {
        field: reader.get(spec.file_names(field)[0])
        for field, spec in declared(cls)
        if field not in given
    }
    return cls(**values, **given)


def _world_readable(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IROTH)
    except OSError:
        return False


def _read_secret(
    reader: Reader, base: str, warnings: list[str], name: str = "password"
) -> str | None:
    """``name``, ``name_file`` (mode 0600) or ``name_env``: at most one of them."""
    given = [k for k in (name, f"{name}_file", f"{name}_env") if reader.raw(k)]
    if len(given) > 1:
        raise reader.fail(given[1], f"give only one of {', '.join(given)}")
    if not given:
        return None
    key = given[0]
    value = reader.get(key)
    what = name.replace("_", " ")
    if key == name:
        if _world_readable(reader.path):
            warnings.append(
                f"{reader.path}:{reader.line(key)}: the file holds a {what} and is "
                f"world-readable; chmod 0600 it or use {name}_file"
            )
        return str(value)
    if key.endswith("_env"):
        secret = os.environ.get(value)
        if secret is None:
            raise reader.fail(key, f"{key}: environment variable {value} is not set")
        return secret
    secret_path = resolve_path(base, value)
    try:
        with open(secret_path, encoding="utf-8") as handle:
            secret = handle.read().rstrip("\r\n")
    except OSError as error:
        raise reader.fail(key, f"{key}: cannot read {secret_path}: {error.strerror}") from None
    if _world_readable(secret_path):
        warnings.append(f"{secret_path}: {what} file is world-readable; chmod 0600 it")
    return secret


def _relay(
    path: str,
    base: str,
    section: Section,
    warnings: list[str],
    oauth2: tuple[OAuth2Config, ...] = (),
) -> RelayConfig:
    reader = Reader(path, section, "Relay")
    transport = reader.get("transport")
    name = section.label or "default"
    if transport == "maildir":
        folder = reader.get("path")
        if not folder:
            raise reader.fail("path", f"[{section.title}] with transport = maildir needs a path")
        relay: MaildirRelayConfig = read_section(
            reader, MaildirRelayConfig, name=name, path=resolve_path(base, folder)
        )
        return relay
    assert RELAY_KINDS[transport] is SMTPRelayConfig
    security = reader.get("security")
    auth = reader.get("auth")
    host = reader.get("host")
    if not host:
        raise reader.fail("host", f"[{section.title}] needs a host")
    if reader.get("path"):
        raise reader.fail("path", "path is only for transport = maildir")
    username = reader.get("username")
    password = _read_secret(reader, base, warnings)
    if auth in ("plain", "login", "cram-md5") and not (username and password is not None):
        raise reader.fail("auth", f"auth = {auth} needs username and a password")
    if password is not None and not username:
        raise reader.fail("username", "a password is set but username is empty")
    oauth2_name = _relay_oauth2(reader, section, auth, username, password, oauth2)
    if auth == "none":
        username = password = None
    ca_file = reader.get("ca_file")
    if ca_file:
        ca_file = resolve_path(base, ca_file)
        if not os.path.isfile(ca_file):
            raise reader.fail("ca_file", f"ca_file: no such file {ca_file}")
    cert_file, key_file = _client_certificate(reader, base, security, warnings)
    source_address = reader.get("source_address")
    if source_address:
        import ipaddress

        try:
            source_address = str(ipaddress.ip_address(source_address.strip("[]")))
        except ValueError:
            raise reader.fail(
                "source_address", f"source_address: {source_address!r} is not an IP address"
            ) from None
    from smtpmailer.proxy import parse_socks_proxy

    proxy = _read_proxy(reader, base, warnings, "proxy", parse_socks_proxy)
    if security == "none" and password is not None:
        warnings.append(
            f"{path}:{section.line}: [{section.title}] sends its password without TLS "
            "(security = none)"
        )
    if security != "none" and not reader.get("verify"):
        warnings.append(
            f"{path}:{reader.line('verify')}: [{section.title}] does not verify the relay's "
            "certificate (verify = false)"
        )
    smtp: SMTPRelayConfig = read_section(
        reader,
        SMTPRelayConfig,
        name=name,
        port=reader.get("port") or DEFAULT_PORTS[security],
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        source_address=source_address,
        proxy=proxy,
        username=username,
        password=password,
        oauth2=oauth2_name,
        helo=reader.get("helo") or "",
    )
    return smtp


def _read_proxy(
    reader: Reader, base: str, warnings: list[str], name: str, parse: Callable[[str], Any]
) -> str | None:
    """A proxy URL (``name``, ``name_file`` or ``name_env``: it may hold a password),
    checked by ``parse`` now; its error names the key that gave it."""
    proxy = _read_secret(reader, base, warnings, name)
    if not proxy:
        return None
    try:
        parse(proxy)
    except ValueError as error:
        given = next(k for k in (name, f"{name}_file", f"{name}_env") if reader.raw(k))
        raise reader.fail(given, f"{given}: {error}") from None
    return proxy.strip()


def _client_certificate(
    reader: Reader, base: str, security: str, warnings: list[str]
) -> tuple[str | None, str | None]:
    """cert_file and key_file made absolute, read and checked to be a pair now, so that a
    wrong file is a config error and not a TLS failure at the first delivery."""
    cert_file, key_file = reader.get("cert_file"), reader.get("key_file")
    if not cert_file:
        if key_file:
            raise reader.fail("key_file", "key_file needs cert_file")
        return None, None
    if security == "none":
        raise reader.fail("cert_file", "cert_file needs TLS (security = starttls or tls)")
    cert_file = resolve_path(base, cert_file)
    key_file = resolve_path(base, key_file) if key_file else None
    from smtpmailer.certificates import CertificateFileError, load_client_certificate

    try:
        load_client_certificate(cert_file, key_file)
    except CertificateFileError as error:
        raise reader.fail(error.key, str(error)) from None
    if _world_readable(key_file or cert_file):
        warnings.append(
            f"{key_file or cert_file}: the client certificate's private key is "
            "world-readable; chmod 0600 it"
        )
    return cert_file, key_file


def _api(path: str, base: str, section: Section, warnings: list[str]) -> APIRelayConfig:
    """[API:NAME]: a provider that is built, its key, and its endpoint."""
    reader = Reader(path, section, "API")
    provider = reader.get("provider")
    if not provider:
        raise reader.fail("provider", f"[{section.title}] needs provider")
    api_key = _read_secret(reader, base, warnings, "api_key")
    secret_access_key = _read_secret(reader, base, warnings, "secret_access_key")
    if provider == "ses":
        if api_key is not None:
            raise reader.fail("api_key", "ses signs with access_key_id and secret_access_key")
        if bool(reader.get("access_key_id")) != (secret_access_key is not None):
            raise reader.fail(
                "access_key_id",
                "give access_key_id and secret_access_key_file together (or neither, for "
                "the standard AWS credential chain)",
            )
        if not reader.get("region"):
            raise reader.fail("region", f"[{section.title}] with provider = ses needs region")
    elif api_key is None:
        raise reader.fail("api_key_file", f"[{section.title}] needs api_key_file or api_key_env")
    if provider == "mailjet" and ":" not in (api_key or ""):
        raise reader.fail(
            "api_key", "mailjet: the key is PUBLIC:PRIVATE (the API key and the secret key)"
        )
    default = API_ENDPOINTS[provider]
    if provider == "mailgun":
        if not reader.get("domain"):
            raise reader.fail("domain", f"[{section.title}] with provider = mailgun needs domain")
        region = (reader.get("region") or "us").lower()
        if region not in ("us", "eu"):
            raise reader.fail("region", "region: mailgun has us and eu")
        default = {"us": "https://api.mailgun.net", "eu": "https://api.eu.mailgun.net"}[region]
    if provider == "ses":
        default = default.format(region=reader.get("region"))
    endpoint = (reader.get("endpoint") or default).rstrip("/")
    problem = _url_problem(endpoint)
    if problem:
        raise reader.fail("endpoint", f"endpoint: {problem}")
    api: APIRelayConfig = read_section(
        reader,
        APIRelayConfig,
        name=section.label,
        api_key=api_key,
        secret_access_key=secret_access_key,
        endpoint=endpoint,
    )
    return api


def _relay_oauth2(
    reader: Reader,
    section: Section,
    auth: str,
    username: str | None,
    password: str | None,
    oauth2: tuple[OAuth2Config, ...],
) -> str | None:
    """The [OAuth2:NAME] a relay names, checked against its auth and credentials."""
    name = reader.get("oauth2")
    if auth in OAUTH2_MECHANISMS and not name:
        raise reader.fail("auth", f"auth = {auth} needs oauth2 = NAME (an [OAuth2:NAME] section)")
    if not name:
        return None
    if auth not in (*OAUTH2_MECHANISMS, "auto"):
        raise reader.fail("oauth2", f"oauth2 is for auth = xoauth2 or oauthbearer, not {auth}")
    names = [o.name for o in oauth2]
    if name not in names:
        listed = f" (sections: {', '.join(names)})" if names else ""
        raise reader.fail(
            "oauth2", f"oauth2: no [OAuth2:{name}] section{_hint(name, names)}{listed}"
        )
    if not username:
        raise reader.fail("oauth2", f"[{section.title}] with oauth2 needs username (the mailbox)")
    if password is not None:
        raise reader.fail("oauth2", "give a password or oauth2, not both")
    return str(name)


def _oauth2(path: str, base: str, section: Section, warnings: list[str]) -> OAuth2Config:
    """[OAuth2:NAME] with the provider's defaults filled in and its files checked."""
    reader = Reader(path, section, "OAuth2")
    title = f"[{section.title}]"
    provider, flow, tenant = reader.get("provider"), reader.get("flow"), reader.get("tenant")
    if flow not in providers.flows_of(provider):
        offered = " or ".join(providers.flows_of(provider))
        raise reader.fail("flow", f"flow = {flow} is not offered by {provider} (use {offered})")
    if provider == "microsoft" and flow == "client_credentials":
        if not tenant or tenant in providers.MICROSOFT_COMMON_TENANTS:
            raise reader.fail(
                "tenant", "client_credentials needs tenant = your tenant id (or domain)"
            )
    found = providers.defaults(provider, flow, tenant)
    values = {
        key: reader.get(key) or getattr(found, key)
        for key in ("token_url", "authorize_url", "device_url", "scope")
    }
    for key in ("token_url", "scope"):
        if not values[key]:
            raise reader.fail(key, f"{title} with provider = {provider} needs {key}")
    for key in ("token_url", "authorize_url", "device_url"):
        problem = _url_problem(values[key])
        if problem:
            raise reader.fail(key, f"{key}: {problem}")
    client_secret = _read_secret(reader, base, warnings, "client_secret")
    client_id = reader.get("client_id")
    refresh_file = reader.get("refresh_token_file")
    refresh_file = resolve_path(base, refresh_file) if refresh_file else None
    account = None
    account_file = reader.get("service_account_file")
    account_file = resolve_path(base, account_file) if account_file else None
    if flow in ("refresh_token", "client_credentials") and not client_id:
        raise reader.fail("client_id", f"{title} with flow = {flow} needs client_id")
    if flow == "client_credentials" and client_secret is None:
        raise reader.fail("client_secret_file", f"{title} with flow = {flow} needs a client secret")
    if flow == "refresh_token":
        if not refresh_file:
            raise reader.fail("refresh_token_file", f"{title} needs refresh_token_file")
        if not os.path.isdir(os.path.dirname(refresh_file)):
            raise reader.fail(
                "refresh_token_file",
                f"refresh_token_file: no such folder {os.path.dirname(refresh_file)}",
            )
        if not os.path.exists(refresh_file):
            warnings.append(
                f"{refresh_file}: no refresh token yet; run: smtpmailer oauth2 authorize "
                f"{section.label}"
            )
        elif _world_readable(refresh_file):
            warnings.append(f"{refresh_file}: refresh token is world-readable; chmod 0600 it")
    if flow == "service_account":
        if not account_file:
            raise reader.fail("service_account_file", f"{title} needs service_account_file")
        if not reader.get("subject"):
            raise reader.fail("subject", f"{title} needs subject (the mailbox to send as)")
        account = _service_account(reader, account_file, warnings)
    oauth2: OAuth2Config = read_section(
        reader,
        OAuth2Config,
        name=section.label,
        client_secret=client_secret,
        refresh_token_file=refresh_file,
        service_account_file=account_file,
        service_account=account,
        **values,
    )
    return oauth2


def _url_problem(url: str | None) -> str | None:
    """Tokens travel over TLS only; plain http is allowed to loopback (a test server)."""
    if not url:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"):
        return None
    return f"{url!r} is not an https:// URL (plain http only to 127.0.0.1)"


def _service_account(reader: Reader, path: str, warnings: list[str]) -> ServiceAccount:
    import json

    key = "service_account_file"
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except OSError as error:
        raise reader.fail(key, f"{key}: cannot read {path}: {error.strerror}") from None
    except ValueError:
        raise reader.fail(key, f"{key}: {path} is not a JSON key file") from None
    if not isinstance(data, dict) or data.get("type") != "service_account":
        raise reader.fail(key, f"{key}: {path} is not a service account key (type)")
    for field in ("client_email", "private_key"):
        if not isinstance(data.get(field), str) or not data[field]:
            raise reader.fail(key, f"{key}: {path} has no {field}")
    if "PRIVATE KEY" not in data["private_key"]:
        raise reader.fail(key, f"{key}: {path}: private_key is not a PEM key")
    if _world_readable(path):
        warnings.append(f"{path}: service account key is world-readable; chmod 0600 it")
    return ServiceAccount(data["client_email"], data["private_key"], data.get("private_key_id"))


# Sections there may be several of, each named: [Route:NAME], [OAuth2:NAME], [Webhook:NAME].
NAMED = {"Route": "route", "OAuth2": "OAuth2 section", "Webhook": "webhook"}


def _sections(
    text: str, path: str
) -> tuple[dict[str, Section], list[Section], dict[str, list[Section]]]:
    """The single sections by name, the relay sections, and the named sections of each
    kind (NAMED), in file order."""
    by_name: dict[str, Section] = {}
    relays: list[Section] = []
    named: dict[str, list[Section]] = {kind: [] for kind in NAMED}
    for section in parse_ini(text, path):
        if section.name not in SECTIONS:
            raise ConfigError(
                path,
                section.line,
                f"unknown section [{section.title}]{_hint(section.name, SECTIONS)}",
            )
        if section.name == "API" and not section.label:
            raise ConfigError(path, section.line, "name each API relay: [API:NAME]")
        if section.name in ("Relay", "API"):
            if section.label and any(s.label == section.label for s in relays):
                raise ConfigError(
                    path, section.line, f"a relay named {section.label!r} is defined twice"
                )
            relays.append(section)
        elif section.name in NAMED:
            if not section.label:
                raise ConfigError(
                    path, section.line, f"name each {NAMED[section.name]}: [{section.name}:NAME]"
                )
            if any(s.label == section.label for s in named[section.name]):
                raise ConfigError(path, section.line, f"[{section.title}] is defined twice")
            named[section.name].append(section)
        elif section.label:
            raise ConfigError(path, section.line, f"[{section.name}] takes no ':NAME' label")
        else:
            by_name[section.name] = section
    if not relays:
        raise ConfigError(path, None, "no [Relay] section: there is nowhere to deliver mail")
    if len(relays) > 1 and any(s.label is None for s in relays):
        unnamed = next(s for s in relays if s.label is None)
        raise ConfigError(path, unnamed.line, "with several relays, name each: [Relay:NAME]")
    return by_name, relays, named


def _daemon(path: str, section: Section | None, warnings: list[str]) -> DaemonConfig:
    """[Daemon], its paths made absolute against the config file's folder."""
    from smtpmailer.proxy import parse_proxy

    base = config_folder(path)
    reader = Reader(path, section, "Daemon")
    proxy = _read_proxy(reader, base, warnings, "http_proxy", parse_proxy)
    return read_section(
        reader,
        DaemonConfig,
        state_dir=resolve_path(base, reader.get("state_dir")),
        pid_file=resolve_path(base, reader.get("pid_file")),
        log_file=resolve_path(base, reader.get("log_file")),
        http_proxy=proxy,
    )


def parse_config(text: str, path: str) -> Config:
    """Validate the whole file; raise ConfigError at the first problem."""
    base = config_folder(path)
    by_name, relays, named = _sections(text, path)
    routes, oauth2_sections = named["Route"], named["OAuth2"]
    warnings: list[str] = []
    oauth2 = tuple(_oauth2(path, base, section, warnings) for section in oauth2_sections)
    daemon = _daemon(path, by_name.get("Daemon"), warnings)
    queue = Reader(path, by_name.get("Queue"), "Queue")
    backend = queue.get("backend")
    dsn = _read_secret(queue, base, warnings, "dsn")
    given = [k for k in ("dsn", "dsn_file", "dsn_env", "node") if queue.raw(k)]
    if backend == "sqlite" and given:
        raise queue.fail(given[0], f"{given[0]} is only for backend = postgresql")
    if backend == "postgresql" and not dsn:
        raise queue.fail("backend", "backend = postgresql needs dsn or dsn_file")
    if backend == "postgresql" and queue.raw("path"):
        raise queue.fail("path", "path is only for backend = sqlite")
    queue_path = queue.get("path")
    queue_config: QueueConfig = read_section(
        queue,
        QueueConfig,
        path=resolve_path(base, queue_path)
        if queue_path
        else os.path.join(daemon.state_dir, "queue.sqlite3"),
        dsn=dsn,
        node=queue.get("node") or (socket.gethostname() if backend == "postgresql" else None),
    )
    if queue_config.max_retry_delay < queue_config.retry_delay:
        raise queue.fail("max_retry_delay", "max_retry_delay is shorter than retry_delay")
    relay_configs = sorted(
        (
            _relay(path, base, section, warnings, oauth2)
            if section.name == "Relay"
            else _api(path, base, section, warnings)
            for section in relays
        ),
        key=lambda relay: relay.priority,
    )
    used = {getattr(relay, "oauth2", None) for relay in relay_configs}
    for section in oauth2_sections:
        if section.label not in used:
            warnings.append(
                f"{path}:{section.line}: [{section.title}] is not used by any relay "
                f"(a relay names it with oauth2 = {section.label})"
            )
    logging: LoggingConfig = read_section(
        Reader(path, by_name.get("Logging"), "Logging"), LoggingConfig
    )
    return Config(
        path=path,
        daemon=daemon,
        queue=queue_config,
        relays=tuple(relay_configs),
        logging=logging,
        routes=tuple(_route(path, section, relay_configs) for section in routes),
        oauth2=oauth2,
        status=_status(path, base, by_name.get("Status"), warnings),
        manhole=_manhole(path, base, by_name.get("Manhole"), daemon.state_dir),
        submission=_submission(path, base, by_name.get("Submission")),
        rewrite=_rewrite(path, base, by_name.get("Rewrite")),
        templates=_templates(path, base, by_name.get("Templates")),
        bounce=read_section(Reader(path, by_name.get("Bounce"), "Bounce"), BounceConfig),
        webhooks=tuple(_webhook(path, base, section, warnings) for section in named["Webhook"]),
        warnings=tuple(warnings),
    )


def _route(path: str, section: Section, relays: list[RelayConfig]) -> RouteConfig:
    from smtpmailer.intake.refusals import MessageError
    from smtpmailer.message import normalize_address

    reader = Reader(path, section, "Route")
    route: RouteConfig = read_section(reader, RouteConfig, name=section.label)
    if not route.sender:
        raise reader.fail("sender", f"[{section.title}] needs sender (globs on the sender)")
    for glob in route.sender:
        wild = any(char in glob for char in "*?[")
        try:
            if not wild and glob != "<>":
                normalize_address(glob, "sender")
        except MessageError:
            raise reader.fail(
                "sender",
                f"sender: {glob!r} can never match a sender: use an address or a glob "
                "such as *@example.com",
            ) from None
    if not route.via:
        raise reader.fail("via", f"[{section.title}] needs via (relay names, in order)")
    names = [relay.name for relay in relays]
    for name in route.via:
        if name not in names:
            raise reader.fail(
                "via",
                f"via: no relay named {name!r}{_hint(name, names)} (relays: {', '.join(names)})",
            )
    return route


def _rewrite(path: str, base: str, section: Section | None) -> RewriteConfig:
    """[Rewrite] with its map files read and checked, line by line."""
    reader = Reader(path, section, "Rewrite")
    map_file, rules = _read_map(reader, base, "map_file")
    recipient_map_file, recipient_rules = _read_map(reader, base, "recipient_map_file")
    rewrite: RewriteConfig = read_section(
        reader,
        RewriteConfig,
        map_file=map_file,
        rules=rules,
        recipient_map_file=recipient_map_file,
        recipient_rules=recipient_rules,
    )
    return rewrite


def _read_map(
    reader: Reader, base: str, key: str
) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """A map file named by ``key`` (its absolute path) and its 'PATTERN ADDRESS' lines."""
    from smtpmailer.intake.refusals import MessageError
    from smtpmailer.message import normalize_address

    map_file = reader.get(key)
    if not map_file:
        return None, ()
    map_file = resolve_path(base, map_file)
    try:
        with open(map_file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or "not UTF-8 text"
        raise reader.fail(key, f"{key}: cannot read {map_file}: {reason}") from None
    rules: list[tuple[str, str]] = []
    for number, line in enumerate(lines, start=1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2:
            raise ConfigError(map_file, number, "expected 'PATTERN ADDRESS'")
        try:
            address = normalize_address(words[1], "rewritten address")
        except MessageError as error:
            raise ConfigError(map_file, number, str(error)) from None
        rules.append((words[0].lower(), address))
    return map_file, tuple(rules)


def _webhook(path: str, base: str, section: Section, warnings: list[str]) -> WebhookConfig:
    """[Webhook:NAME]: an https URL (plain http to loopback only), a secret to sign with,
    events of the kinds there are."""
    from smtpmailer.queue.events import KINDS

    reader = Reader(path, section, "Webhook")
    url = reader.get("url")
    if not url:
        raise reader.fail("url", f"[{section.title}] needs url")
    problem = _url_problem(url)
    if problem:
        raise reader.fail("url", f"url: {problem}")
    secret = _read_secret(reader, base, warnings, "secret")
    if not secret:
        raise reader.fail("secret_file", f"[{section.title}] needs secret_file or secret_env")
    webhook: WebhookConfig = read_section(reader, WebhookConfig, name=section.label, secret=secret)
    unknown = [event for event in webhook.events if event not in KINDS]
    if unknown or not webhook.events:
        raise reader.fail(
            "events", f"events: {', '.join(unknown) or 'none'}: use {', '.join(KINDS)}"
        )
    return webhook


def _templates(path: str, base: str, section: Section | None) -> TemplatesConfig:
    reader = Reader(path, section, "Templates")
    folder = reader.get("path")
    if folder:
        folder = resolve_path(base, folder)
        if not os.path.isdir(folder):
            raise reader.fail("path", f"path: {folder} is not a folder")
    templates: TemplatesConfig = read_section(reader, TemplatesConfig, path=folder or None)
    return templates


def _manhole(path: str, base: str, section: Section | None, state_dir: str) -> ManholeConfig:
    reader = Reader(path, section, "Manhole")
    keys_file = reader.get("authorized_keys")
    host_key = reader.get("host_key")
    manhole: ManholeConfig = read_section(
        reader,
        ManholeConfig,
        listen="" if reader.turned_off("listen") else reader.get("listen"),
        authorized_keys=resolve_path(base, keys_file) if keys_file else None,
        host_key=resolve_path(base, host_key)
        if host_key
        else os.path.join(state_dir, "ssh_host_ed25519_key"),
    )
    if manhole.authorized_keys and not os.path.isfile(manhole.authorized_keys):
        raise reader.fail(
            "authorized_keys", f"authorized_keys: no such file {manhole.authorized_keys}"
        )
    return manhole


def _submission(path: str, base: str, section: Section | None) -> SubmissionConfig:
    from smtpmailer.endpoints import parse_listen

    reader = Reader(path, section, "Submission")

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
    submission: SubmissionConfig = read_section(
        reader, SubmissionConfig, listen=listen, tls_cert=cert, tls_key=key, users_file=users
    )
    return submission


def _status(path: str, base: str, section: Section | None, warnings: list[str]) -> StatusConfig:
    from smtpmailer.endpoints import parse_listen

    reader = Reader(path, section, "Status")
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
    status: StatusConfig = read_section(reader, StatusConfig, listen=listen, token=token)
    return status


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
