"""Guest path rules and safe tar checks, shared by the host client and the guest agent.

A guest path is absolute and normalised (no ``.``, ``..`` or empty parts); both sides check it,
since the host must not trust the guest and the guest must not trust a buggy host. A tar
stream is hostile until checked member by member: no absolute names, no ``..``, no link whose
target leaves the folder it is unpacked into, nothing but files, folders and links.
Standard library only: the guest imports this module as a top-level ``paths``.
"""
from __future__ import annotations

import os
import posixpath
TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs the guest's start time

if TYPE_CHECKING:  # tarfile costs the guest's start time; only copy_in/copy_out need it
    import tarfile


class UnsafePath(ValueError):
    """A path or tar member that would escape or is not in the expected form."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


def check_guest_path(path: object) -> str:
    """``path`` itself when it is an absolute, normalised guest path; else UnsafePath."""
    if not isinstance(path, str) or not path:
        raise UnsafePath(f"guest path must be a non-empty string, not {path!r}", str(path))
    if "\0" in path:
        raise UnsafePath(f"guest path {path!r} holds a NUL byte", path)
    if not path.startswith("/"):
        raise UnsafePath(f"guest path {path!r} is relative: give an absolute path", path)
    parts = path.split("/")[1:]
    if path != "/" and any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(f"guest path {path!r} is not normalised (no '..', '.' or '//')", path)
    return path


def check_member(member: tarfile.TarInfo, root: str) -> None:
    """Raise UnsafePath when unpacking ``member`` under ``root`` could write outside it."""
    name = member.name
    if name.startswith("/") or "\0" in name:
        raise UnsafePath(f"tar member {name!r} has an absolute name", name)
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or ".." in name.split("/"):
        raise UnsafePath(f"tar member {name!r} climbs out with '..'", name)
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafePath(f"tar member {name!r} is a device, FIFO or other special file", name)
    if member.issym() or member.islnk():
        target = member.linkname
        if target.startswith("/"):
            raise UnsafePath(f"tar member {name!r} links to the absolute path {target!r}", name)
        base = posixpath.dirname(norm) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, target))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafePath(f"tar member {name!r} links out of the folder to {target!r}", name)


def safe_extract(archive: tarfile.TarFile, root: str) -> int:
    """Unpack a streamed archive under ``root`` after checking every member; returns the count.

    Members are written one by one as they arrive. Besides the name checks, every member's
    parent folder is resolved on disk, so an earlier symlink cannot redirect a later write.
    """
    import tarfile
    has_filters = hasattr(tarfile, "fully_trusted_filter")
    real_root = os.path.realpath(root)
    count = 0
    for member in archive:
        check_member(member, root)
        parent = os.path.realpath(os.path.join(real_root, posixpath.dirname(member.name)))
        if parent != real_root and not parent.startswith(real_root + os.sep):
            raise UnsafePath(f"tar member {member.name!r} would be written through a link out of the folder", member.name)
        target = os.path.join(real_root, member.name)
        if os.path.islink(target) and not member.isdir():
            os.unlink(target)
        member.mode &= 0o7777
        if has_filters:  # our checks above replace the filters (3.11.4+); say so to silence theirs
            archive.extract(member, real_root, set_attrs=not member.issym(), numeric_owner=True, filter="fully_trusted")
        else:
            archive.extract(member, real_root, set_attrs=not member.issym(), numeric_owner=True)
        count += 1
    return count
