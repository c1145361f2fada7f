"""DiskImage: a file the guest sees as a virtio block device (capsa's ``DiskImage``).

Disks are ``vda``, ``vdb``, ... in the order QEMU is given them: the root disk (a sandbox's image
or ``with_root_disk``) first, then ``.disk()``s in the order added, then a sandbox's scratch disk.
A disk is checked before QEMU starts (:meth:`DiskImage.check`): it must exist, be a regular file,
be in the format it is declared as (a qcow2 file opened raw would hand the guest its metadata;
a raw file opened qcow2 would be parsed as one), and have a usable size. A qcow2 with a backing
file is refused: QEMU would open that other path on the image's say-so.

A writable disk belongs to one VM; a pool refuses one unless it is ``copy_on_write()``: each VM
then writes to its own qcow2 overlay over the unchanged image (:mod:`engine.microvm.overlay`).
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import ConfigError

__all__ = ["DiskImage", "ImageFormat", "DISK_FORMATS", "QCOW2_MAGIC"]

QCOW2_MAGIC = b"QFI\xfb"
SECTOR = 512


class ImageFormat(enum.Enum):
    """A disk image's format (capsa's ``ImageFormat``): raw, or qcow2 by the ``.qcow2`` extension."""

    Raw = "raw"
    Qcow2 = "qcow2"

    @classmethod
    def of(cls, value: ImageFormat | str) -> ImageFormat:
        if isinstance(value, ImageFormat):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ConfigError(f"disk format {value!r} is not one of {', '.join(DISK_FORMATS)}") from None

    @classmethod
    def from_path(cls, path: Path) -> ImageFormat:
        return cls.Qcow2 if path.suffix.lower() == ".qcow2" else cls.Raw


DISK_FORMATS = tuple(kind.value for kind in ImageFormat)


@dataclass(frozen=True)
class DiskImage:
    """A disk image file; the format comes from the extension (``.qcow2``, else raw) unless named.

    ``read_only`` disks are opened ``readonly=on`` at every block layer: many VMs may share one,
    and a guest cannot change a byte of it (a remount or a raw write gets an I/O error).
    ``copy_on_write`` disks are writable, but each VM's writes go to its own throwaway overlay.
    """

    path: Path
    read_only: bool = False
    format: str = "raw"
    copy_on_write: bool = False

    def __init__(
        self,
        path: str | Path,
        *,
        read_only: bool = False,
        format: ImageFormat | str | None = None,
        copy_on_write: bool = False,
    ) -> None:
        resolved = Path(path).expanduser()
        kind = ImageFormat.of(format) if format is not None else ImageFormat.from_path(resolved)
        object.__setattr__(self, "path", resolved)
        object.__setattr__(self, "read_only", read_only)
        object.__setattr__(self, "format", kind.value)
        object.__setattr__(self, "copy_on_write", copy_on_write and not read_only)

    @classmethod
    def with_format(cls, path: str | Path, format: ImageFormat | str) -> DiskImage:
        """capsa's ``DiskImage::with_format``: the format named, whatever the extension."""
        return cls(path, format=format)

    @property
    def image_format(self) -> ImageFormat:
        return ImageFormat(self.format)

    @property
    def shared_write(self) -> bool:
        """Writable in place: the guest writes the file itself (one VM at a time)."""
        return not self.read_only and not self.copy_on_write

    def as_read_only(self) -> DiskImage:
        """This disk, opened read-only (capsa's ``.read_only()``; ``read_only`` is the field)."""
        return replace(self, read_only=True, copy_on_write=False)

    def as_copy_on_write(self) -> DiskImage:
        """This disk, writable through a per-VM qcow2 overlay deleted with the VM (the file stays
        as it is): what a pool needs for a writable disk."""
        return replace(self, read_only=False, copy_on_write=True)

    def virtual_size(self) -> int:
        """The size the guest sees, in bytes (reads the qcow2 header); ConfigError if unreadable."""
        self.check()
        if self.image_format is ImageFormat.Raw:
            return self.path.stat().st_size
        return _qcow2_header(self.path)[1]

    def check(self) -> None:
        """ConfigError naming the path unless it is an existing file of its declared format and a
        usable size (what QEMU would otherwise report obscurely, or accept unsafely)."""
        path = self.path
        if not path.exists():
            raise ConfigError(f"disk image not found: {path}")
        if not path.is_file():
            raise ConfigError(f"disk image is not a file: {path}")
        try:
            with open(path, "rb") as file:
                head = file.read(4)
            size = path.stat().st_size
        except OSError as err:
            raise ConfigError(f"disk image {path} cannot be read: {err.strerror}") from err
        is_qcow2 = head == QCOW2_MAGIC
        if self.image_format is ImageFormat.Raw:
            if is_qcow2:
                raise ConfigError(
                    f"disk image {path} is a qcow2 image but is declared raw: name it .qcow2 or use "
                    "DiskImage.with_format(path, ImageFormat.Qcow2)")
            if size == 0 or size % SECTOR:
                raise ConfigError(
                    f"disk image {path} is {size} bytes: a raw disk must be a non-zero multiple of {SECTOR} bytes")
            return
        if not is_qcow2:
            raise ConfigError(f"disk image {path} is declared qcow2 but is not a qcow2 image (no QFI header)")
        backing, virtual = _qcow2_header(path)
        if backing:
            raise ConfigError(
                f"disk image {path} has a backing file ({backing}): QEMU would open that path too; "
                "flatten it first (qemu-img convert -O qcow2)")
        if virtual == 0 or virtual % SECTOR:
            raise ConfigError(f"disk image {path} has a virtual size of {virtual} bytes: not a usable disk")


def _qcow2_header(path: Path) -> tuple[str, int]:
    """(backing file name or "", virtual size) from a qcow2 header."""
    try:
        with open(path, "rb") as file:
            header = file.read(32)
            if len(header) < 32:
                raise ConfigError(f"disk image {path} has a truncated qcow2 header")
            _magic, _version, backing_offset, backing_size, _bits, virtual = struct.unpack(">IIQIIQ", header)
            backing = ""
            if backing_offset and backing_size:
                file.seek(backing_offset)
                backing = file.read(min(backing_size, 1023)).decode("utf-8", "replace")
    except OSError as err:
        raise ConfigError(f"disk image {path} cannot be read: {err.strerror}") from err
    return backing, virtual
