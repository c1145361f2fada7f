"""Facts about the host that shape a machine: the QEMU binary and the TSC frequency."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from engine.errors import QemuNotFound

QEMU_ENV = "CAPSA_QEMU"
QEMU_BINARY = "qemu-system-x86_64"


def find_qemu() -> str:
    """Path of qemu-system-x86_64 (or ``$CAPSA_QEMU``); QemuNotFound says what to install."""
    wanted = os.environ.get(QEMU_ENV)
    if wanted:
        if Path(wanted).is_file() and os.access(wanted, os.X_OK):
            return wanted
        raise QemuNotFound(f"{QEMU_ENV}={wanted} is not an executable file")
    found = shutil.which(QEMU_BINARY)
    if found is None:
        raise QemuNotFound(
            f"{QEMU_BINARY} was not found on PATH: install it with "
            "'sudo apt-get install qemu-system-x86' (Debian/Ubuntu), or set "
            f"{QEMU_ENV} to the binary's path"
        )
    return found


@functools.cache
def qemu_version(binary: str) -> str:
    """The version line QEMU prints, e.g. 'QEMU emulator version 7.2.22 (...)'."""
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise QemuNotFound(f"{binary} --version failed: {err}") from err
    return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"


def parse_tsc_khz(cpuinfo: str) -> int | None:
    """The TSC frequency in kHz from /proc/cpuinfo text ('cpu MHz'), or None."""
    for line in cpuinfo.splitlines():
        if line.startswith("cpu MHz"):
            try:
                return int(float(line.partition(":")[2]) * 1000)
            except ValueError:
                return None
    return None


@functools.cache
def host_tsc_khz() -> int | None:
    """This host's TSC in kHz, read at run time (never hard-coded: hosts differ)."""
    try:
        return parse_tsc_khz(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None
