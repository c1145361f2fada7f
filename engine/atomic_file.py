"""Replacing a file whole: readers see the old file or the new one, never half of one.

Profiles saved by the editor, and the app's own small files (contexts.yaml, the systemd unit),
are written through a temporary file in the same folder, flushed to disk, given their mode and
renamed over the old one.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_file(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` atomically with ``mode`` (the folder must exist); OSError as is."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


__all__ = ["replace_file"]
