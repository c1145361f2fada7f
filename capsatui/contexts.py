"""Contexts: named pool-service hosts the app and the CLI can talk to, like ``docker context``.

They live in ``contexts.yaml`` in the user config folder (the parent of the user profiles
folder: ``$CAPSA_CONFIG_DIR``, else the platformdirs config folder)::

    current: box                        # optional; absent (or `local`) means this host
    contexts:
      box:
        host: ssh://me@box:22           # or unix:///path/pool.sock (or just the path), or local
        command: capsa-tui              # optional: the program to run on the remote host
        socket: /run/user/1000/capsa-tui/pool.sock   # optional: the remote socket

The file is read and written round trip (the user's comments and key order survive) and
replaced atomically with mode 0600, since it says where the user's machines are and how to log
in to them. Every mistake is a :class:`engine.ConfigError` naming the file, the line and the
field (``contexts.yaml line 4, contexts.box.host: ...``); all of them are reported at once.
"""
from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

import engine

FILE_NAME = "contexts.yaml"
HOST_ENV = "CAPSA_HOST"
LOCAL = "local"  # the reserved name of this host: never a context in the file
NAME_MAX = 32
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_CONTEXT_KEYS = ("host", "command", "socket")
_TOP_KEYS = ("current", "contexts")


@dataclass(frozen=True)
class Context:
    """One pool-service host by name; ``host`` is ``ssh://...``, ``unix:///...`` or ``local``."""

    name: str
    host: str
    command: str | None = None  # the program run on an ssh host (the service's default when None)
    socket: str | None = None  # the socket on that host (the service's default when None)

    @property
    def is_local(self) -> bool:
        """True for this host (the app then finds or starts its pools as it does without contexts)."""
        return self.host == LOCAL

    def address(self) -> engine.ServiceAddress:
        """Where the service is, parsed and checked (ServiceError names the bad text)."""
        return _parse_address(self.host, self.command, self.socket)

    def to_dict(self) -> dict[str, str]:
        """The context's fields as the file and ``context list --json`` spell them (None left out)."""
        out = {"name": self.name, "host": self.host}
        if self.command is not None:
            out["command"] = self.command
        if self.socket is not None:
            out["socket"] = self.socket
        return out


LOCAL_CONTEXT = Context(LOCAL, LOCAL)


@dataclass
class ContextFile:
    """What ``contexts.yaml`` holds, and its round-trip document for writing it back."""

    path: Path
    contexts: dict[str, Context] = field(default_factory=dict)
    current: str | None = None  # None: this host
    document: CommentedMap = field(default_factory=CommentedMap, repr=False)

    def get(self, name: str) -> Context:
        """The context called ``name`` (``local`` is always there); ConfigError lists the known ones."""
        if name == LOCAL:
            return LOCAL_CONTEXT
        try:
            return self.contexts[name]
        except KeyError:
            known = ", ".join([LOCAL, *sorted(self.contexts)])
            raise engine.ConfigError(f"{self.path}: no context named {name!r} (known: {known})") from None

    def current_context(self) -> Context | None:
        """The context ``context use`` chose, or None for this host."""
        return None if self.current is None else self.contexts[self.current]


def contexts_path() -> Path:
    """Where ``contexts.yaml`` is: beside the user profiles folder, in the user config folder."""
    user_profiles = dict(engine.profile_dirs())["user"]
    return user_profiles.parent / FILE_NAME


def check_name(name: str) -> None:
    """Refuse a context name that is not ``[a-z0-9][a-z0-9_-]*`` (at most 32), or ``local``."""
    problem = _name_problem(name)
    if problem:
        raise engine.ConfigError(f"context name {name!r}: {problem}")


def _name_problem(name: object) -> str | None:
    if not isinstance(name, str):
        return f"expected a name, found {type(name).__name__} {name!r}"
    if name == LOCAL:
        return f"{LOCAL!r} is reserved for this host"
    if len(name) > NAME_MAX:
        return f"expected at most {NAME_MAX} characters, found {len(name)}"
    if not _NAME.fullmatch(name):
        return "expected lower-case letters, digits, '-' and '_', starting with a letter or digit"
    return None


def _parse_address(host: str, command: str | None, socket: str | None) -> engine.ServiceAddress:
    # Only the options given are passed, so the service's own defaults stay in one place.
    options: dict[str, str] = {}
    if command is not None:
        options["command"] = command
    if socket is not None:
        options["socket"] = socket
    return engine.ServiceAddress.parse(host, **options)


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True  # writing back must not re-quote the user's strings
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


