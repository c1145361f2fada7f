"""engine.image.cpio: archives we write must read back identically with busybox cpio."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from engine.image import cpio
from engine.errors import ImageError


def _busybox() -> str:
    path = shutil.which("busybox")
    assert path, "these tests read archives back with busybox cpio: apt-get install busybox-static"
    return path


def _entries() -> list[cpio.CpioEntry]:
    return cpio.with_parents(
        [
            cpio.file("etc/motd", b"hello\n", 0o644),
            cpio.file("bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
            cpio.file("secret/key", bytes(range(256)) * 3, 0o600),
            cpio.file("empty", b"", 0o640),
            cpio.file("odd/name-with-7-chars.x", b"abc", 0o644),  # exercises name padding
            cpio.symlink("bin/link", "tool"),
            cpio.symlink("abs", "/etc/motd"),
            cpio.directory("private", 0o700),
            cpio.directory("tmp", 0o1777),
        ]
    )


def _extract(archive: bytes, into: Path) -> None:
    into.mkdir()
    done = subprocess.run(
        [_busybox(), "cpio", "-i", "-d"], input=archive, cwd=into, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr.decode()


def test_listing_matches_entries_in_order() -> None:
    entries = _entries()
    listing = subprocess.run(
        [_busybox(), "cpio", "-t"], input=cpio.write_newc(entries), capture_output=True, check=True
    ).stdout.decode().split()
    assert listing == [entry.name for entry in entries]


def test_extracted_contents_modes_and_symlinks(tmp_path: Path) -> None:
    old_umask = os.umask(0)  # so extracted modes show exactly what the archive says
    try:
        _extract(cpio.write_newc(_entries()), tmp_path / "out")
    finally:
        os.umask(old_umask)
    out = tmp_path / "out"
    for entry in _entries():
        path = out / entry.name
        info = path.lstat()
        assert stat.S_IFMT(info.st_mode) == stat.S_IFMT(entry.mode), entry.name
        if stat.S_ISLNK(entry.mode):
            assert os.readlink(path) == entry.data.decode()
            continue
        assert stat.S_IMODE(info.st_mode) == stat.S_IMODE(entry.mode), entry.name
        if stat.S_ISREG(entry.mode):
            assert path.read_bytes() == entry.data
    assert (out / "bin" / "link").read_bytes() == b"#!/bin/sh\necho tool\n"


def test_parents_are_added_once_and_before_children() -> None:
    names = [entry.name for entry in cpio.with_parents([cpio.file("a/b/c", b"x"), cpio.file("a/d", b"y")])]
    assert names == ["a", "a/b", "a/b/c", "a/d"]


def test_explicit_directory_keeps_its_mode_when_listed_first() -> None:
    entries = cpio.with_parents([cpio.directory("root", 0o700), cpio.file("root/.profile", b"")])
    assert [(e.name, stat.S_IMODE(e.mode)) for e in entries] == [("root", 0o700), ("root/.profile", 0o644)]


def test_layout_is_newc_aligned_and_ends_with_trailer() -> None:
    archive = cpio.write_newc([cpio.file("f", b"12345")])
    assert archive.startswith(b"070701")
    assert len(archive) % 4 == 0
    assert b"TRAILER!!!\0" in archive[-(110 + 12) :]
    # 110-byte header + "f\0" padded to 112, then 5 data bytes padded to 8.
    assert archive[112:120] == b"12345\0\0\0"


def test_device_node_header_fields() -> None:
    archive = cpio.write_newc([cpio.char_device("dev/console", 5, 1)])
    fields = [int(archive[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
    mode, rdev_major, rdev_minor = fields[1], fields[9], fields[10]
    assert stat.S_ISCHR(mode) and (rdev_major, rdev_minor) == (5, 1)


def test_output_is_deterministic() -> None:
    assert cpio.write_newc(_entries()) == cpio.write_newc(_entries())


@pytest.mark.parametrize("name", ["", "/", "../etc/passwd", "a/../../b"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(ImageError, match="invalid cpio member name"):
        cpio.file(name, b"")
