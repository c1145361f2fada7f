"""A small writer for the cpio "newc" format, the format Linux unpacks as an initramfs.

Sans-IO: callers pass :class:`CpioEntry` values in and get bytes out, so the same code serves
tests, in-memory images and streaming to a file. Only what an initramfs needs is supported:
directories, regular files, symlinks and device nodes; no hard links.
"""
from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from engine.errors import ImageError

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"
# newc stores every field as 8 hex digits, so nothing may exceed 32 bits.
_MAX_FIELD = 0xFFFFFFFF


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. ``name`` is relative ("bin/sh"); ``mode`` includes the file type bits."""

    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    rdev_major: int = 0
    rdev_minor: int = 0


def directory(name: str, perm: int = 0o755, *, uid: int = 0, gid: int = 0) -> CpioEntry:
    """A directory entry."""
    return CpioEntry(_clean(name), stat.S_IFDIR | perm, uid=uid, gid=gid)


def file(name: str, data: bytes, perm: int = 0o644, *, uid: int = 0, gid: int = 0) -> CpioEntry:
    """A regular file entry holding ``data``."""
    return CpioEntry(_clean(name), stat.S_IFREG | perm, data, uid=uid, gid=gid)


def symlink(name: str, target: str) -> CpioEntry:
    """A symbolic link; newc stores the target as the entry's data."""
    return CpioEntry(_clean(name), stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> CpioEntry:
    """A character device node (e.g. dev/console 5:1)."""
    return CpioEntry(_clean(name), stat.S_IFCHR | perm, rdev_major=major, rdev_minor=minor)


def with_parents(entries: Iterable[CpioEntry]) -> list[CpioEntry]:
    """Insert missing parent directories before the entries that need them.

    The kernel's initramfs unpacker does not create parents, so a file whose directory was
    not listed first would be silently dropped.
    """
    seen: set[str] = set()
    result: list[CpioEntry] = []
    for entry in entries:
        parts = entry.name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in seen:
                seen.add(parent)
                result.append(directory(parent))
        if entry.name in seen and stat.S_ISDIR(entry.mode):
            continue
        seen.add(entry.name)
        result.append(entry)
    return result


def iter_newc(entries: Iterable[CpioEntry]) -> Iterator[bytes]:
    """Yield the archive in chunks: one header+name+data block per entry, then the trailer."""
    ino = 0
    for entry in entries:
        ino += 1
        yield _member(entry, ino)
    yield _member(CpioEntry(_TRAILER, 0), 0)


def write_newc(entries: Iterable[CpioEntry]) -> bytes:
    """The whole archive as bytes."""
    return b"".join(iter_newc(entries))


def _member(entry: CpioEntry, ino: int) -> bytes:
    name = entry.name.encode() + b"\0"
    fields = (
        ino,
        entry.mode,
        entry.uid,
        entry.gid,
        2 if stat.S_ISDIR(entry.mode) else 1,  # nlink: "." plus the parent's entry for dirs
        entry.mtime,
        len(entry.data),
        0,  # devmajor/devminor of the filesystem the file came from: meaningless here
        0,
        entry.rdev_major,
        entry.rdev_minor,
        len(name),
        0,  # checksum, only used by the "070702" variant
    )
    for value in fields:
        if not 0 <= value <= _MAX_FIELD:
            raise ImageError(f"cpio entry {entry.name!r}: field value {value} does not fit newc's 32 bits")
    header = _MAGIC + b"".join(b"%08X" % value for value in fields)
    head = header + name
    return head + _pad(len(head)) + entry.data + _pad(len(entry.data))


def _pad(length: int) -> bytes:
    # newc aligns both the name (after the 110-byte header) and the data to 4 bytes.
    return b"\0" * (-length % 4)


def _clean(name: str) -> str:
    cleaned = name.strip("/")
    if not cleaned or ".." in cleaned.split("/"):
        raise ImageError(f"invalid cpio member name {name!r}: must be a relative path without '..'")
    return cleaned