class _Issues:
    """The mistakes found in one file, each ``FILE line N, FIELD: message``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.found: list[str] = []

    def add(self, line: int | None, where: str, message: str) -> None:
        place = str(self.path) if line is None else f"{self.path} line {line}"
        self.found.append(f"{place}, {where}: {message}" if where else f"{place}: {message}")

    def raise_if_any(self) -> None:
        if self.found:
            raise engine.ConfigError("\n".join(self.found))


def _key_line(node: CommentedMap, key: Any) -> int | None:
    try:
        return int(node.lc.key(key)[0]) + 1  # ruamel counts lines from 0
    except (AttributeError, KeyError, TypeError):
        return None  # a node built in memory has no position


def _value_line(node: CommentedMap, key: Any) -> int | None:
    try:
        return int(node.lc.value(key)[0]) + 1
    except (AttributeError, KeyError, TypeError):
        return None


def _read_document(path: Path, issues: _Issues) -> CommentedMap | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return CommentedMap()  # no file yet: no contexts, this host
    except (OSError, UnicodeDecodeError) as err:
        issues.add(None, "", f"cannot read the file: {err}")
        return None
    try:
        document = _yaml().load(text)
    except MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        issues.add(mark.line + 1 if mark is not None else None, "",
                   f"invalid YAML: {err.problem or err.context or 'not valid YAML'}")
        return None
    except YAMLError as err:
        issues.add(None, "", f"invalid YAML: {err}")
        return None
    if document is None:
        return CommentedMap()  # an empty file (or only comments) is an empty one
    if not isinstance(document, CommentedMap):
        issues.add(1, "", f"expected a mapping with 'current' and 'contexts', found {_describe(document)}")
        return None
    return document


def _describe(value: object) -> str:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return f"{type(value).__name__} {value!r}"
    return "a list" if isinstance(value, list) else f"a {type(value).__name__}"


def _parse_context(name: str, node: CommentedMap, issues: _Issues) -> Context | None:
    prefix = f"contexts.{name}"
    bad = False
    for key in node:
        if key not in _CONTEXT_KEYS:
            issues.add(_key_line(node, key), f"{prefix}.{key}",
                       f"unknown field (expected one of: {', '.join(_CONTEXT_KEYS)})")
            bad = True
    values: dict[str, str | None] = dict.fromkeys(_CONTEXT_KEYS)
    for key in _CONTEXT_KEYS:
        value = node.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            issues.add(_value_line(node, key), f"{prefix}.{key}", f"expected a non-empty string, found {_describe(value)}")
            bad = True
        else:
            values[key] = str(value)
    host = values["host"]
    if host is None and node.get("host") is None:
        # `host:` with no value is named at its own line; no key at all, at the context's first line.
        line = _key_line(node, "host") if "host" in node else node.lc.line + 1
        issues.add(line, f"{prefix}.host", "missing: expected ssh://user@host[:port], unix:///path or local")
    if bad or host is None:
        return None
    try:
        _parse_address(host, values["command"], values["socket"])
    except engine.EngineError as err:
        issues.add(_value_line(node, "host"), f"{prefix}.host", str(err))
        return None
    return Context(name, host, values["command"], values["socket"])


def _parse_file(path: Path, document: CommentedMap, issues: _Issues) -> ContextFile:
    result = ContextFile(path, document=document)
    for key in document:
        if key not in _TOP_KEYS:
            issues.add(_key_line(document, key), str(key), f"unknown field (expected one of: {', '.join(_TOP_KEYS)})")
    found = document.get("contexts")
    entries = found if isinstance(found, CommentedMap) else CommentedMap()
    if found is not None and found is not entries:
        issues.add(_value_line(document, "contexts"), "contexts",
                   f"expected a mapping of names to {{host: ...}}, found {_describe(found)}")
    for name, node in entries.items():
        problem = _name_problem(name)
        if problem:
            issues.add(_key_line(entries, name), f"contexts.{name}", f"bad name: {problem}")
            continue
        if not isinstance(node, CommentedMap):
            issues.add(_value_line(entries, name), f"contexts.{name}",
                       f"expected a mapping with host (and command, socket), found {_describe(node)}")
            continue
        context = _parse_context(name, node, issues)
        if context is not None:
            result.contexts[name] = context
    current = document.get("current")
    if current is not None:
        if not isinstance(current, str):
            issues.add(_value_line(document, "current"), "current", f"expected a context name, found {_describe(current)}")
        elif current != LOCAL:
            if current not in entries:
                known = ", ".join([LOCAL, *sorted(str(n) for n in entries)])
                issues.add(_value_line(document, "current"), "current",
                           f"no context named {current!r} (known: {known})")
            else:
                result.current = current
    return result


def load_contexts(path: Path | None = None) -> ContextFile:
    """Read and check ``contexts.yaml`` (no file: no contexts); ConfigError lists every mistake."""
    path = path or contexts_path()
    issues = _Issues(path)
    document = _read_document(path, issues)
    issues.raise_if_any()
    assert document is not None
    result = _parse_file(path, document, issues)
    issues.raise_if_any()
    return result


def _save(file: ContextFile) -> None:
    """Write the document back so readers see the old file or the new one, never half of one."""
    buffer = io.StringIO()
    _yaml().dump(file.document, buffer)
    text = buffer.getvalue()
    # Check what is about to be written the way it will be read: a bug here must not leave a
    # file the next command refuses.
    checked = _Issues(file.path)
    _parse_file(file.path, _yaml().load(text) or CommentedMap(), checked)
    checked.raise_if_any()
    file.path.parent.mkdir(parents=True, exist_ok=True)
    engine.replace_file(file.path, text, 0o600)  # it says where the user's machines are: theirs alone


def add_context(context: Context, *, use: bool = False, path: Path | None = None) -> ContextFile:
    """Add a context to the file (and make it the current one with ``use``); return the new file.

    The name must be new (``rm`` it first to change it) and the host must parse.
    """
    check_name(context.name)
    _parse_address(context.host, context.command, context.socket)  # ServiceError names the text
    file = load_contexts(path)
    if context.name in file.contexts:
        raise engine.ConfigError(f"{file.path}: a context named {context.name!r} exists; remove it first")
    entries = file.document.get("contexts")
    if entries is None:
        entries = file.document["contexts"] = CommentedMap()
    node = CommentedMap()
    for key, value in context.to_dict().items():
        if key != "name":
            node[key] = value
    entries[context.name] = node
    if use:
        _set_current(file.document, context.name)
    _save(file)
    return load_contexts(file.path)


def _set_current(document: CommentedMap, name: str) -> None:
    if name == LOCAL:
        document.pop("current", None)  # no `current` is this host: one spelling of it in the file
    elif "current" in document:
        document["current"] = name  # in place: a comment beside it stays
    else:
        document.insert(0, "current", name)  # first, where a reader looks for it


def use_context(name: str, *, path: Path | None = None) -> ContextFile:
    """Make ``name`` the current context; ``local`` switches back to this host."""
    file = load_contexts(path)
    file.get(name)  # ConfigError for an unknown name, listing the known ones
    _set_current(file.document, name)
    _save(file)
    return load_contexts(file.path)


def remove_context(name: str, *, path: Path | None = None) -> bool:
    """Remove the context ``name``; True when it was the current one (this host is now current)."""
    file = load_contexts(path)
    if name == LOCAL:
        raise engine.ConfigError(f"context {LOCAL!r} is this host; it cannot be removed")
    file.get(name)
    was_current = file.current == name
    del file.document["contexts"][name]
    if was_current:
        file.document.pop("current", None)
    _save(file)
    return was_current


def _looks_like_address(text: str) -> bool:
    return "://" in text or text.startswith("/") or text == LOCAL


def _context_of(text: str, origin: str, file: ContextFile | None, path: Path | None) -> tuple[Context, ContextFile | None]:
    """One ``--host``/``$CAPSA_HOST`` value as a context: a named one, or a host given inline."""
    if text == LOCAL:
        return LOCAL_CONTEXT, file
    if _looks_like_address(text):
        try:
            _parse_address(text, None, None)
        except engine.EngineError as err:
            raise engine.ConfigError(f"{origin} {text!r}: {err}") from None
        return Context(text, text), file  # an unnamed host is shown by its address
    # A name: only now is the file read, so a broken file never stops `--host ssh://...`.
    file = file or load_contexts(path)
    try:
        return file.get(text), file
    except engine.ConfigError as err:
        raise engine.ConfigError(f"{origin} {text!r}: {err} (or give a host: ssh://user@host, unix:///path)") from None


def resolve_host(explicit: str | Sequence[str] | None = None, *, path: Path | None = None) -> list[Context]:
    """The hosts to talk to: the ``--host`` values, else ``$CAPSA_HOST``, else the current context.

    Each ``--host`` or ``$CAPSA_HOST`` value is a context name or a host (``ssh://...``,
    ``unix:///...`` or a socket's absolute path, ``local``). An empty list means none was chosen: this host, found or
    started as without contexts. A chosen ``local`` is :data:`LOCAL_CONTEXT`.
    """
    values = [explicit] if isinstance(explicit, str) else list(explicit or [])
    origin = "--host"
    if not values:
        env = os.environ.get(HOST_ENV, "").strip()
        values, origin = ([env], f"${HOST_ENV}") if env else ([], "")
    file: ContextFile | None = None
    if not values:
        current = load_contexts(path).current_context()
        return [] if current is None else [current]
    chosen: list[Context] = []
    for text in values:
        context, file = _context_of(text.strip(), origin, file, path)
        if context not in chosen:  # `--host box --host box` is one host
            chosen.append(context)
    return chosen
