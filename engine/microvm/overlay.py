"""Copy-on-write overlays: a per-VM qcow2 file whose backing file is a ``copy_on_write`` disk.

The VM writes only to its overlay; the image itself is opened read-only (so any number of VMs,
a pool's, share it). ``qemu-img create`` writes the overlay (a header, no data: milliseconds); like
the scratch disk it lives in a private folder and is unlinked once QEMU holds it open, so nothing
stays on disk however the VM ends.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from engine.errors import ConfigError, EngineError
from engine.microvm.disk import DiskImage

QEMU_IMG_PACKAGE = "qemu-utils"


def create_overlay(disk: DiskImage, path: Path) -> None:
    """Write a qcow2 overlay at ``path`` over ``disk`` (absolute backing path, format named)."""
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise ConfigError(f"a copy-on-write disk needs qemu-img (Debian package {QEMU_IMG_PACKAGE}): {disk.path}")
    done = subprocess.run(
        [qemu_img, "create", "-q", "-f", "qcow2", "-F", disk.format, "-b", str(disk.path.resolve()), str(path)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise EngineError(f"cannot create a copy-on-write overlay of {disk.path}: {done.stderr.strip()}")
