"""The pure half of profile parsing: YAML text to a document, and field checks that collect errors.

Nothing here reads files or the clock: text and a file name go in, values and
:class:`ProfileIssue` records come out, so every kind of mistake is unit-testable without disks.

We parse with ruamel.yaml in round-trip mode rather than PyYAML because it (1) records the line
and column of every key and value, so an error can name ``file:line``, and (2) can write a
document back with the user's comments and key order intact, which PyYAML cannot (it drops
comments on load). YAML 1.2 also means ``yes``/``no``/``on`` are strings, never booleans.
"""
from __future__ import annotations

import difflib
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from engine.errors import ConfigError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# The same rules VmSpec.validate applies, checked here too so the error names file and line.
HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class ProfileIssue:
    """One thing wrong in a profile file: where (file, 1-based line, dotted field) and what."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ProfileError(ConfigError):
    """One or more profile files are invalid; ``errors`` holds every issue found, in file order.

    ``profiles`` holds the profiles that did load when several files were read at once
    (:func:`engine.load_profiles`), so a caller can still show the good ones.
    """

    def __init__(self, errors: Iterable[ProfileIssue], profiles: Iterable[Any] = ()) -> None:
        self.errors = list(errors)
        self.profiles = list(profiles)
        super().__init__("\n".join(str(issue) for issue in self.errors) or "invalid profile")


def yaml_rt() -> YAML:
    """A round-trip YAML reader/writer configured the same way for loading and saving."""
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True  # saving must not re-quote the user's strings
    yaml.width = 4096  # never re-wrap long lines (descriptions, command lines) on save
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def dump_yaml(document: Any) -> str:
    buffer = io.StringIO()
    yaml_rt().dump(document, buffer)
    return buffer.getvalue()


def parse_document(text: str, file: str) -> tuple[CommentedMap | None, list[ProfileIssue]]:
    """The top-level mapping of ``text``, or the issue that stops us from reading it."""
    try:
        document = yaml_rt().load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = err.problem or err.context or "not valid YAML"
        return None, [ProfileIssue(file, line, "", f"invalid YAML: {problem}")]
    except YAMLError as err:  # unmarked errors are rare (e.g. bad encoding); keep the message
        return None, [ProfileIssue(file, None, "", f"invalid YAML: {err}")]
    if document is None:
        return None, [ProfileIssue(file, 1, "", "the file is empty: expected a mapping with at least 'name'")]
    if not isinstance(document, CommentedMap):
        return None, [ProfileIssue(file, 1, "", f"expected a mapping of keys (name: ..., cpus: ...), found {describe(document)}")]
    return document, []


def describe(value: object) -> str:
    """How an error message shows a YAML value the user wrote."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {int(value)}"
    if isinstance(value, float):
        return f"number {float(value)}"
    if isinstance(value, str):
        return f"string {str(value)!r}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!s}"


class Fields:
    """Field checks over one file that record issues instead of raising, so all are reported.

    Each check takes the mapping, the key and the dotted path of the mapping (``""`` at the top),
    returns the value (or the default when absent, or ``None`` when wrong) and notes any issue
    at the line of the key.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[ProfileIssue] = []

    # -- where and what -------------------------------------------------------------------

    @staticmethod
    def path(parent: str, key: object) -> str:
        return f"{parent}.{key}" if parent else str(key)

    @staticmethod
    def line_of(mapping: CommentedMap, key: object | None = None) -> int:
        """1-based line of ``key`` in ``mapping``, or of the mapping itself."""
        try:
            if key is not None and key in mapping:
                return mapping.lc.key(key)[0] + 1
            return mapping.lc.line + 1
        except (AttributeError, KeyError, TypeError):  # mappings we built ourselves have no marks
            return 1

    def error(self, mapping: CommentedMap, key: object | None, field: str, message: str) -> None:
        self.issues.append(ProfileIssue(self.file, self.line_of(mapping, key), field, message))

    def expected(self, mapping: CommentedMap, key: str, parent: str, what: str) -> None:
        found = describe(mapping[key])
        self.error(mapping, key, self.path(parent, key), f"expected {what}, found {found}")

    # -- structure --------------------------------------------------------------------------

    def unknown_keys(self, mapping: CommentedMap, parent: str, known: Iterable[str]) -> None:
        """Every key not in ``known`` is an issue, with the closest known key as a hint."""
        known = list(known)
        for key in mapping:
            if key in known:
                continue
            hint = difflib.get_close_matches(str(key), known, n=1)
            tail = f" (did you mean {hint[0]!r}?)" if hint else f" (known keys: {', '.join(known)})"
            self.error(mapping, key, self.path(parent, key), f"unknown key{tail}")

    def mapping(self, mapping: CommentedMap, key: str, parent: str) -> CommentedMap | None:
        if key not in mapping:
            return None
        value = mapping[key]
        if isinstance(value, CommentedMap):
            return value
        self.expected(mapping, key, parent, "a mapping")
        return None

    def require(self, mapping: CommentedMap, key: str, parent: str, what: str) -> bool:
        if key in mapping:
            return True
        self.error(mapping, None, self.path(parent, key), f"missing: expected {what}")
        return False

    # -- scalars ----------------------------------------------------------------------------

    def integer(self, mapping: CommentedMap, key: str, parent: str, low: int, high: int, default: int) -> int:
        if key not in mapping:
            return default
        value = mapping[key]
        # bool is an int in Python; in a profile `cpus: true` is a mistake, not 1.
        if not isinstance(value, int) or isinstance(value, bool):
            self.expected(mapping, key, parent, f"an integer from {low} to {high}")
            return default
        if not low <= value <= high:
            self.expected(mapping, key, parent, f"an integer from {low} to {high}")
            return default
        return int(value)

    def boolean(self, mapping: CommentedMap, key: str, parent: str, default: bool) -> bool:
        if key not in mapping:
            return default
        value = mapping[key]
        if not isinstance(value, bool):
            self.expected(mapping, key, parent, "true or false")
            return default
        return value

    def string(self, mapping: CommentedMap, key: str, parent: str, default: str | None = None) -> str | None:
        if key not in mapping:
            return default
        value = mapping[key]
        if not isinstance(value, str):
            hint = " (put it in quotes)" if isinstance(value, (int, float)) else ""
            self.expected(mapping, key, parent, f"a string{hint}")
            return None
        return str(value)

    def matching(
        self, mapping: CommentedMap, key: str, parent: str, pattern: re.Pattern[str], what: str, default: str | None = None
    ) -> str | None:
        """A string that must match ``pattern``; ``what`` describes the pattern for people."""
        if key not in mapping:
            return default
        value = mapping[key]
        if not isinstance(value, str) or not pattern.match(value):
            self.expected(mapping, key, parent, what)
            return None
        return str(value)
