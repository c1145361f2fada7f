"""``capsa-tui serve`` as a systemd user service: the unit's text and writing it in place.

The unit runs the very ``capsa-tui`` that wrote it (an absolute path, as systemd needs) with the
serve arguments given, restarts it when it fails, and stops it with SIGTERM, which makes serve
close its pools (each VM stops in seconds) before it exits. Its first line is a marker, so a
later ``--install-unit`` replaces a unit it wrote and refuses one the user wrote (unless forced).
``deploy/capsa-tui.service`` is the same unit for a ``~/.local/bin`` install.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import engine

UNIT_NAME = "capsa-tui.service"
MARKER = "# Written by capsa-tui serve --install-unit"
NEXT_STEPS = (
    "systemctl --user daemon-reload && systemctl --user enable --now capsa-tui",
    "journalctl --user -u capsa-tui -f",
    "loginctl enable-linger \"$USER\"   # optional: keep it running while you are logged out",
)
# Longer than a VM's stop (30 s grace, then terminate, then kill) so pools close on their own.
STOP_TIMEOUT_SECONDS = 90
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters that make systemd split, unquote or expand a word; such words are quoted.
_NEEDS_QUOTES = re.compile(r"[\s\"'\\;]")
_C_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escape(text: str) -> str:
    return "".join(_C_ESCAPES.get(ch, ch) for ch in text)


def quote_exec_word(word: str) -> str:
    """One ExecStart word as systemd reads it back unchanged (systemd.service "Command lines").

    ``%`` is a specifier and ``$`` a variable there, so they are doubled; a word with spaces,
    quotes, backslashes or ``;`` (a command separator) goes in double quotes with C escapes.
    """
    text = word.replace("%", "%%").replace("$", "$$")
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return f'"{_escape(text)}"'


def quote_environment(key: str, value: str) -> str:
    """One ``Environment=`` assignment, quoted (specifiers are expanded there; variables are not)."""
    if not _ENV_KEY.fullmatch(key):
        raise engine.ConfigError(f"environment variable name {key!r}: expected letters, digits and '_', not first a digit")
    return '"' + _escape(f"{key}={value}".replace("%", "%%")) + '"'


def unit_text(exec_argv: list[str], environment: Mapping[str, str] | None = None) -> str:
    """The unit file that runs ``exec_argv`` (its first word an absolute path) as the pool service."""
    if not exec_argv or not os.path.isabs(exec_argv[0]):
        first = exec_argv[0] if exec_argv else ""
        raise engine.ConfigError(f"the unit's program {first!r}: expected an absolute path (systemd runs no PATH search)")
    lines = [
        MARKER + "; edit it freely, or re-run with --force to replace it.",
        "#",
        "# Not socket-activated, on purpose: serve keeps VMs warm, so it must be running before the",
        "# first client asks for one, and it creates its socket itself (checking 0600 on the socket,",
        "# 0700 and ownership on its folder), which an inherited socket would skip.",
        "[Unit]",
        "Description=capsa-tui pool service (warm Linux microVM pools)",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(quote_exec_word(word) for word in exec_argv),
    ]
    lines += [f"Environment={quote_environment(key, value)}" for key, value in sorted((environment or {}).items())]
    lines += [
        "Restart=on-failure",
        "RestartSec=5",
        "# SIGTERM to serve alone: it closes its pools and stops its QEMU children itself; whatever is",
        "# left when the timeout ends gets SIGKILL (KillMode=mixed).",
        "KillSignal=SIGTERM",
        "KillMode=mixed",
        f"TimeoutStopSec={STOP_TIMEOUT_SECONDS}",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ]
    return "\n".join(lines)


def user_unit_dir() -> Path:
    """The user's own unit folder: ``$XDG_CONFIG_HOME/systemd/user``, else ``~/.config/systemd/user``."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"  # the XDG spec ignores a relative one
    return root / "systemd" / "user"


def running_command() -> list[str]:
    """How to run this ``capsa-tui`` again from anywhere: its absolute path, else ``python -m``."""
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    # Not resolved: a ~/.local/bin/capsa-tui symlink into a virtualenv must keep following upgrades.
    if script is not None and script.name == "capsa-tui" and script.is_file():
        return [os.path.abspath(script)]
    found = shutil.which("capsa-tui")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "capsatui.cli"]


def install_unit(exec_argv: list[str], *, environment: Mapping[str, str] | None = None,
                 unit_dir: Path | None = None, force: bool = False) -> Path:
    """Write the unit to ``unit_dir`` (default :func:`user_unit_dir`) and return its path.

    A unit of that name that capsa-tui did not write (no marker on its first line) is a
    ConfigError naming it, unless ``force``. The caller prints :data:`NEXT_STEPS`.
    """
    text = unit_text(exec_argv, environment)
    folder = unit_dir if unit_dir is not None else user_unit_dir()
    path = folder / UNIT_NAME
    if not force and (path.exists() or path.is_symlink()):
        try:
            with open(path, encoding="utf-8", errors="replace") as existing:
                first = existing.readline()
        except OSError as err:
            raise engine.ConfigError(f"cannot read the existing unit {path}: {err}; pass --force to replace it") from None
        if not first.startswith(MARKER):
            raise engine.ConfigError(f"{path} exists and was not written by capsa-tui; "
                                     "pass --force to replace it, or edit it yourself")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # 0644: a unit holds no secret and systemd warns about odd modes; atomic, so systemd (or
        # a daemon-reload) sees the old unit or the new one
        engine.replace_file(path, text, 0o644)
    except OSError as err:
        raise engine.ConfigError(f"cannot write the unit in {folder}: {err}") from None
    return path
