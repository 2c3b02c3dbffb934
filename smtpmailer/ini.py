"""A small INI reader that remembers line numbers, so every config error can say FILE:LINE.

No attrs or typing here (20 ms of imports): sendmail's fast path reads ``[Daemon]
state_dir`` with it, once per message. Entry and Section are plain read-only records.
"""

from __future__ import annotations


class ConfigError(Exception):
    """A configuration problem the operator must fix; ``str()`` is ``FILE:LINE: message``."""

    def __init__(self, path: str, line: int | None, message: str) -> None:
        super().__init__(path, line, message)
        self.path = path
        self.line = line
        self.message = message

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


class Entry:
    """One ``key = value`` line."""

    __slots__ = ("key", "value", "line")

    def __init__(self, key: str, value: str, line: int) -> None:
        self.key = key
        self.value = value
        self.line = line

    def __repr__(self) -> str:
        return f"Entry({self.key!r}, {self.value!r}, line {self.line})"


class Section:
    """One ``[Name]`` or ``[Name:label]`` block with its entries in file order."""

    __slots__ = ("name", "label", "line", "entries")

    def __init__(self, name: str, label: str | None, line: int, entries: tuple[Entry, ...]) -> None:
        self.name = name
        self.label = label
        self.line = line
        self.entries = entries

    def __repr__(self) -> str:
        return f"Section([{self.title}], line {self.line}, {len(self.entries)} entries)"

    @property
    def title(self) -> str:
        return f"{self.name}:{self.label}" if self.label else self.name


def _strip_inline_comment(value: str) -> str:
    """Drop a trailing ``; comment`` or ``# comment`` that follows white space."""
    for index, char in enumerate(value):
        if char in ";#" and index > 0 and value[index - 1] in " \t":
            return value[:index].strip()
    return value.strip()


def parse_ini(text: str, path: str) -> list[Section]:
    """Parse INI text into sections; keys are case-sensitive, duplicates are errors."""
    sections: list[Section] = []
    seen_titles: dict[str, int] = {}
    current: tuple[str, str | None, int] | None = None
    entries: list[Entry] = []
    seen_keys: dict[str, int] = {}

    def close() -> None:
        if current is not None:
            sections.append(Section(current[0], current[1], current[2], tuple(entries)))

    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            header = _strip_inline_comment(line)
            if not header.endswith("]"):
                raise ConfigError(path, number, f"malformed section header {line!r}")
            close()
            title = header[1:-1].strip()
            name, _, label = title.partition(":")
            name, label = name.strip(), label.strip()
            if not name or (":" in title and not label):
                raise ConfigError(path, number, f"malformed section header {line!r}")
            key_title = f"{name}:{label}" if label else name
            if key_title in seen_titles:
                raise ConfigError(
                    path,
                    number,
                    f"section [{key_title}] appears twice (first at line {seen_titles[key_title]})",
                )
            seen_titles[key_title] = number
            current = (name, label or None, number)
            entries = []
            seen_keys = {}
            continue
        if "=" not in line:
            raise ConfigError(path, number, f"expected 'key = value', got {line!r}")
        if current is None:
            raise ConfigError(path, number, "key outside any [Section]")
        key, _, value = line.partition("=")
        key = key.strip()
        if not key:
            raise ConfigError(path, number, "empty key name")
        if key in seen_keys:
            raise ConfigError(
                path, number, f"key {key!r} appears twice (first at line {seen_keys[key]})"
            )
        seen_keys[key] = number
        entries.append(Entry(key, _strip_inline_comment(value), number))
    close()
    return sections


def read_leniently(text: str, name: str) -> dict[str, str]:
    """The keys of the unlabelled section ``name`` from a file that may be broken anywhere
    (a duplicate key, a malformed line): what can be read, the first value of a key
    winning. For commands that must reach a daemon running on an earlier, valid file."""
    values: dict[str, str] = {}
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("["):
            inside = _strip_inline_comment(line) == f"[{name}]"
            continue
        if inside and "=" in line:
            key, _, value = line.partition("=")
            values.setdefault(key.strip(), _strip_inline_comment(value))
    return values
