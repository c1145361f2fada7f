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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import CommentMark, MarkedYAMLError, YAMLError
from ruamel.yaml.tokens import CommentToken

from engine.errors import ConfigError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


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
    def line_of(node: CommentedMap | CommentedSeq, key: object | None = None) -> int:
        """1-based line of ``key`` in a mapping (or of item ``key`` of a list), or of the node itself."""
        try:
            if isinstance(node, CommentedSeq):
                if isinstance(key, int) and 0 <= key < len(node):
                    return node.lc.item(key)[0] + 1
            elif key is not None and key in node:
                return node.lc.key(key)[0] + 1
            return node.lc.line + 1
        except (AttributeError, KeyError, TypeError):  # mappings we built ourselves have no marks
            return 1

    def error(self, mapping: CommentedMap | CommentedSeq, key: object | None, field: str, message: str) -> None:
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


# -- saving: replace values in a round-trip document, keeping what comments we can -------------
#
# ruamel keeps a comment in the slot of the scalar *before* it, so the comment lines that follow
# a block (often the heading of the next key: "\n# pool sizing\n") live on its last scalar.
# Replacing a block wholesale would drop them; merge_node edits in place instead, reuses list
# items that did not change (with their comments) and moves that "tail" to the new last scalar.


def merge_node(old: Any, new: Any) -> Any:
    """The node to store in place of ``old`` for the plain value ``new``; ``old`` may be edited."""
    if isinstance(old, CommentedMap) and isinstance(new, Mapping):
        tail = take_tail(old)
        for key in [key for key in old if key not in new]:
            del old[key]
        for key, value in new.items():
            old[key] = merge_node(old[key], value) if key in old else to_node(value)
        put_tail(old, tail)
        return old
    if isinstance(old, CommentedSeq) and isinstance(new, (list, tuple)):
        return _merge_seq(old, new)
    if isinstance(old, str) and isinstance(new, str) and old == new:
        return old  # keeps the user's quoting
    if type(old) is type(new) and old == new:
        return old
    node = to_node(new)
    if isinstance(old, (CommentedMap, CommentedSeq)):
        put_tail(node, take_tail(old))  # a scalar has no slot of its own: then the lines go
    return node


def _merge_seq(old: CommentedSeq, new: list[Any] | tuple[Any, ...]) -> CommentedSeq:
    tail = take_tail(old)
    used: set[int] = set()
    picks: list[int | None] = []
    for value in new:  # unchanged items first, wherever they moved
        match = next((i for i, item in enumerate(old) if i not in used and _same(item, value)), None)
        if match is not None:
            used.add(match)
        picks.append(match)
    for n, value in enumerate(new):  # an edited item (same keys, other values) keeps what it can
        if picks[n] is not None or not isinstance(value, Mapping):
            continue
        edits = [i for i, item in enumerate(old) if i not in used and isinstance(item, CommentedMap) and set(item) == set(value)]
        if edits:  # the most values in common, then the nearest place
            best = max(edits, key=lambda i: (sum(_same(old[i][k], value[k]) for k in value), -abs(i - n)))
            used.add(best)
            picks[n] = best
    flow_items = len(old) > 0 and all(isinstance(item, CommentedMap) and item.fa.flow_style() for item in old)
    seq = CommentedSeq()
    if old.fa.flow_style():
        seq.fa.set_flow_style()
    seq.ca.comment = old.ca.comment
    for n, value in enumerate(new):
        pick = picks[n]
        if pick is None:
            node = to_node(value)
            if flow_items and isinstance(node, CommentedMap):
                node.fa.set_flow_style()  # like its siblings
        else:
            node = merge_node(old[pick], value)
        seq.append(node)
    for n, pick in enumerate(picks):  # after the appends, which shift the comments of later items
        if pick is not None and pick in old.ca.items:
            seq.ca.items[n] = old.ca.items[pick]
    put_tail(seq, tail)
    return seq


def _same(node: Any, value: Any) -> bool:
    if isinstance(value, bool) or isinstance(node, bool):
        return type(node) is type(value) and node == value
    if isinstance(node, Mapping) and isinstance(value, Mapping):
        return list(node) == list(value) and all(_same(node[k], value[k]) for k in node)
    if isinstance(node, (list, tuple)) and isinstance(value, (list, tuple)):
        return len(node) == len(value) and all(_same(a, b) for a, b in zip(node, value))
    return bool(node == value)


def to_node(value: Any) -> Any:
    """Plain dicts and lists as round-trip nodes (so comments can be attached to them)."""
    if isinstance(value, (CommentedMap, CommentedSeq)):
        return value
    if isinstance(value, Mapping):
        node = CommentedMap()
        for key, item in value.items():
            node[key] = to_node(item)
        return node
    if isinstance(value, (list, tuple)):
        return CommentedSeq(to_node(item) for item in value)
    return value


def _last_slot(node: Any) -> tuple[Any, int] | None:
    """The key (or index) of a block node's last entry and the comment slot after its value."""
    if isinstance(node, CommentedMap) and len(node) and not node.fa.flow_style():
        return next(reversed(node)), 2
    if isinstance(node, CommentedSeq) and len(node) and not node.fa.flow_style():
        return len(node) - 1, 0
    return None


def take_tail(node: Any) -> str:
    """Remove and return the comment lines that follow block ``node`` (the end-of-line comment
    of its last line stays where it is)."""
    last = _last_slot(node)
    if last is None:
        return ""
    tail = take_entry_tail(node, last[0])
    if not tail and node.ca.end:
        tail = "".join(token.value for token in node.ca.end)
        node.ca.end.clear()
    return tail


def take_entry_tail(node: CommentedMap | CommentedSeq, key: Any) -> str:
    """Like :func:`take_tail`, for the entry ``key`` (a key, or an index) of block ``node``."""
    if node.fa.flow_style():
        return ""  # a flow collection ends with its bracket; what follows is its parent's
    tail = take_tail(node[key])
    slot = node.ca.items.get(key)
    pos = 2 if isinstance(node, CommentedMap) else 0
    if not tail and slot and len(slot) > pos and isinstance(slot[pos], CommentToken):
        first, newline, rest = slot[pos].value.partition("\n")
        if rest:
            if first:
                slot[pos].value = first + newline
            else:
                slot[pos] = None  # nothing but the line's end was left
            tail = rest
    return tail


def put_tail(node: Any, tail: str) -> bool:
    """Attach comment lines ``tail`` after block ``node``; False when it has no place for them."""
    if not tail:
        return True
    last = _last_slot(node)
    return last is not None and put_entry_tail(node, last[0], tail)


def put_entry_tail(node: CommentedMap | CommentedSeq, key: Any, tail: str) -> bool:
    """Like :func:`put_tail`, after the entry ``key`` of ``node``."""
    if node.fa.flow_style():
        return False
    if put_tail(node[key], tail):
        return True
    slot = node.ca.items.setdefault(key, [None, None, None, None])
    pos = 2 if isinstance(node, CommentedMap) else 0
    token = slot[pos]
    if isinstance(token, CommentToken):
        token.value = (token.value if token.value.endswith("\n") else token.value + "\n") + tail
    else:
        slot[pos] = CommentToken("\n" + tail, CommentMark(0))
    return True
