"""The effective configuration, key by key, from the declarations: ``smtpmailer config``
output (secrets redacted), the reload comparison (secrets as digests), restart-only keys."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from smtpmailer.config.declare import KEY, KeySpec, declared
from smtpmailer.config.sections import (
    SECTION_ATTRIBUTES,
    TRANSPORT,
    Config,
    OAuth2Config,
    RelayBase,
    RelayConfig,
    RouteConfig,
    WebhookConfig,
)

# One line of output: (section title, key, value as the file would spell it).
Line = tuple[str, str, str]
SINGLE_BEFORE_RELAYS = ("Daemon", "Queue")
SINGLE_AFTER_RELAYS = (
    "Logging",
    "Status",
    "Manhole",
    "Submission",
    "Rewrite",
    "Templates",
    "Bounce",
)


def relay_title(config: Config, relay: RelayConfig) -> str:
    """``Relay`` for a lone unnamed relay, else ``Relay:NAME`` (``API:NAME``), as the file
    spells it."""
    if relay.kind == "api":
        return f"API:{relay.name}"
    return "Relay" if len(config.relays) == 1 and relay.name == "default" else f"Relay:{relay.name}"


def redact(value: Any) -> str:
    return "<redacted>" if value not in (None, "") else ""


def digest(value: Any) -> str:
    return hashlib.sha256(str(value or "").encode()).hexdigest()


def _shown(obj: Any, field: str, spec: KeySpec, secret: Callable[[Any], str]) -> Line:
    value = getattr(obj, field)
    text = secret(value) if spec.secret else spec.value.show(value)
    return "", spec.file_names(field)[0], text


def _relay_lines(relay: RelayConfig, secret: Callable[[Any], str]) -> Iterator[Line]:
    """transport first (not for [API:NAME], which has none), then the kind's own keys, then
    the pool's (as in the example file)."""
    if relay.kind != "api":
        yield "", TRANSPORT[0], relay.kind
    common = {field for field, _ in declared(RelayBase)}
    fields = declared(type(relay))
    for field, spec in [*(f for f in fields if f[0] not in common), *declared(RelayBase)]:
        yield _shown(relay, field, spec, secret)


def effective(config: Config, secret: Callable[[Any], str] = redact) -> list[Line]:
    """Every key of the running configuration, section by section, in file order."""
    lines: list[Line] = []

    def single(title: str) -> None:
        obj = getattr(config, SECTION_ATTRIBUTES[title])
        for field, spec in declared(type(obj)):
            lines.append((title, *_shown(obj, field, spec, secret)[1:]))

    for title in SINGLE_BEFORE_RELAYS:
        single(title)
    for relay in config.relays:
        title = relay_title(config, relay)
        lines.extend((title, key, text) for _, key, text in _relay_lines(relay, secret))
    for oauth2 in config.oauth2:
        title = f"OAuth2:{oauth2.name}"
        for field, spec in declared(OAuth2Config):
            lines.append((title, *_shown(oauth2, field, spec, secret)[1:]))
    for route in config.routes:
        title = f"Route:{route.name}"
        for field, spec in declared(RouteConfig):
            lines.append((title, *_shown(route, field, spec, secret)[1:]))
    for webhook in config.webhooks:
        title = f"Webhook:{webhook.name}"
        for field, spec in declared(WebhookConfig):
            lines.append((title, *_shown(webhook, field, spec, secret)[1:]))
    for title in SINGLE_AFTER_RELAYS:
        single(title)
    return lines


def render_config(config: Config) -> str:
    """The effective configuration as an INI file, with secrets redacted."""
    out = [f"; effective configuration of {config.path}"]
    section = None
    for title, key, text in effective(config):
        if title != section:
            out += ["", f"[{title}]"]
            section = title
        out.append(f"{key} = {text}" if text else f"{key} =")
    return "\n".join(out) + "\n"


def flatten(config: Config) -> dict[str, str]:
    """``{"[Queue] poll_interval": "1s", ...}``; secrets as a digest, never in clear. What
    a section holds beyond its keys (what it read from a file they name, such as
    [Rewrite]'s rules) is compared as a digest too: a file edited in place is a change."""
    values = {f"[{title}] {key}": text for title, key, text in effective(config, digest)}
    sections = [
        (title, getattr(config, attribute)) for title, attribute in SECTION_ATTRIBUTES.items()
    ]
    sections += [(f"OAuth2:{oauth2.name}", oauth2) for oauth2 in config.oauth2]
    for title, section in sections:
        for field in attrs.fields(type(section)):
            if KEY not in field.metadata and field.name != "name":
                held = getattr(section, field.name)
                # asdict: a repr would leave out what it hides (a private key)
                values[f"[{title}] {field.name}"] = digest(
                    attrs.asdict(held) if attrs.has(type(held)) else held
                )
    return values


def restart_only() -> list[tuple[str, str, str]]:
    """(section title, Config attribute, field) of every restart-only key."""
    from smtpmailer.config.sections import SECTIONS

    found = []
    for title, attribute in SECTION_ATTRIBUTES.items():
        (cls,) = SECTIONS[title]
        for field, spec in declared(cls):
            if spec.restart:
                found.append((title, attribute, field))
    return found


def keep_restart_only(old: Config, new: Config) -> tuple[Config, list[str]]:
    """The new config with every restart-only value put back to the running one, and the
    names of those that differed ("[Queue] path")."""
    refused = []
    kept = new
    for title, attribute, field in restart_only():
        before, after = getattr(old, attribute), getattr(kept, attribute)
        if getattr(before, field) != getattr(after, field):
            refused.append(f"[{title}] {field}")
            kept = attrs.evolve(
                kept, **{attribute: attrs.evolve(after, **{field: getattr(before, field)})}
            )
    return kept, refused
