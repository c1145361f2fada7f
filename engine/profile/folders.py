"""Where profiles live: the bundled folder and the user's, and the name of their sources.

Apart from the store on purpose: finding the user's config folder (the app's contexts file sits
beside its profiles) must not import the profile parser and the pool machinery behind it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Literal

import platformdirs

__all__ = ["APP_NAME", "CONFIG_DIR_ENV", "Source", "bundled_dir", "profile_dirs", "user_dir"]

CONFIG_DIR_ENV = "CAPSA_CONFIG_DIR"
APP_NAME = "capsa-tui"
Source = Literal["bundled", "user", "file"]


def bundled_dir() -> Path:
    """The profiles shipped with capsa-tui: the source tree's ``profiles/``, else the wheel's copy."""
    source_tree = Path(__file__).resolve().parents[2] / "profiles"
    if source_tree.is_dir():
        return source_tree
    return Path(sys.prefix) / "share" / APP_NAME / "profiles"  # pyproject's data-files


def user_dir() -> Path:
    """The user's profiles: ``$CAPSA_CONFIG_DIR/profiles``, else the platformdirs config folder."""
    base = os.environ.get(CONFIG_DIR_ENV)
    root = Path(base).expanduser() if base else platformdirs.user_config_path(APP_NAME)
    return root / "profiles"


def profile_dirs() -> list[tuple[Source, Path]]:
    """Where profiles are looked up, lowest priority first (a later folder overrides by name)."""
    return [("bundled", bundled_dir()), ("user", user_dir())]
