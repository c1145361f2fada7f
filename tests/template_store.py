"""A private snapshot template store for a test module: its own templates folder, and its RAM
images in its own /dev/shm folder, removed afterwards (so tests never share or leak templates)."""
from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.snapshot.store import RAM_DIR_ENV, TEMPLATES_DIR_ENV


@contextlib.contextmanager
def private_template_store(root: Path, name: str) -> Iterator[Path]:
    """Templates under ``root`` and their RAM under /dev/shm/capsa-test-NAME-PID while inside."""
    ram = Path("/dev/shm") / f"capsa-test-{name}-{os.getpid()}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TEMPLATES_DIR_ENV, str(root))
        patch.setenv(RAM_DIR_ENV, str(ram))
        try:
            yield root
        finally:
            shutil.rmtree(ram, ignore_errors=True)
