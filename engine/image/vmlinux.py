"""Get the uncompressed ELF ``vmlinux`` out of a bzImage and check it can boot through PVH.

QEMU boots an ELF kernel with a ``XEN_ELFNOTE_PHYS32_ENTRY`` note directly at its 32-bit PVH
entry point: no real-mode setup and no in-guest decompression, which under software emulation
is the faster and more consistent boot. The bzImage header says where its compressed payload
is; the payload's magic says how it was compressed.
"""
from __future__ import annotations

import bz2
import lzma
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable

from engine.image import elf
from engine.errors import ImageError

XEN_ELFNOTE_PHYS32_ENTRY = 18

_HDR_MAGIC = b"HdrS"
# Protocol 2.08 added payload_offset/payload_length to the setup header.
_MIN_PROTOCOL = 0x0208


def extract_vmlinux(bzimage: bytes) -> bytes:
    """Decompress the kernel payload of ``bzimage`` and return the ELF ``vmlinux``.

    Raises ImageError if the header is not a bzImage, the compression is unknown, or the
    tool it needs (``lz4``/``zstd``) is not installed.
    """
    payload = _payload(bzimage)
    kernel = _decompress(payload)
    if not elf.is_elf64_le(kernel):
        raise ImageError("the bzImage payload did not decompress to a 64-bit ELF vmlinux")
    if not elf.is_complete(kernel):
        raise ImageError("the vmlinux extracted from the bzImage is truncated (decompression stopped early)")
    return kernel


def has_pvh_entry(vmlinux: bytes) -> bool:
    """True if the ELF carries the Xen PHYS32_ENTRY note QEMU needs to boot it via PVH."""
    return any(
        note.name == "Xen" and note.type == XEN_ELFNOTE_PHYS32_ENTRY for note in elf.notes(vmlinux)
    )


def _payload(bzimage: bytes) -> bytes:
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != _HDR_MAGIC:
        raise ImageError("not a bzImage: no 'HdrS' setup header at offset 0x202")
    protocol, = struct.unpack_from("<H", bzimage, 0x206)
    if protocol < _MIN_PROTOCOL:
        raise ImageError(f"bzImage boot protocol {protocol:#x} is too old to locate its payload")
    setup_sects = bzimage[0x1F1] or 4  # 0 means 4 for historical reasons
    payload_offset, payload_length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sects + 1) * 512 + payload_offset
    payload = bzimage[start : start + payload_length]
    if len(payload) != payload_length:
        raise ImageError("bzImage payload runs past the end of the file (truncated kernel?)")
    return payload


def _decompress(payload: bytes) -> bytes:
    for magic, decoder in _DECODERS:
        if payload.startswith(magic):
            return decoder(payload)
    raise ImageError(f"unknown kernel compression (payload starts with {payload[:6].hex()})")


def _gunzip(payload: bytes) -> bytes:
    # The kernel appends the uncompressed size after the stream; decompressobj ignores it.
    return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(payload)


def _unxz(payload: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(payload)


def _unlzma(payload: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(payload)


def _bunzip2(payload: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(payload)


def _with_tool(tool: str, args: list[str]) -> Callable[[bytes], bytes]:
    def run(payload: bytes) -> bytes:
        path = shutil.which(tool)
        if path is None:
            raise ImageError(f"this kernel is {tool}-compressed; install the '{tool}' package to extract vmlinux")
        # The trailing size word confuses some tools' frame parsing, but they still emit all
        # data before reporting it, so judge by the output rather than the exit status alone.
        done = subprocess.run([path, *args], input=payload, capture_output=True, check=False)
        if not done.stdout:
            tail = done.stderr.decode(errors="replace")[-500:]
            raise ImageError(f"{tool} could not decompress the kernel payload: {tail}")
        return done.stdout

    return run


_DECODERS: list[tuple[bytes, Callable[[bytes], bytes]]] = [
    (b"\x1f\x8b", _gunzip),
    (b"\xfd7zXZ\x00", _unxz),
    (b"\x5d\x00\x00", _unlzma),
    (b"BZh", _bunzip2),
    (b"\x02\x21\x4c\x18", _with_tool("lz4", ["-dc"])),
    (b"\x28\xb5\x2f\xfd", _with_tool("zstd", ["-dc", "-q"])),
]

__all__ = ["XEN_ELFNOTE_PHYS32_ENTRY", "extract_vmlinux", "has_pvh_entry"]
