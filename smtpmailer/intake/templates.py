"""Local templates (``[Templates] path``): a folder per template, ``subject.txt``,
``text.txt`` and optionally ``html.html``, with ``{{ name }}`` variables.

Rendered by Jinja2's SandboxedEnvironment: a template cannot reach Python's internals (an
attribute such as ``__class__`` is refused), and an undefined variable is an error
(StrictUndefined), never a message with a hole in it. The html part is autoescaped, the
text and subject are not. Rendering happens at intake, before the commit: the queue keeps
the finished message. Every failure is a TemplateRefused, one line naming the template."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from smtpmailer.intake.refusals import MessageError
from smtpmailer.message import Attachment, Envelope, build_message

PARTS = {"subject": "subject.txt", "text": "text.txt", "html": "html.html"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# Variables kept with a message are shown by queue show and the dashboard: those whose
# name or value looks like a secret (a reset link's token, a one-time code) are kept only as
# "<redacted>", and a message keeps at most KEPT_BYTES of them.
_SECRET_NAME = re.compile(
    r"(?i)pass|secret|token|key|auth|otp|pin|code|credential|session|cookie|sig|nonce|reset"
)
_SECRET_IN_TEXT = re.compile(r"(?i)(token|key|secret|sig|signature|password|code|auth)=")
_RANDOM_LOOKING = re.compile(r"^(?=.*[A-Za-z])(?=.*\d)[A-Za-z0-9_\-+/=.]{20,}$")
KEPT_BYTES = 8192
REDACTED = "<redacted>"


def redacted(value: Any, name: str = "") -> Any:
    """``value`` with what looks secret replaced by "<redacted>"."""
    if name and _SECRET_NAME.search(name):
        return REDACTED
    if isinstance(value, dict):
        return {str(k): redacted(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(item) for item in value]
    if isinstance(value, str) and (_SECRET_IN_TEXT.search(value) or _RANDOM_LOOKING.match(value)):
        return REDACTED
    return value


def origin(kind: str, name: str, variables: Mapping[str, Any]) -> str:
    """What built a message, as kept with it: the template and its variables, redacted."""
    import json

    kept = json.dumps({kind: name, "vars": redacted(dict(variables))})
    if len(kept) > KEPT_BYTES:
        kept = json.dumps({kind: name, "vars": f"<not kept: {len(kept)} bytes>"})
    return kept


class TemplateRefused(MessageError):
    """A template that cannot be rendered with what was given (SMTP 554, HTTP 400)."""


@attrs.frozen
class Rendered:
    subject: str
    text: str
    html: str | None


def _line_in(error: BaseException, path: str) -> str:
    """`` line N``: where in the template file ``error`` happened, if Jinja kept it."""
    trace = error.__traceback__
    where = ""
    while trace is not None:
        if trace.tb_frame.f_code.co_filename == path:
            where = f" line {trace.tb_lineno}"
        trace = trace.tb_next
    return where


class Templates:
    """The templates of one folder; compiled templates are cached until their file
    changes (Jinja's own check of the modification time)."""

    def __init__(self, folder: str) -> None:
        from jinja2 import FileSystemLoader, StrictUndefined
        from jinja2.sandbox import SandboxedEnvironment

        self.folder = os.path.abspath(folder)
        loader = FileSystemLoader(self.folder)
        options: dict[str, Any] = {
            "loader": loader,
            "undefined": StrictUndefined,
            "keep_trailing_newline": True,
            "auto_reload": True,
        }
        self._plain = SandboxedEnvironment(autoescape=False, **options)
        self._html = SandboxedEnvironment(autoescape=True, **options)

    def names(self) -> list[str]:
        try:
            entries = sorted(os.listdir(self.folder))
        except OSError:
            return []
        return [
            name
            for name in entries
            if _NAME.match(name) and os.path.isfile(os.path.join(self.folder, name, "text.txt"))
        ]

    def _check_name(self, name: str) -> None:
        if not _NAME.match(name) or not os.path.isfile(os.path.join(self.folder, name, "text.txt")):
            known = ", ".join(self.names()) or "none"
            raise TemplateRefused(f"no template {name!r} in {self.folder} (templates: {known})")

    def sources(self, name: str) -> dict[str, str]:
        """The parts of a template as written (for ``template show``)."""
        self._check_name(name)
        found = {}
        for part, file in PARTS.items():
            path = os.path.join(self.folder, name, file)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    found[part] = handle.read()
        return found

    def render(self, name: str, variables: Mapping[str, Any]) -> Rendered:
        from jinja2 import TemplateError, TemplateNotFound, TemplateSyntaxError, UndefinedError
        from jinja2.exceptions import SecurityError

        self._check_name(name)
        parts: dict[str, str | None] = {}
        for part, file in PARTS.items():
            environment = self._html if part == "html" else self._plain
            try:
                template = environment.get_template(f"{name}/{file}")
            except TemplateNotFound:
                if part == "text":
                    raise TemplateRefused(f"template {name}: {file} is missing") from None
                parts[part] = None
                continue
            except TemplateSyntaxError as error:
                raise TemplateRefused(
                    f"template {name}: {file} line {error.lineno}: {error.message}"
                ) from None
            except (OSError, UnicodeDecodeError) as error:
                raise TemplateRefused(f"template {name}: cannot read {file}: {error}") from None
            try:
                parts[part] = template.render(dict(variables))
            except UndefinedError as error:
                where = _line_in(error, os.path.join(self.folder, name, file))
                raise TemplateRefused(
                    f"template {name}: {error.message} in {file}{where}: give it as a variable"
                ) from None
            except SecurityError as error:
                raise TemplateRefused(f"template {name}: not allowed in {file}: {error}") from None
            except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as error:
                raise TemplateRefused(
                    f"template {name}: {file}: {type(error).__name__}: {error}"
                ) from None
            except RecursionError:
                raise TemplateRefused(f"template {name}: {file} recurses too deeply") from None
        if parts["subject"] is None:
            raise TemplateRefused(f"template {name}: subject.txt is missing")
        return Rendered(parts["subject"].rstrip("\r\n"), parts["text"] or "", parts["html"])

    def build(
        self,
        name: str,
        variables: Mapping[str, Any],
        *,
        sender: str,
        to: Sequence[str],
        cc: Sequence[str] = (),
        bcc: Sequence[str] = (),
        headers: Sequence[tuple[str, str]] = (),
        attachments: Sequence[Attachment] = (),
        now: float,
    ) -> Envelope:
        """The message a template makes with these variables, checked as any other (a
        variable that puts a line break into the subject is a header injection)."""
        rendered = self.render(name, variables)
        envelope = build_message(
            sender=sender,
            to=to,
            cc=cc,
            bcc=bcc,
            subject=rendered.subject,
            body=rendered.text,
            html=rendered.html,
            attachments=attachments,
            headers=headers,
            now=now,
        )
        return attrs.evolve(envelope, meta=origin("template", name, variables))


def templates_for(folder: str | None) -> Templates:
    if not folder:
        raise TemplateRefused("no templates: set [Templates] path in the config")
    return Templates(folder)
