"""``capsa-reseed``: a tiny static x86-64 Linux program that makes the kernel reseed its CRNG.

Clones of one snapshot resume with the same kernel random state (this guest kernel has no
VM generation ID to notice the fork). Writing host entropy to ``/dev/urandom`` mixes it into
the input pool but, since Linux 5.18, does not rekey the generator that ``/dev/urandom`` and
``getrandom()`` read from until its next periodic reseed, up to a minute later; until then
two clones would hand out the same bytes. The ``RNDRESEEDCRNG`` ioctl reseeds at once, and
busybox has no applet that issues an arbitrary ioctl. The program is four system calls, so it is
assembled here (hand-encoded, 64 bytes of code) instead of needing a C toolchain and a static
libc on every host that builds the guest image:

    fd = open("/dev/urandom", O_WRONLY); r = ioctl(fd, RNDRESEEDCRNG); exit(-r)

Its exit status is 0 on success, else the errno (e.g. 1, EPERM, for a user without
CAP_SYS_ADMIN; 61, ENODATA, before the generator was first seeded).
"""
from __future__ import annotations

import struct

_BASE = 0x400000
_EHDR_SIZE = 64
_PHDR_SIZE = 56
_CODE_OFFSET = _EHDR_SIZE + _PHDR_SIZE

SYS_OPEN = 2
SYS_IOCTL = 16
SYS_EXIT = 60
O_WRONLY = 1
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)
PATH = b"/dev/urandom\x00"


def _code() -> bytes:
    def mov_eax(value: int) -> bytes:
        return b"\xb8" + struct.pack("<I", value)

    def mov_esi(value: int) -> bytes:
        return b"\xbe" + struct.pack("<I", value)

    syscall = b"\x0f\x05"
    xor_edx = b"\x31\xd2"
    mov_edi_eax = b"\x89\xc7"
    # fail: edi = -eax; exit(edi). Reached with eax = 0 (success) or -errno.
    tail = mov_edi_eax + b"\xf7\xdf" + mov_eax(SYS_EXIT) + syscall
    ioctl = mov_edi_eax + mov_eax(SYS_IOCTL) + mov_esi(RNDRESEEDCRNG) + xor_edx + syscall
    head_before_lea = mov_eax(SYS_OPEN)
    lea_len = 7
    after_lea = mov_esi(O_WRONLY) + xor_edx + syscall + b"\x85\xc0"  # test eax, eax
    js = b"\x78" + bytes([len(ioctl)])  # js fail: open failed, exit with its errno
    body_after_lea = after_lea + js + ioctl + tail
    # lea rdi, [rip + disp32]: disp counts from the end of the lea to the path after the code.
    disp = len(body_after_lea)
    lea = b"\x48\x8d\x3d" + struct.pack("<i", disp)
    assert len(lea) == lea_len
    return head_before_lea + lea + body_after_lea + PATH


def reseed_program() -> bytes:
    """The whole ELF executable (about 200 bytes)."""
    code = _code()
    size = _CODE_OFFSET + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, SysV
    ehdr = ident + struct.pack(
        "<HHIQQQIHHHHHH",
        2,  # ET_EXEC
        0x3E,  # EM_X86_64
        1,
        _BASE + _CODE_OFFSET,  # entry
        _EHDR_SIZE,  # program headers right after this header
        0,  # no section headers
        0,
        _EHDR_SIZE,
        _PHDR_SIZE,
        1,
        0,
        0,
        0,
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, _BASE, _BASE, size, size, 0x1000)  # PT_LOAD, R+X
    assert len(ehdr) == _EHDR_SIZE and len(phdr) == _PHDR_SIZE
    return ehdr + phdr + code
