"""Disk images for the disk tests, made on the host: raw files with a marker at offset 0, ext4
file systems from a folder (``mkfs.ext4 -d``, converted to qcow2 on request), and the checks
the tests share (a file's SHA-256, the overlay folders left in the temporary folder)."""
from __future__ import annotations

import hashlib
import subprocess
import tempfile
from pathlib import Path


def raw_disk(path: Path, marker: bytes, size: int = 1 << 20) -> Path:
    """A raw disk of ``size`` bytes starting with ``marker`` (zeros after it)."""
    with open(path, "wb") as file:
        file.write(marker)
        file.truncate(size)
    return path


def ext4_disk(path: Path, files: dict[str, str], *, size_mb: int = 8, marker: bytes | None = None,
              source: Path | None = None) -> Path:
    """An ext4 file system holding ``files`` (or the folder ``source``), raw, or qcow2 when
    ``path`` ends in .qcow2. ``marker`` goes in the first 1 KiB, which ext4 leaves unused."""
    raw = path.with_suffix(".raw-ext4") if path.suffix == ".qcow2" else path
    with tempfile.TemporaryDirectory(prefix="disk-src-") as tmp:
        folder = source or Path(tmp)
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
        raw.unlink(missing_ok=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(folder), str(raw), f"{size_mb}M"],
                       check=True, capture_output=True)
    if marker is not None:
        with open(raw, "r+b") as file:
            file.write(marker)
    if raw != path:
        subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(path)], check=True)
        raw.unlink()
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def overlay_dirs() -> set[str]:
    """The copy-on-write overlay folders in the temporary folder (none may outlive a start)."""
    return {p.name for p in Path(tempfile.gettempdir()).glob("capsa-overlay-*")}
