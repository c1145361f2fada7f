"""One image layer (a tar, usually gzipped) unpacked into a folder in overlayfs's own format.

Written here rather than with umoci: umoci unpacks a whole image into one merged tree, while
the cache keeps one read-only file per layer (so images that share layers share them on disk)
and the guest's overlayfs stacks them. That needs each layer kept apart with its whiteouts
in overlayfs's form: ``.wh.NAME`` becomes a 0/0 character device ``NAME``, and an opaque
folder (``.wh..wh..opq``) gets the ``trusted.overlay.opaque=y`` xattr. Owners, modes (setuid
included), hard links, device nodes, mtimes and ``SCHILY.xattr`` xattrs are kept; that needs
root, like Docker's own unpacking.

A layer is hostile input, unpacked on the host as root. No entry may reach outside ``dest``:
names are normalised (a leading ``/`` dropped, ``..`` refused), no entry is written through a
symlink (every parent folder is checked with lstat and files are opened ``O_NOFOLLOW``), and a
hard link's target must be a regular file already unpacked inside ``dest``. The folder is
private (0700) until the caller has made its image.

Both digests are computed on the way: the blob's (what the manifest names) and the
uncompressed tar's (the config's ``diff_id``).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from engine.errors import ImageError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX = "SCHILY.xattr."
_CHUNK = 1 << 20
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_TYPES = ("application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip",
              "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
              "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
PLAIN_TYPES = ("application/vnd.oci.image.layer.v1.tar", "application/vnd.docker.image.rootfs.diff.tar",
               "application/vnd.oci.image.layer.nondistributable.v1.tar")


class LayerError(ImageError):
    """A layer that cannot be unpacked safely (its path and the entry are named)."""


class _Hashing:
    """A read-only stream that hashes what passes through it."""

    def __init__(self, raw: Any) -> None:  # a file, a GzipFile or another _Hashing
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def hexdigest(self) -> str:
        return "sha256:" + self.digest.hexdigest()


@dataclass(frozen=True)
class UnpackedLayer:
    """What unpacking a layer found: both digests, and the uncompressed size."""

    blob_digest: str
    diff_id: str
    size: int
    entries: int


def unpack_layer(blob: IO[bytes], media_type: str, dest: Path, *, where: str) -> UnpackedLayer:
    """Unpack the layer read from ``blob`` into the empty folder ``dest``; ``where`` names it
    in errors. The caller compares the digests with the manifest and the config."""
    if "zstd" in media_type:
        raise LayerError(f"{where} is zstd-compressed ({media_type}); only gzip and plain tar layers are supported")
    if media_type not in GZIP_TYPES and media_type not in PLAIN_TYPES:
        raise LayerError(f"{where} has the media type {media_type!r}, which is not an image layer")
    # The bytes say whether it is gzipped, not the media type: skopeo's docker-archive source
    # names its plain tar layers gzip.
    magic = blob.read(4)
    blob.seek(0)
    if magic == ZSTD_MAGIC:
        raise LayerError(f"{where} is zstd-compressed; only gzip and plain tar layers are supported")
    compressed = magic[:2] == GZIP_MAGIC
    outer = _Hashing(blob)
    inner = _Hashing(gzip.GzipFile(fileobj=outer, mode="rb") if compressed else outer)  # type: ignore[call-overload]  # duck-typed: reads and hashes
    os.chmod(dest, 0o700)
    writer = _Writer(dest, where)
    try:
        with tarfile.open(fileobj=inner, mode="r|") as archive:  # type: ignore[call-overload]
            for member in archive:
                writer.add(archive, member)
        inner.drain()  # the tar's end padding counts in the diff_id
        outer.drain()
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError, ValueError) as err:
        if isinstance(err, OSError) and err.errno is not None and not isinstance(err, gzip.BadGzipFile):
            raise  # the disk, not the layer: the caller reports it
        raise LayerError(f"{where} is not a readable layer tar: {err}") from None
    writer.finish()
    return UnpackedLayer(outer.hexdigest(), inner.hexdigest(), inner.size, writer.entries)


class _Writer:
    """Writes tar members under ``root``, refusing any that would land outside it."""

    def __init__(self, root: Path, where: str) -> None:
        self.root = root
        self.where = where
        self.entries = 0
        self.dirs: list[tuple[Path, tarfile.TarInfo]] = []

    def _target(self, name: str) -> tuple[Path, str]:
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if any(p == ".." for p in parts):
            raise LayerError(f"{self.where}: entry {name!r} climbs out of the image with '..'")
        if not parts:
            return self.root, ""
        parent = self.root
        for part in parts[:-1]:
            parent = parent / part
            try:
                mode = os.lstat(parent).st_mode
            except FileNotFoundError:
                os.mkdir(parent, 0o755)  # a folder the tar names only through its contents
                continue
            if not stat.S_ISDIR(mode):
                raise LayerError(f"{self.where}: entry {name!r} goes through {str(parent.relative_to(self.root))!r}, "
                                 "which is not a folder in this layer (a symlink?)")
        return parent / parts[-1], "/".join(parts)

    def _clear(self, path: Path) -> None:
        """A later entry of one layer replaces an earlier one (a folder stays a folder)."""
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            raise LayerError(f"{self.where}: entry {path.relative_to(self.root)} replaces a folder of the same layer")
        os.unlink(path)

    def add(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self.entries += 1
        path, rel = self._target(member.name)
        base = path.name
        if base == OPAQUE:
            folder = path.parent
            os.setxattr(folder, OPAQUE_XATTR, b"y", follow_symlinks=False)
            return
        if base.startswith(WHITEOUT):
            hidden = path.with_name(base[len(WHITEOUT):])
            if not hidden.name or hidden.name in (".", ".."):
                raise LayerError(f"{self.where}: whiteout {member.name!r} names nothing")
            self._clear(hidden)
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0))
            return
        if not rel:
            if member.isdir():
                self.dirs.append((path, member))
            return
        if member.isdir():
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                os.mkdir(path, 0o700)
            else:
                if not stat.S_ISDIR(mode):
                    self._clear(path)
                    os.mkdir(path, 0o700)
            self.dirs.append((path, member))
            return
        self._clear(path)
        if member.isreg():
            source = archive.extractfile(member)
            assert source is not None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                while chunk := source.read(_CHUNK):
                    _write_all(fd, chunk)
                os.fchown(fd, member.uid, member.gid)
                os.fchmod(fd, stat.S_IMODE(member.mode))  # after chown, which clears setuid
            finally:
                os.close(fd)
        elif member.issym():
            os.symlink(member.linkname, path)
            os.lchown(path, member.uid, member.gid)
        elif member.islnk():
            target, _ = self._target(member.linkname)
            try:
                target_mode = os.lstat(target).st_mode
            except FileNotFoundError:
                raise LayerError(f"{self.where}: hard link {member.name!r} points at {member.linkname!r}, "
                                 "which this layer has not unpacked") from None
            if not stat.S_ISREG(target_mode):
                raise LayerError(f"{self.where}: hard link {member.name!r} points at {member.linkname!r}, not a file")
            os.link(target, path, follow_symlinks=False)
            return  # the link shares the target's owner, mode and times
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            os.mknod(path, kind | stat.S_IMODE(member.mode), os.makedev(member.devmajor, member.devminor))
            os.lchown(path, member.uid, member.gid)
            os.chmod(path, stat.S_IMODE(member.mode))  # mknod's mode went through our umask
        else:
            raise LayerError(f"{self.where}: entry {member.name!r} has a tar type this layer format does not allow")
        self._xattrs(path, member)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)

    def _xattrs(self, path: Path, member: tarfile.TarInfo) -> None:
        for key, value in member.pax_headers.items():
            if key.startswith(_XATTR_PAX):
                name = key[len(_XATTR_PAX):]
                if name.startswith("trusted.overlay."):
                    continue  # only our own whiteout handling may say what overlayfs sees
                raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
                try:
                    os.setxattr(path, name, raw, follow_symlinks=False)
                except OSError:
                    pass  # an xattr this host's file system refuses (e.g. security.selinux)

    def finish(self) -> None:
        """Folders last and deepest first: their modes (maybe read-only) and mtimes."""
        if not any(path == self.root for path, _ in self.dirs):
            os.chmod(self.root, 0o755)  # no "./" entry: the layer's root is an ordinary folder
        for path, member in sorted(self.dirs, key=lambda item: len(item[0].parts), reverse=True):
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
            os.chmod(path, stat.S_IMODE(member.mode))
            self._xattrs(path, member)
            os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
