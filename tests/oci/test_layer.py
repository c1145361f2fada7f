"""Unpacking one layer tar into overlayfs form (engine/oci/layer.py), on tars built here: what
is kept (owners, modes, links, devices, xattrs), how whiteouts and opaque folders come out,
the two digests, and the hostile layers that must be refused without writing outside ``dest``.
Runs as root, like the engine's unpacking."""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.errors import ImageError
from engine.oci.layer import LayerError, UnpackedLayer, unpack_layer

GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
PLAIN = "application/vnd.oci.image.layer.v1.tar"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MTIME = 1_700_000_000

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacking a layer keeps owners and device nodes: needs root")


@dataclass
class Entry:
    """One tar member to write."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    pax: dict[str, str] = field(default_factory=dict)
    devmajor: int = 0
    devminor: int = 0


def tar_bytes(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.type = entry.type
            info.mode, info.uid, info.gid, info.mtime = entry.mode, entry.uid, entry.gid, MTIME
            info.linkname = entry.linkname
            info.pax_headers = dict(entry.pax)
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            if entry.type == tarfile.REGTYPE:
                info.size = len(entry.data)
                archive.addfile(info, io.BytesIO(entry.data))
            else:
                archive.addfile(info)
    return buffer.getvalue()


def gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=1, mtime=0)


@dataclass
class Box:
    """``dest`` (where the layer goes) next to ``outside`` (a sentinel that must stay empty)."""

    root: Path
    dest: Path
    outside: Path

    def untouched(self) -> None:
        assert sorted(p.name for p in self.root.iterdir()) == ["dest", "outside"], "something was written next to dest"
        assert list(self.outside.iterdir()) == [], "something was written into the outside folder"


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    root = tmp_path / "box"
    dest, outside = root / "dest", root / "outside"
    dest.mkdir(parents=True)
    outside.mkdir()
    yield Box(root, dest, outside)


def unpack(data: bytes, dest: Path, media_type: str = GZIP) -> UnpackedLayer:
    blob = gz(data) if media_type in (GZIP, DOCKER_GZIP) else data
    return unpack_layer(io.BytesIO(blob), media_type, dest, where="test layer")


# -- what is kept

def test_regular_files_keep_content_owner_and_mode(box: Box) -> None:
    unpack(tar_bytes([
        Entry("etc", tarfile.DIRTYPE, mode=0o755),
        Entry("etc/conf", data=b"key=value\n", mode=0o640, uid=1000, gid=1001),
        Entry("usr/bin/su", data=b"#!/bin/sh\n", mode=0o4755, uid=0, gid=0),
        Entry("usr/bin/wall", data=b"#!/bin/sh\n", mode=0o2755, uid=0, gid=5),
        Entry("usr/bin/sticky", data=b"", mode=0o1777),
    ]), box.dest)
    conf = os.lstat(box.dest / "etc/conf")
    assert (box.dest / "etc/conf").read_bytes() == b"key=value\n"
    assert (conf.st_uid, conf.st_gid, stat.S_IMODE(conf.st_mode)) == (1000, 1001, 0o640)
    assert conf.st_mtime == MTIME
    assert stat.S_IMODE(os.lstat(box.dest / "usr/bin/su").st_mode) == 0o4755  # setuid kept after the chown
    wall = os.lstat(box.dest / "usr/bin/wall")
    assert (stat.S_IMODE(wall.st_mode), wall.st_gid) == (0o2755, 5)
    assert stat.S_IMODE(os.lstat(box.dest / "usr/bin/sticky").st_mode) == 0o1777


def test_folders_get_their_mode_owner_and_mtime_even_when_read_only(box: Box) -> None:
    unpack(tar_bytes([
        Entry("ro", tarfile.DIRTYPE, mode=0o555, uid=7, gid=8),
        Entry("ro/inside", data=b"written before the folder became read-only"),
    ]), box.dest)
    folder = os.lstat(box.dest / "ro")
    assert (stat.S_IMODE(folder.st_mode), folder.st_uid, folder.st_gid) == (0o555, 7, 8)
    assert folder.st_mtime == MTIME
    assert (box.dest / "ro/inside").read_bytes().startswith(b"written")


def test_folders_named_only_through_their_contents_are_made(box: Box) -> None:
    unpack(tar_bytes([Entry("a/b/c/file", data=b"deep")]), box.dest)
    assert (box.dest / "a/b/c/file").read_bytes() == b"deep"
    assert stat.S_IMODE(os.lstat(box.dest).st_mode) == 0o755  # no ./ entry: an ordinary root folder


def test_symlinks_are_kept_verbatim_and_never_followed(box: Box) -> None:
    unpack(tar_bytes([
        Entry("bin", tarfile.SYMTYPE, linkname="usr/bin"),
        Entry("etc/localtime", tarfile.SYMTYPE, linkname="/usr/share/zoneinfo/Etc/UTC", uid=3, gid=4),
        Entry("host-passwd", tarfile.SYMTYPE, linkname="/etc/passwd"),
        Entry("dangling", tarfile.SYMTYPE, linkname="../../nowhere"),
    ]), box.dest)
    assert os.readlink(box.dest / "bin") == "usr/bin"
    assert os.readlink(box.dest / "etc/localtime") == "/usr/share/zoneinfo/Etc/UTC"
    assert os.readlink(box.dest / "host-passwd") == "/etc/passwd"
    assert os.readlink(box.dest / "dangling") == "../../nowhere"
    link = os.lstat(box.dest / "etc/localtime")
    assert stat.S_ISLNK(link.st_mode) and (link.st_uid, link.st_gid) == (3, 4)
    box.untouched()


def test_hard_links_share_the_inode(box: Box) -> None:
    unpack(tar_bytes([
        Entry("usr/bin/python3.11", data=b"\x7fELF...", mode=0o755),
        Entry("usr/bin/python3", tarfile.LNKTYPE, linkname="usr/bin/python3.11"),
        Entry("usr/bin/python", tarfile.LNKTYPE, linkname="/usr/bin/python3.11"),  # absolute: inside the layer
    ]), box.dest)
    original = os.lstat(box.dest / "usr/bin/python3.11")
    for name in ("usr/bin/python3", "usr/bin/python"):
        assert os.lstat(box.dest / name).st_ino == original.st_ino
    assert original.st_nlink == 3


def test_fifo_and_device_nodes(box: Box) -> None:
    unpack(tar_bytes([
        Entry("run/queue", tarfile.FIFOTYPE, mode=0o620, uid=11),
        Entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        Entry("dev/loop9", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=9),
    ]), box.dest)
    fifo = os.lstat(box.dest / "run/queue")
    assert stat.S_ISFIFO(fifo.st_mode) and fifo.st_uid == 11 and fifo.st_mtime == MTIME
    null = os.lstat(box.dest / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    loop = os.lstat(box.dest / "dev/loop9")
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 9)


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The umask a shell usually gives the CLI (pinned, so the outcome does not depend on the runner's)."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_fifo_and_device_node_modes_are_the_layers_not_the_umasks(box: Box, umask_022: None) -> None:
    unpack(tar_bytes([
        Entry("run/queue", tarfile.FIFOTYPE, mode=0o620),
        Entry("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
    ]), box.dest)
    assert stat.S_IMODE(os.lstat(box.dest / "run/queue").st_mode) == 0o620
    assert stat.S_IMODE(os.lstat(box.dest / "dev/null").st_mode) == 0o666


def test_file_and_folder_modes_are_the_layers_not_the_umasks(box: Box, umask_022: None) -> None:
    unpack(tar_bytes([Entry("shared", tarfile.DIRTYPE, mode=0o777), Entry("shared/w", data=b"", mode=0o666)]), box.dest)
    assert stat.S_IMODE(os.lstat(box.dest / "shared").st_mode) == 0o777
    assert stat.S_IMODE(os.lstat(box.dest / "shared/w").st_mode) == 0o666


def test_whiteout_becomes_a_0_0_character_device(box: Box) -> None:
    unpack(tar_bytes([Entry("etc", tarfile.DIRTYPE, mode=0o755), Entry("etc/.wh.issue", data=b""),
                      Entry(".wh.tmp", data=b"")]), box.dest)
    for name in ("etc/issue", "tmp"):
        node = os.lstat(box.dest / name)
        assert stat.S_ISCHR(node.st_mode), name
        assert node.st_rdev == os.makedev(0, 0), name
    assert not (box.dest / "etc/.wh.issue").exists() and not (box.dest / ".wh.tmp").exists()


def test_whiteout_replaces_an_earlier_file_of_the_same_name(box: Box) -> None:
    unpack(tar_bytes([Entry("gone", data=b"first"), Entry(".wh.gone", data=b"")]), box.dest)
    assert stat.S_ISCHR(os.lstat(box.dest / "gone").st_mode)


def test_opaque_marker_becomes_the_overlay_xattr(box: Box) -> None:
    unpack(tar_bytes([
        Entry("data", tarfile.DIRTYPE, mode=0o750),
        Entry("data/.wh..wh..opq", data=b""),
        Entry("data/new", data=b"only me"),
        Entry("plain", tarfile.DIRTYPE, mode=0o755),
    ]), box.dest)
    assert os.getxattr(box.dest / "data", "trusted.overlay.opaque") == b"y"
    assert not (box.dest / "data/.wh..wh..opq").exists()
    assert os.listdir(box.dest / "data") == ["new"]
    assert stat.S_IMODE(os.lstat(box.dest / "data").st_mode) == 0o750
    with pytest.raises(OSError) as missing:
        os.getxattr(box.dest / "plain", "trusted.overlay.opaque")
    assert missing.value.errno == errno.ENODATA


def test_pax_xattr_is_applied(box: Box) -> None:
    unpack(tar_bytes([
        Entry("tagged", data=b"x", pax={"SCHILY.xattr.user.test": "hello"}),
        Entry("folder", tarfile.DIRTYPE, mode=0o755, pax={"SCHILY.xattr.user.dir": "d"}),
    ]), box.dest)
    assert os.getxattr(box.dest / "tagged", "user.test") == b"hello"
    assert os.getxattr(box.dest / "folder", "user.dir") == b"d"


def test_overlay_xattrs_from_the_layer_are_ignored(box: Box) -> None:
    unpack(tar_bytes([
        Entry("sneaky", tarfile.DIRTYPE, mode=0o755, pax={"SCHILY.xattr.trusted.overlay.opaque": "y"}),
        Entry("file", data=b"x", pax={"SCHILY.xattr.trusted.overlay.redirect": "/etc",
                                       "SCHILY.xattr.user.kept": "1"}),
    ]), box.dest)
    for path, name in ((box.dest / "sneaky", "trusted.overlay.opaque"), (box.dest / "file", "trusted.overlay.redirect")):
        with pytest.raises(OSError) as missing:
            os.getxattr(path, name)
        assert missing.value.errno == errno.ENODATA
    assert os.getxattr(box.dest / "file", "user.kept") == b"1"  # the rest of the header still counts


def test_a_later_entry_replaces_an_earlier_one(box: Box) -> None:
    unpack(tar_bytes([Entry("f", data=b"old"), Entry("f", data=b"new", mode=0o600),
                      Entry("l", tarfile.SYMTYPE, linkname="a"), Entry("l", tarfile.SYMTYPE, linkname="b")]), box.dest)
    assert (box.dest / "f").read_bytes() == b"new"
    assert os.readlink(box.dest / "l") == "b"


@pytest.mark.parametrize("media_type", [GZIP, DOCKER_GZIP])
def test_gzip_digests_are_of_the_compressed_and_uncompressed_bytes(box: Box, media_type: str) -> None:
    raw = tar_bytes([Entry("a", data=os.urandom(3000)), Entry("b", tarfile.DIRTYPE, mode=0o755)])
    blob = gz(raw)
    result = unpack_layer(io.BytesIO(blob), media_type, box.dest, where="test layer")
    assert result.blob_digest == "sha256:" + hashlib.sha256(blob).hexdigest()
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.blob_digest != result.diff_id
    assert result.size == len(raw)
    assert result.entries == 2


def test_plain_tar_digests_are_both_of_the_tar(box: Box) -> None:
    raw = tar_bytes([Entry("a", data=b"plain")])
    result = unpack(raw, box.dest, PLAIN)
    assert result.blob_digest == result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.size == len(raw)
    assert (box.dest / "a").read_bytes() == b"plain"


def test_trailing_padding_after_the_tar_end_counts_in_the_diff_id(box: Box) -> None:
    raw = tar_bytes([Entry("a", data=b"x")]) + b"\0" * 10240  # extra zero blocks after the end marker
    result = unpack(raw, box.dest)
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()


# -- hostile layers: refused, nothing written outside dest

def test_dotdot_entry_is_refused(box: Box) -> None:
    for name in ("../escape", "../outside/escape", "a/../../escape"):
        with pytest.raises(LayerError, match="'..'"):
            unpack(tar_bytes([Entry(name, data=b"pwned")]), box.dest)
        box.untouched()


def test_absolute_name_lands_inside_dest(box: Box, tmp_path: Path) -> None:
    target = tmp_path / "absolute-target"
    unpack(tar_bytes([Entry(str(target), data=b"inside"), Entry("/etc/x", data=b"x")]), box.dest)
    assert (box.dest / "etc/x").read_bytes() == b"x"
    assert (box.dest / str(target).lstrip("/")).read_bytes() == b"inside"
    assert not target.exists()
    box.untouched()


def test_write_through_a_symlink_to_an_absolute_folder_is_refused(box: Box) -> None:
    with pytest.raises(LayerError, match="'link/pwned'"):
        unpack(tar_bytes([Entry("link", tarfile.SYMTYPE, linkname=str(box.outside)),
                          Entry("link/pwned", data=b"pwned")]), box.dest)
    assert not (box.outside / "pwned").exists()
    box.untouched()


def test_write_through_a_relative_symlink_is_refused(box: Box) -> None:
    with pytest.raises(LayerError, match="not a folder"):
        unpack(tar_bytes([Entry("up", tarfile.SYMTYPE, linkname="../outside"),
                          Entry("up/pwned", tarfile.SYMTYPE, linkname="/etc/shadow")]), box.dest)
    box.untouched()


def test_folder_made_through_a_symlink_is_refused(box: Box) -> None:
    with pytest.raises(LayerError):
        unpack(tar_bytes([Entry("link", tarfile.SYMTYPE, linkname=str(box.outside)),
                          Entry("link/sub/deeper", data=b"pwned")]), box.dest)
    box.untouched()


def test_a_file_replacing_a_symlink_does_not_write_through_it(box: Box) -> None:
    victim = box.outside / "victim"
    unpack(tar_bytes([Entry("link", tarfile.SYMTYPE, linkname=str(victim)),
                      Entry("link", data=b"replaced the link, not its target")]), box.dest)
    assert not os.path.islink(box.dest / "link")
    assert (box.dest / "link").read_bytes().startswith(b"replaced")
    box.untouched()


def test_hard_link_climbing_out_is_refused(box: Box) -> None:
    links_before = os.lstat("/etc/passwd").st_nlink
    with pytest.raises(LayerError, match="'..'"):
        unpack(tar_bytes([Entry("passwd", tarfile.LNKTYPE, linkname="../../etc/passwd")]), box.dest)
    assert os.lstat("/etc/passwd").st_nlink == links_before
    assert not (box.dest / "passwd").exists()
    box.untouched()


def test_hard_link_to_an_absolute_host_path_stays_in_the_layer(box: Box) -> None:
    links_before = os.lstat("/etc/passwd").st_nlink
    with pytest.raises(LayerError, match="has not unpacked"):
        unpack(tar_bytes([Entry("passwd", tarfile.LNKTYPE, linkname="/etc/passwd")]), box.dest)
    assert os.lstat("/etc/passwd").st_nlink == links_before
    box.untouched()


def test_hard_link_to_a_file_not_in_the_layer_is_refused(box: Box) -> None:
    with pytest.raises(LayerError, match="'missing'"):
        unpack(tar_bytes([Entry("link", tarfile.LNKTYPE, linkname="missing")]), box.dest)
    assert not (box.dest / "link").exists()
    box.untouched()


def test_hard_link_through_a_symlink_is_refused(box: Box) -> None:
    (box.outside / "secret").write_text("host secret")
    try:
        with pytest.raises(LayerError):
            unpack(tar_bytes([Entry("out", tarfile.SYMTYPE, linkname=str(box.outside)),
                              Entry("stolen", tarfile.LNKTYPE, linkname="out/secret")]), box.dest)
        assert os.lstat(box.outside / "secret").st_nlink == 1
    finally:
        (box.outside / "secret").unlink()
    box.untouched()


def test_hard_link_to_a_symlink_is_refused(box: Box) -> None:
    with pytest.raises(LayerError, match="not a file"):
        unpack(tar_bytes([Entry("sym", tarfile.SYMTYPE, linkname="/etc/passwd"),
                          Entry("hard", tarfile.LNKTYPE, linkname="sym")]), box.dest)
    box.untouched()


def test_zstd_layer_is_refused_saying_zstd(box: Box) -> None:
    with pytest.raises(LayerError, match="zstd"):
        unpack_layer(io.BytesIO(b"\x28\xb5\x2f\xfd" + b"\0" * 64), "application/vnd.oci.image.layer.v1.tar+zstd",
                     box.dest, where="test layer")
    assert list(box.dest.iterdir()) == []


def test_unknown_media_type_is_refused(box: Box) -> None:
    with pytest.raises(LayerError, match="application/vnd.example.blob") as caught:
        unpack_layer(io.BytesIO(gz(tar_bytes([Entry("a")]))), "application/vnd.example.blob", box.dest,
                     where="test layer")
    assert "test layer" in str(caught.value)
    assert list(box.dest.iterdir()) == []


@pytest.mark.parametrize("corrupt", ["not gzip", "bad deflate block", "truncated", "crc"])
def test_corrupt_gzip_is_refused(box: Box, corrupt: str) -> None:
    blob = gz(tar_bytes([Entry("a", data=os.urandom(20000)), Entry("b", data=b"b" * 20000)]))
    damaged = {
        "not gzip": b"this is not gzip data at all" * 10,
        "bad deflate block": blob[:10] + b"\xff" * 32 + blob[42:],  # reserved deflate block type
        "truncated": blob[: len(blob) // 2],
        "crc": blob[:-8] + bytes([blob[-8] ^ 0x01]) + blob[-7:],
    }[corrupt]
    with pytest.raises(LayerError, match="not a readable layer tar"):
        unpack_layer(io.BytesIO(damaged), GZIP, box.dest, where="test layer")
    box.untouched()


def test_a_plain_tar_declared_as_gzip_unpacks_by_its_bytes(box: Box) -> None:
    # skopeo's docker-archive source names its plain tar layers gzip: the bytes decide.
    raw = tar_bytes([Entry("a", data=b"x")])
    found = unpack_layer(io.BytesIO(raw), GZIP, box.dest, where="test layer")
    assert (box.dest / "a").read_bytes() == b"x"
    assert found.blob_digest == found.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_whiteout_of_a_folder_of_the_same_layer_is_refused(box: Box) -> None:
    with pytest.raises(LayerError, match="replaces a folder"):
        unpack(tar_bytes([Entry("d", tarfile.DIRTYPE, mode=0o755), Entry(".wh.d", data=b"")]), box.dest)


@pytest.mark.parametrize("name", ["etc/.wh.", ".wh."])
def test_whiteout_naming_nothing_is_refused(box: Box, name: str) -> None:
    with pytest.raises(LayerError):
        unpack(tar_bytes([Entry(name, data=b"")]), box.dest)
    box.untouched()


def test_layer_error_is_an_image_error() -> None:
    assert issubclass(LayerError, ImageError)
