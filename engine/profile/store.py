"""Profiles on disk: loading by path or name from the folders of ``engine.profile.folders``, and saving back.

The thin I/O wrapper around the pure parser in ``engine.profile.parse``. Saving edits the round-trip
YAML document in place, so the user's comments and key order survive, re-validates the result
and only then replaces the file atomically: an invalid profile is never written.
"""
from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path

from ruamel.yaml.comments import CommentedMap

from engine.atomic_file import replace_file
from engine.errors import ConfigError
from engine.profile.folders import Source, profile_dirs, user_dir
from engine.profile.parse import Profile, parse_profile
from engine.profile.schema import (
    ProfileError, ProfileIssue, dump_yaml, merge_node, parse_document, put_entry_tail, put_tail, take_entry_tail,
    take_tail, to_node)

_NAME_LINE = re.compile(r"^name\s*:")


def _is_file(path: Path) -> bool:
    return path.is_file()


def load_profile(path: str | Path, *, source: Source = "file") -> Profile:
    """Read and validate one profile file; ProfileError lists every issue in it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError([ProfileIssue(str(path), None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError([ProfileIssue(str(path), None, "", f"cannot read the file: {err}")]) from None
    where = path.absolute()
    return parse_profile(text, str(path), base_dir=where.parent, source=source, path=where, is_file=_is_file)


def _profile_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []  # a user who never made a profile has no folder; that is fine
    return sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])


def _name_line(path: Path) -> int | None:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return next((n for n, line in enumerate(lines, 1) if _NAME_LINE.match(line)), None)


def load_profiles() -> list[Profile]:
    """Every profile of the bundled and user folders, sorted by name; user ones override.

    All files are read: ProfileError lists the issues of every bad file, and its ``profiles``
    holds the good ones, so a caller can report the errors and still use the rest.
    """
    by_name: dict[str, Profile] = {}
    issues: list[ProfileIssue] = []
    for source, folder in profile_dirs():
        seen: dict[str, Path] = {}
        for file in _profile_files(folder):
            try:
                profile = load_profile(file, source=source)
            except ProfileError as err:
                issues += err.errors
                continue
            if profile.name in seen:
                message = f"expected a name unique in {folder}, found {profile.name!r} also in {seen[profile.name].name}"
                issues.append(ProfileIssue(str(file), _name_line(file), "name", message))
                continue
            seen[profile.name] = file
            by_name[profile.name] = profile
    profiles = sorted(by_name.values(), key=lambda p: p.name)
    if issues:
        raise ProfileError(issues, profiles)
    return profiles


def find_profile(name: str | Path) -> Profile:
    """The profile called ``name`` (or the file at ``name`` if it is a path to one).

    Broken files with other names do not stop the lookup; a broken file named ``NAME.yaml``
    does, since it was probably meant to define (or override) this profile.
    """
    text = str(name)
    if isinstance(name, Path) or text.endswith((".yaml", ".yml")) or os.sep in text:
        return load_profile(name)
    try:
        profiles, broken = load_profiles(), []
    except ProfileError as err:
        profiles, broken = err.profiles, err.errors
    own = [issue for issue in broken if Path(issue.file).stem == text]
    if own:
        raise ProfileError(own)
    for profile in profiles:
        if profile.name == text:
            return profile
    known = [p.name for p in profiles]
    hint = difflib.get_close_matches(text, known, n=1)
    folders = ", ".join(str(folder) for _, folder in profile_dirs())
    raise ConfigError(
        f"no profile named {text!r}"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + f"; known profiles: {', '.join(known) or 'none'} (looked in {folders})"
    )


def save_profile(target: Profile | str | Path, updates: Mapping[str, object]) -> Profile:
    """Apply ``updates`` to a profile file, keeping its comments and key order; return the result.

    Keys are dotted paths (``"pool.size"``, ``"login.user"``); missing mappings are created and
    a value of None removes the key. A mapping or list value (``{"network.policy":
    policy.to_dict()}``) is merged into what is there, so comments on the parts that did not
    change, and the comment lines after the block, are kept. The result is validated before anything is written, and the
    file is replaced atomically. A bundled profile is never modified: its edited copy goes to the
    user folder, where it overrides the bundled one from then on.
    """
    if isinstance(target, Profile):
        if target.path is None:
            raise ConfigError(f"profile {target.name!r} was not loaded from a file; nothing to save to")
        origin, source = target.path, target.source
        if source == "bundled":
            dest, source = user_dir() / origin.name, "user"
            if dest.exists():  # a user file of another profile name: never clobber it
                raise ConfigError(f"cannot save {target.name!r} as {dest}: that file exists (it names another profile)")
        else:
            dest = origin
    else:
        origin = dest = Path(target).absolute()
        source = "file"
    try:
        text = origin.read_text(encoding="utf-8")
    except OSError as err:
        raise ProfileError([ProfileIssue(str(origin), None, "", f"cannot read the file: {err}")]) from None
    document, issues = parse_document(text, str(origin))
    if document is None:
        raise ProfileError(issues)
    for dotted, value in updates.items():
        _apply(document, dotted, value)
    new_text = dump_yaml(document)
    profile = parse_profile(new_text, str(dest), base_dir=dest.parent, source=source, path=dest, is_file=_is_file)
    _write_atomically(dest, new_text)
    return profile


def _apply(document: CommentedMap, dotted: str, value: object) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"profile field {dotted!r} is not a dotted path like 'pool.size'")
    node = document
    # Comment lines after a value (often the heading of the next key) are kept after it when the
    # value grows, shrinks or goes (see engine.profile.schema.merge_node).
    replaced: list[tuple[CommentedMap, str, str]] = []
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, CommentedMap):
            if value is None:
                return  # removing a key under a mapping that is not there: nothing to do
            replaced.append((node, key, take_entry_tail(node, key) if key in node else ""))
            child = CommentedMap()
            node[key] = child  # replacing a scalar (e.g. `network: none`) keeps the key's place
        node = child
    key = keys[-1]
    tail = take_tail(node)
    if value is None:
        if key in node:
            before = list(node)
            index = before.index(key)
            lines = take_entry_tail(node, key)
            del node[key]
            if lines and index:
                put_entry_tail(node, before[index - 1], lines)
    elif key in node:
        node[key] = merge_node(node[key], value)  # edits in place: comments inside survive
    else:
        node[key] = to_node(value)
    put_tail(node, tail)
    for parent, name, lines in reversed(replaced):
        put_entry_tail(parent, name, lines)


def _write_atomically(dest: Path, text: str) -> None:
    """Write ``text`` to ``dest`` so readers see the old file or the new one, never half of one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = dest.stat().st_mode & 0o7777  # keep the user's mode
    except FileNotFoundError:
        mode = 0o644
    replace_file(dest, text, mode)
