"""Shared folders: a host directory the guest mounts over 9p (capsa's ``.share``).

A raw VM names each share by a *tag* and mounts it itself (:meth:`Share.mount_line` is the
documented line); a sandbox names a *guest path* and the engine mounts it there through the agent
before the sandbox is handed out, tagging it ``capsa<N>`` by its position.

Why 9p and not virtio-fs (measured, see bench/shares.py and docs/ARCHITECTURE.md): virtio-fs needs
the guest's RAM shared with a root-run ``virtiofsd`` and makes a VM unmigratable while the device
is attached, so a pooled snapshot clone could never have one; QEMU's 9p server runs inside QEMU
(no daemon to leak, no privilege), blocks migration only while mounted (a template holds the
device unmounted, each clone mounts after its restore), and with ``security_model=mapped-xattr``
files the guest creates are owned by the host user running QEMU, their guest modes, owners, device
nodes and symlinks kept in xattrs: the host never sees a setuid file, a device node or a symlink
the guest made.
"""
from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.errors import ConfigError

__all__ = ["MountMode", "Share", "check_shares", "SHARE_TAG_RE", "SANDBOX_TAG_PREFIX", "MSIZE"]

# A tag is what the guest names the share by in ``mount -t 9p TAG``: kept to characters no shell,
# kernel parser or QEMU option string treats specially.
SHARE_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$")
SANDBOX_TAG_PREFIX = "capsa"  # a sandbox's shares are tagged capsa0, capsa1, ... by position
MSIZE = 512 * 1024  # the 9p message size the guest asks for (the virtio transport's most)


class MountMode(enum.Enum):
    """How the guest may use a share (or a disk): capsa's ``MountMode``."""

    ReadOnly = "ro"
    ReadWrite = "rw"

    @classmethod
    def parse(cls, text: str) -> MountMode:
        """``ro``/``rw`` (or ``read-only``/``read-write``) as in a profile; ConfigError otherwise."""
        value = {"ro": "ro", "read-only": "ro", "readonly": "ro", "rw": "rw", "read-write": "rw", "readwrite": "rw"}.get(
            text.strip().lower())
        if value is None:
            raise ConfigError(f"mount mode {text!r} is not 'ro' or 'rw'")
        return cls(value)


@dataclass(frozen=True)
class Share:
    """One shared folder: ``host_path`` seen by the guest as 9p tag ``tag`` (mounted at
    ``guest_path`` by the engine, for a sandbox)."""

    host_path: Path
    tag: str
    mode: MountMode = MountMode.ReadWrite
    guest_path: str | None = None

    @property
    def read_only(self) -> bool:
        return self.mode is MountMode.ReadOnly

    def validate(self) -> None:
        """ConfigError unless the tag and guest path are well formed (checks no files)."""
        if not SHARE_TAG_RE.match(self.tag):
            raise ConfigError(
                f"share tag {self.tag!r} (for {self.host_path}) must be 1-31 letters, digits, '_', '.' or '-' "
                "(no spaces), starting with a letter or digit")
        if self.guest_path is not None:
            path = PurePosixPath(self.guest_path)
            if not path.is_absolute():
                raise ConfigError(f"share guest path {self.guest_path!r} (for {self.host_path}) is not absolute")
            if any(part == ".." for part in path.parts) or any(c in self.guest_path for c in "\0\n\t "):
                raise ConfigError(f"share guest path {self.guest_path!r} (for {self.host_path}) has '..' or whitespace")
            if path == PurePosixPath("/"):
                raise ConfigError(f"share guest path '/' (for {self.host_path}) would hide the guest's root")

    def check(self) -> None:
        """ConfigError naming the host path unless it is an existing directory."""
        if not self.host_path.exists():
            raise ConfigError(f"share folder not found: {self.host_path}")
        if not self.host_path.is_dir():
            raise ConfigError(f"share folder is not a directory: {self.host_path}")

    def mount_options(self) -> str:
        """The 9p mount options: the virtio transport, 9P2000.L, and no setuid or device files
        honoured from the host folder; ``ro`` for a read-only share (the host refuses writes anyway)."""
        return f"trans=virtio,version=9p2000.L,msize={MSIZE},nosuid,nodev,{self.mode.value}"

    def mount_line(self, guest_path: str | None = None) -> str:
        """The guest command that mounts this share (at ``guest_path``, or its own)."""
        where = guest_path or self.guest_path or f"/mnt/{self.tag}"
        return f"mkdir -p {where} && mount -t 9p -o {self.mount_options()} {self.tag} {where}"


def check_shares(shares: Sequence[Share]) -> None:
    """ConfigError for a malformed share, two shares with one tag, or two at one guest path."""
    tags: dict[str, Path] = {}
    paths: dict[str, Path] = {}
    for share in shares:
        share.validate()
        if share.tag in tags:
            raise ConfigError(f"two shares have the tag {share.tag!r}: {tags[share.tag]} and {share.host_path}")
        tags[share.tag] = share.host_path
        if share.guest_path is not None:
            key = str(PurePosixPath(share.guest_path))
            if key in paths:
                raise ConfigError(f"two shares mount at {key}: {paths[key]} and {share.host_path}")
            paths[key] = share.host_path
