"""What a snapshot folder holds and what it must match to be loaded (plain data, JSON).

A snapshot is a folder with ``snapshot.json`` (this module's :class:`SnapshotInfo`) and
``state`` (QEMU's migration stream). A *template* keeps the guest's RAM in a separate file
(``ram_file``, mapped copy-on-write by each clone, so ``state`` is only device state); a *full*
snapshot has the RAM inside ``state``. :class:`MachineShape` is everything that shapes the
machine QEMU must rebuild for the state to load; a shape that differs from the one recorded
(another QEMU, a changed kernel, other devices) makes the snapshot stale, never loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from engine.errors import SnapshotError

SNAPSHOT_FORMAT = 1
META_FILE = "snapshot.json"
STATE_FILE = "state"

SnapshotKind = Literal["template", "full"]


def file_stamp(path: Path) -> str:
    """Size and modification time of ``path``: changes whenever the file is rewritten."""
    try:
        st = path.stat()
    except OSError as err:
        raise SnapshotError(f"cannot read {path}: {err.strerror}") from err
    return f"{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class DriveShape:
    """One drive of a saved machine, in the guest's order (vda, vdb, ...): the image's path and
    stamp (a rewritten image makes the snapshot stale: the guest's page cache holds its old
    blocks), its format and how it is opened. A copy-on-write drive records its image, not the
    per-VM overlay: each clone gets a fresh one."""

    path: str
    stamp: str
    format: str
    read_only: bool
    copy_on_write: bool = False


@dataclass(frozen=True)
class MachineShape:
    """Everything a restored machine must share with the one that was saved."""

    qemu: str  # QEMU's version line: migration streams are not portable across versions
    kernel: str
    kernel_stamp: str
    initrd: str | None
    initrd_stamp: str | None
    append: str
    cpus: int
    memory_mb: int
    machine: str
    accel: str
    nic: bool
    nic_mtu: int
    extra_args: tuple[str, ...] = ()
    ram_block: str = "default"  # "ram0": RAM from a named backend (templates, clones)
    # A sandbox's read-only root image (vda): its path and stamp, so a rebuilt or touched image
    # makes the snapshot stale (the guest's page cache holds the old image's blocks).
    root_disk: str | None = None
    root_disk_stamp: str | None = None
    root_disk_format: str = "raw"
    agent_port: str | None = None  # the agent's virtio-serial port name (a sandbox)
    # Every drive, root disk first (the device state holds one virtio-blk device per drive).
    drives: tuple[DriveShape, ...] = ()
    # The 9p devices, (tag, host path, read_only) each: a clone must have the same ones for the
    # saved device state to load, and a template of other shares is another template.
    shares: tuple[tuple[str, str, bool], ...] = ()
    format: int = SNAPSHOT_FORMAT

    def key(self) -> str:
        """A short hash of the whole shape: the name of a template's folder."""
        blob = json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def differences(self, other: MachineShape) -> list[str]:
        """The fields that differ from ``other`` (``name: ours != theirs``), for messages."""
        mine, theirs = asdict(self), asdict(other)
        return [f"{name}: {mine[name]!r} != {theirs[name]!r}" for name in mine if mine[name] != theirs[name]]


@dataclass(frozen=True)
class GuestFacts:
    """What the engine needs to drive the restored guest (not part of the machine's shape)."""

    ready_marker: str | None  # hex
    capsa_guest: bool
    console: bool
    hostname: str
    scrollback_bytes: int
    guest_ip: str | None  # the address the guest held when saved (its gateway re-grants it)
    # A sandbox's root disk (read-only, shared by every clone) and agent port: the clone is
    # launched with the same devices, or the saved device state does not load.
    root_disk: str | None = None
    root_disk_format: str = "raw"
    root_disk_read_only: bool = True
    has_agent: bool = False
    # The data disks (vdb, ... after a root disk): (path, format, read_only, copy_on_write).
    disks: tuple[tuple[str, str, bool, bool], ...] = ()
    # Each share as (tag, host path, mode "ro"/"rw", guest path or None): the clone's spec.
    shares: tuple[tuple[str, str, str, str | None], ...] = ()
    # An OCI sandbox's workload (OciWorkload.to_json): a clone's agent gets its config again.
    workload: str | None = None


