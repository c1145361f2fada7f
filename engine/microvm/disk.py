"""DiskImage: a file the guest sees as a virtio block device (capsa's ``DiskImage``)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import ConfigError

DISK_FORMATS = ("raw", "qcow2")


@dataclass(frozen=True)
class DiskImage:
    """A disk image file; the format comes from the extension (``.qcow2``, else raw) unless named.

    ``read_only`` disks are opened ``readonly=on``: many VMs may share one, and a guest cannot
    change a byte of it.
    """

    path: Path
    read_only: bool = False
    format: str = "raw"

    def __init__(self, path: str | Path, *, read_only: bool = False, format: str | None = None) -> None:
        resolved = Path(path).expanduser()
        object.__setattr__(self, "path", resolved)
        object.__setattr__(self, "read_only", read_only)
        object.__setattr__(self, "format", format or ("qcow2" if resolved.suffix == ".qcow2" else "raw"))

    @classmethod
    def with_format(cls, path: str | Path, format: str) -> DiskImage:
        return cls(path, format=format)

    def as_read_only(self) -> DiskImage:
        """This disk, opened read-only (capsa's ``.read_only()``)."""
        return replace(self, read_only=True)

    def check(self) -> None:
        """ConfigError naming the path unless it is an existing file in a known format."""
        if self.format not in DISK_FORMATS:
            raise ConfigError(f"disk {self.path}: format {self.format!r} is not one of {', '.join(DISK_FORMATS)}")
        if not self.path.exists():
            raise ConfigError(f"disk image not found: {self.path}")
        if not self.path.is_file():
            raise ConfigError(f"disk image is not a file: {self.path}")
