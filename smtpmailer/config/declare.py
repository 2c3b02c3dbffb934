"""Each config key is declared once, on the attrs field that holds its value.

``key(...)`` makes that field and records the key's value kind, default as written in the
file, one line of help, and whether it is restart-only or secret. Parsing, ``smtpmailer
config`` output, the reload comparison, restart-only refusals and the check of
conf/smtpmailer.conf all read these declarations, so adding a key is one field.
"""

from __future__ import annotations

from typing import Any

import attrs

from smtpmailer.config.values import Value

KEY = "smtpmailer.config.key"


@attrs.frozen
class KeySpec:
    value: Value
    default: str | None  # as written in the file; None means empty
    help: str
    restart: bool = False  # a running daemon refuses to change it on reload
    secret: bool = False  # never shown: redacted in output, a digest for reload
    # The names in the file, when not the field's own: password, password_file and
    # password_env all give ``password``; ``token_file`` gives ``token``.
    names: tuple[str, ...] = ()

    def file_names(self, field: str) -> tuple[str, ...]:
        return self.names or (field,)


def key(
    value: Value,
    default: str | None,
    help: str,
    *,
    restart: bool = False,
    secret: bool = False,
    names: tuple[str, ...] = (),
) -> Any:
    """The attrs field for one config key (secret fields stay out of repr)."""
    spec = KeySpec(value, default, help, restart, secret, names)
    return attrs.field(metadata={KEY: spec}, repr=not secret)


def declared(cls: type) -> list[tuple[str, KeySpec]]:
    """(field name, spec) for each declared key of an attrs class, in field order."""
    return [
        (field.name, field.metadata[KEY]) for field in attrs.fields(cls) if KEY in field.metadata
    ]


def schema(*classes: type) -> dict[str, tuple[Value, str | None]]:
    """Every name the file may use in a section made of ``classes``: its value and default."""
    out: dict[str, tuple[Value, str | None]] = {}
    for cls in classes:
        for field, spec in declared(cls):
            for name in spec.file_names(field):
                out[name] = (spec.value, spec.default)
    return out
