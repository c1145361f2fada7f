"""A profile's ``shares:``, ``disks:`` and ``boot.root_disk`` (sans-IO: YAML nodes in,
Share/DiskImage out).

    shares:                                   # kind: sandbox (a guest path)
      - {host: ./src, guest: /mnt/src, mode: ro}
    shares:                                   # kind: vm (a 9p tag; the guest mounts it)
      - {host: ./out, tag: out, mode: rw}
    disks:
      - {path: data.img, mode: ro}            # mode: ro | rw | cow (copy-on-write), default rw
      - {path: data.qcow2, format: qcow2, mode: cow}
    boot:
      root_disk: {path: root.ext4, mode: cow}  # or just a path; kind: vm only

Relative paths are relative to the profile file's folder. Every error names the file, line and
field; the tag, guest path and duplicate rules are the engine's own (``check_shares``), so a
profile and the API refuse the same things.
"""
from __future__ import annotations

from pathlib import Path

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from engine.errors import ConfigError
from engine.microvm.disk import DISK_FORMATS, DiskImage
from engine.microvm.share import SANDBOX_TAG_PREFIX, MountMode, Share, check_shares
from engine.profile.schema import Fields, describe

SHARE_KEYS = ("host", "guest", "tag", "mode")
DISK_KEYS = ("path", "format", "mode")
DISK_MODES = ("ro", "rw", "cow")


def _items(f: Fields, document: CommentedMap, key: str, what: str) -> list[tuple[int, CommentedMap]]:
    if key not in document:
        return []
    value = document[key]
    if not isinstance(value, CommentedSeq):
        f.expected(document, key, "", what)
        return []
    items = []
    for index, item in enumerate(value):
        if not isinstance(item, CommentedMap):
            f.error(value, index, f"{key}[{index}]", f"expected a mapping ({what}), found {describe(item)}")
            continue
        items.append((index, item))
    return items


def _path(raw: str, base_dir: Path | None) -> Path:
    path = Path(raw).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path  # relative to the profile's folder, not to wherever we run from
    return path


def parse_shares(f: Fields, document: CommentedMap, sandbox: bool, base_dir: Path | None) -> tuple[Share, ...]:
    """``shares:``: guest paths for a sandbox, tags for a raw VM."""
    target = "guest" if sandbox else "tag"
    shares: list[Share] = []
    for index, item in _items(f, document, "shares", f"a list of {{host: DIR, {target}: ..., mode: ro|rw}}"):
        where = f"shares[{index}]"
        f.unknown_keys(item, where, SHARE_KEYS)
        wrong = "tag" if sandbox else "guest"
        if wrong in item:
            f.error(item, wrong, f"{where}.{wrong}",
                    "a sandbox mounts its shares at a guest path: use guest, not tag" if sandbox else
                    "a kind: vm guest mounts its shares itself: use tag (and mount it in the guest), not guest")
            continue
        if not f.require(item, "host", where, "the host folder to share") or not f.require(item, target, where,
                                                                                       f"the share's {target}"):
            continue
        host, value = f.string(item, "host", where), f.string(item, target, where)
        mode_text = f.string(item, "mode", where, "rw")
        if host is None or value is None or mode_text is None:
            continue
        try:
            mode = MountMode.parse(mode_text)
        except ConfigError:
            f.expected(item, "mode", where, "ro or rw")
            continue
        tag = f"{SANDBOX_TAG_PREFIX}{len(shares)}" if sandbox else value
        share = Share(_path(host, base_dir), tag, mode, guest_path=value if sandbox else None)
        try:
            check_shares([*shares, share])
        except ConfigError as err:
            f.error(item, target, f"{where}.{target}", str(err))
            continue
        shares.append(share)
    return tuple(shares)


def parse_disks(f: Fields, document: CommentedMap, base_dir: Path | None) -> tuple[DiskImage, ...]:
    """``disks:``: each ``{path, format (raw|qcow2, else by extension), mode (ro|rw|cow)}``."""
    disks: list[DiskImage] = []
    for index, item in _items(f, document, "disks", "a list of {path: FILE, mode: ro|rw|cow}"):
        disk = parse_disk(f, item, f"disks[{index}]", base_dir)
        if disk is not None:
            disks.append(disk)
    return tuple(disks)


def parse_root_disk(f: Fields, boot: CommentedMap, base_dir: Path | None) -> DiskImage | None:
    """``boot.root_disk``: a path, or ``{path, format, mode}`` as in ``disks:``; None when
    absent or invalid."""
    if "root_disk" not in boot:
        return None
    value = boot["root_disk"]
    if isinstance(value, str) and value:
        return DiskImage(_path(value, base_dir))
    if not isinstance(value, CommentedMap):
        f.expected(boot, "root_disk", "boot", "a disk image path or {path: FILE, mode: ro|rw|cow}")
        return None
    return parse_disk(f, value, "boot.root_disk", base_dir)


def parse_disk(f: Fields, item: CommentedMap, where: str, base_dir: Path | None) -> DiskImage | None:
    """One ``{path, format, mode}`` mapping at ``where``; None (the error recorded) if invalid."""
    f.unknown_keys(item, where, DISK_KEYS)
    if not f.require(item, "path", where, "the disk image file"):
        return None
    raw, kind, mode = f.string(item, "path", where), f.string(item, "format", where), f.string(item, "mode", where, "rw")
    if raw is None or mode is None:
        return None
    if kind is not None and kind not in DISK_FORMATS:
        f.expected(item, "format", where, " or ".join(DISK_FORMATS))
        return None
    if mode not in DISK_MODES:
        f.expected(item, "mode", where, "ro, rw or cow")
        return None
    return DiskImage(_path(raw, base_dir), format=kind, read_only=mode == "ro", copy_on_write=mode == "cow")


def disk_mode(disk: DiskImage) -> str:
    """A disk's ``mode`` as a profile spells it: ro, rw or cow."""
    return "ro" if disk.read_only else "cow" if disk.copy_on_write else "rw"
