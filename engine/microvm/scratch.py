"""A sandbox's scratch disk: a per-VM sparse ext4 file that holds its overlay's writes.

The file is made in a private folder, formatted on the host (``mkfs.ext4`` on a sparse file takes
tens of milliseconds, where formatting in the guest would cost a fork-heavy step of the boot
under emulation and a mke2fs in the initramfs), and removed as soon as QEMU has opened it: the
open descriptor keeps the blocks alive for the VM's life, and nothing is left on disk whatever
way the VM ends.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from engine.errors import ConfigError, EngineError


class ScratchDisk:
    """One scratch disk file; ``remove()`` (idempotent) deletes it and its folder."""

    def __init__(self, size_mb: int) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="capsa-scratch-"))
        self.path = self._dir / "scratch.ext4"
        try:
            with open(self.path, "wb") as file:
                file.truncate(size_mb << 20)
            mkfs = shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4"
            # No journal: the disk dies with its VM, so crash consistency buys nothing.
            done = subprocess.run(
                [mkfs, "-q", "-F", "-O", "^has_journal", "-E", "lazy_itable_init=1,nodiscard", "-L", "scratch",
                 str(self.path)],
                capture_output=True, text=True, check=False,
            )
        except FileNotFoundError as err:
            self.remove()
            raise ConfigError(f"a scratch disk needs mkfs.ext4 (Debian package e2fsprogs): {err}") from err
        except OSError as err:
            self.remove()
            raise EngineError(f"cannot create the scratch disk {self.path}: {err.strerror}") from err
        if done.returncode != 0:
            self.remove()
            raise EngineError(f"mkfs.ext4 failed on the scratch disk {self.path}: {done.stderr.strip()}")

    def remove(self) -> None:
        if self.path.exists():
            os.unlink(self.path)
        shutil.rmtree(self._dir, ignore_errors=True)