@dataclass(frozen=True)
class SnapshotInfo:
    """The contents of ``snapshot.json``."""

    kind: SnapshotKind
    shape: MachineShape
    guest: GuestFacts
    state_size: int
    state_sha256: str
    ram_file: str | None = None  # templates only: the RAM image clones map copy-on-write
    created_at: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> SnapshotInfo:
        """Parse ``snapshot.json``; SnapshotError naming ``source`` and the bad field."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SnapshotError(f"{source}: not valid JSON (line {err.lineno}): {err.msg}") from None
        if not isinstance(data, dict):
            raise SnapshotError(f"{source}: expected a JSON object")
        if data.get("shape", {}).get("format") != SNAPSHOT_FORMAT:
            found = data.get("shape", {}).get("format")
            raise SnapshotError(f"{source}: snapshot format {found!r}, this engine reads format {SNAPSHOT_FORMAT}")
        try:
            shape = dict(data["shape"])
            shape["extra_args"] = tuple(shape.get("extra_args", ()))
            shape["drives"] = tuple(DriveShape(**drive) for drive in shape.get("drives", ()))
            guest = dict(data["guest"])
            guest["disks"] = tuple(
                (str(path), str(kind), bool(ro), bool(cow)) for path, kind, ro, cow in guest.get("disks", ()))
            shape["shares"] = tuple((str(t), str(h), bool(r)) for t, h, r in shape.get("shares", ()))
            guest["shares"] = tuple(
                (str(t), str(h), str(m), None if g is None else str(g)) for t, h, m, g in guest.get("shares", ()))
            return cls(
                kind=data["kind"],
                shape=MachineShape(**shape),
                guest=GuestFacts(**guest),
                state_size=int(data["state_size"]),
                state_sha256=str(data["state_sha256"]),
                ram_file=data.get("ram_file"),
                created_at=float(data.get("created_at", 0.0)),
                extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SnapshotError(f"{source}: a field is missing or malformed: {err}") from None


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_info(directory: Path) -> SnapshotInfo:
    """Read and check a snapshot folder: its JSON, and that its state file is whole.

    A truncated or altered state file is caught here by its size and SHA-256, before QEMU
    ever sees it (QEMU would fail on it too, but later and less clearly).
    """
    meta = directory / META_FILE
    try:
        text = meta.read_text()
    except FileNotFoundError:
        raise SnapshotError(f"{directory} is not a snapshot: it has no {META_FILE}") from None
    except OSError as err:
        raise SnapshotError(f"cannot read {meta}: {err.strerror}") from err
    info = SnapshotInfo.from_json(text, meta)
    state = directory / STATE_FILE
    try:
        size = state.stat().st_size
    except FileNotFoundError:
        raise SnapshotError(f"{directory}: the state file {STATE_FILE} is missing") from None
    if size != info.state_size:
        raise SnapshotError(
            f"{state} is truncated or corrupt: {size} bytes, {META_FILE} records {info.state_size}"
        )
    if sha256_file(state) != info.state_sha256:
        raise SnapshotError(f"{state} is corrupt: its SHA-256 differs from the one {META_FILE} records")
    if info.ram_file is not None:
        ram = Path(info.ram_file)
        try:
            ram_size = ram.stat().st_size
        except FileNotFoundError:
            raise SnapshotError(f"{directory}: its RAM file {ram} is gone (a reboot empties /dev/shm)") from None
        if ram_size != info.shape.memory_mb << 20:
            raise SnapshotError(f"{ram} holds {ram_size} bytes, the guest has {info.shape.memory_mb} MiB")
    return info


def write_info(directory: Path, info: SnapshotInfo) -> None:
    """Write ``snapshot.json`` atomically (its presence marks a finished snapshot)."""
    tmp = directory / f".{META_FILE}.{os.getpid()}"
    tmp.write_text(info.to_json())
    os.replace(tmp, directory / META_FILE)
