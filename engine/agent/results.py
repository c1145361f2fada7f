"""Plain results of agent calls: an exec's outcome, directory entries, file status, guest info."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ExecResult:
    """How a command ended: exit code (None when a signal killed it), its output, and whether
    the output went past ``max_output`` (then the rest was discarded in the guest)."""

    exit_code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes
    truncated: bool
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


@dataclass(frozen=True)
class FileStat:
    """A guest path's status: ``kind`` is "file", "dir", "symlink" or "other"."""

    path: str
    kind: str
    size: int
    mode: int
    mtime: float
    uid: int
    gid: int

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> FileStat:
        return cls(str(raw["path"]), str(raw["kind"]), int(raw["size"]), int(raw["mode"]), float(raw["mtime"]),
                   int(raw["uid"]), int(raw["gid"]))


@dataclass(frozen=True)
class DirEntry:
    """One entry of a guest folder (not following symlinks)."""

    name: str
    path: str
    kind: str
    size: int
    mode: int
    mtime: float

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> DirEntry:
        return cls(str(raw["name"]), str(raw["path"]), str(raw["kind"]), int(raw["size"]), int(raw["mode"]),
                   float(raw["mtime"]))


@dataclass(frozen=True)
class AgentInfo:
    """What the guest says of itself."""

    hostname: str
    kernel: str
    arch: str
    memory_total: int
    memory_available: int
    cpus: int
    uptime_s: float
    agent_version: str
    python_version: str

    @classmethod
    def from_wire(cls, raw: dict[str, Any]) -> AgentInfo:
        return cls(str(raw["hostname"]), str(raw["kernel"]), str(raw["arch"]), int(raw["memory_total"]),
                   int(raw["memory_available"]), int(raw["cpus"]), float(raw["uptime_s"]),
                   str(raw["agent_version"]), str(raw["python_version"]))
