"""Just enough ELF64 reading for the guest image builder: notes, sections and ``.modinfo``.

Used to check that an extracted ``vmlinux`` carries the PVH entry note and to read kernel
module dependencies without ``modinfo``/``depmod`` (the kernel package ships no modules.dep;
depmod runs at install time, and we never install it).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from engine.errors import ImageError

ELF_MAGIC = b"\x7fELF"
_PT_NOTE = 4
_SHT_NOTE = 7


@dataclass(frozen=True)
class ElfNote:
    """One entry of a note segment or section."""

    name: str
    type: int
    desc: bytes


@dataclass(frozen=True)
class _Section:
    name_offset: int
    type: int
    offset: int
    size: int


def is_elf64_le(data: bytes) -> bool:
    """True for a little-endian 64-bit ELF file (what x86-64 kernels and modules are)."""
    return data[:4] == ELF_MAGIC and len(data) >= 64 and data[4] == 2 and data[5] == 1


def is_complete(data: bytes) -> bool:
    """True if every segment and the section header table lie inside ``data`` (not truncated)."""
    _require_elf(data)
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    ends = [shoff + shentsize * shnum, phoff + phentsize * phnum]
    if ends[-1] <= len(data):
        for i in range(phnum):
            p_offset, = struct.unpack_from("<Q", data, phoff + i * phentsize + 8)
            p_filesz, = struct.unpack_from("<Q", data, phoff + i * phentsize + 32)
            ends.append(p_offset + p_filesz)
    return max(ends) <= len(data)


def notes(data: bytes) -> list[ElfNote]:
    """All notes from PT_NOTE program headers, or from SHT_NOTE sections if there are none."""
    _require_elf(data)
    regions = _note_segments(data) or [(s.offset, s.size) for s in _sections(data) if s.type == _SHT_NOTE]
    found: list[ElfNote] = []
    for offset, size in regions:
        found.extend(_parse_notes(data[offset : offset + size]))
    return found


def section(data: bytes, name: str) -> bytes | None:
    """The contents of the section called ``name``, or None if there is no such section."""
    _require_elf(data)
    sections = _sections(data)
    shstrndx = struct.unpack_from("<H", data, 0x3E)[0]
    if shstrndx >= len(sections):
        return None
    strtab = sections[shstrndx]
    names = data[strtab.offset : strtab.offset + strtab.size]
    wanted = name.encode()
    for sec in sections:
        end = names.find(b"\0", sec.name_offset)
        if names[sec.name_offset : end] == wanted:
            return data[sec.offset : sec.offset + sec.size]
    return None


def modinfo(data: bytes) -> dict[str, list[str]]:
    """The ``key=value`` strings of a kernel module's ``.modinfo`` section, grouped by key."""
    raw = section(data, ".modinfo")
    if raw is None:
        raise ImageError("kernel module has no .modinfo section (not a Linux .ko file?)")
    info: dict[str, list[str]] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info.setdefault(key, []).append(value)
    return info


def _require_elf(data: bytes) -> None:
    if not is_elf64_le(data):
        raise ImageError("not a little-endian 64-bit ELF file")


def _note_segments(data: bytes) -> list[tuple[int, int]]:
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    regions = []
    for i in range(phnum):
        base = phoff + i * phentsize
        p_type, = struct.unpack_from("<I", data, base)
        if p_type == _PT_NOTE:
            p_offset, = struct.unpack_from("<Q", data, base + 8)
            p_filesz, = struct.unpack_from("<Q", data, base + 32)
            regions.append((p_offset, p_filesz))
    return regions


def _sections(data: bytes) -> list[_Section]:
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    result = []
    for i in range(shnum):
        base = shoff + i * shentsize
        name_offset, sh_type = struct.unpack_from("<II", data, base)
        sh_offset, sh_size = struct.unpack_from("<QQ", data, base + 24)
        result.append(_Section(name_offset, sh_type, sh_offset, sh_size))
    return result


def _parse_notes(blob: bytes) -> list[ElfNote]:
    found = []
    pos = 0
    # Each note: namesz, descsz, type, then name and desc, each padded to 4 bytes.
    while pos + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, pos)
        pos += 12
        name = blob[pos : pos + namesz].rstrip(b"\0").decode(errors="replace")
        pos += _align4(namesz)
        desc = blob[pos : pos + descsz]
        pos += _align4(descsz)
        found.append(ElfNote(name, ntype, desc))
    return found


def _align4(n: int) -> int:
    return (n + 3) & ~3
