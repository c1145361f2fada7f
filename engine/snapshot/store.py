"""Where templates live: folders under the user cache, RAM images on a tmpfs.

A template's folder (``<cache>/templates/<shape key>/``) holds its JSON and device state; its
RAM image, which every clone maps, goes to a tmpfs (``/dev/shm``) where the host has one, so
clones read it from memory instead of disk. ``CAPSA_SNAPSHOT_RAM_DIR`` moves the RAM images.
"""
from __future__ import annotations

import contextlib
import hashlib
import fcntl
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import platformdirs

from engine.errors import SnapshotError
from engine.snapshot.meta import META_FILE

RAM_DIR_ENV = "CAPSA_SNAPSHOT_RAM_DIR"
TEMPLATES_DIR_ENV = "CAPSA_TEMPLATES_DIR"
_SHM = Path("/dev/shm")
_TMPFS_MAGIC = ("tmpfs", "ramfs")
# Room left free beside a new RAM image: a tmpfs filled to the last page makes other programs fail.
_SPARE_MB = 64


def templates_dir() -> Path:
    """``$CAPSA_TEMPLATES_DIR``, or ``templates/`` in the user cache."""
    wanted = os.environ.get(TEMPLATES_DIR_ENV)
    return Path(wanted) if wanted else platformdirs.user_cache_path("capsa-tui") / "templates"


@contextlib.contextmanager
def template_lock(key: str) -> Iterator[None]:
    """One builder per template at a time, across processes (blocks: call it in a thread)."""
    root = templates_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ram_dir() -> Path:
    """The folder of RAM images: ``$CAPSA_SNAPSHOT_RAM_DIR``, a private folder on /dev/shm,
    or (no tmpfs) the templates folder on disk."""
    wanted = os.environ.get(RAM_DIR_ENV)
    if wanted:
        return Path(wanted)
    if _is_tmpfs(_SHM):
        # A templates folder of its own (CAPSA_TEMPLATES_DIR) gets RAM images of its own too,
        # so pruning one store never touches another's.
        suffix = ""
        if os.environ.get(TEMPLATES_DIR_ENV):
            suffix = "-" + hashlib.sha256(str(templates_dir()).encode()).hexdigest()[:8]
        return _SHM / f"capsa-tui-{os.getuid()}{suffix}"
    return templates_dir() / "ram"


def _is_tmpfs(path: Path) -> bool:
    try:
        with open("/proc/mounts") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) > 2 and parts[1] == str(path) and parts[2] in _TMPFS_MAGIC:
                    return True
    except OSError:
        pass
    return False


def prepare_ram_file(key: str, memory_mb: int) -> Path:
    """A fresh path for a template's RAM image; SnapshotError if its filesystem lacks room.

    Every build gets a name of its own: clones of an older build may still map its image.
    """
    directory = ram_dir()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as err:
        raise SnapshotError(f"cannot create the RAM image folder {directory}: {err.strerror}") from err
    path = directory / f"{key}-{secrets.token_hex(4)}.ram"
    stat = os.statvfs(directory)
    free_mb = stat.f_bavail * stat.f_frsize >> 20
    if free_mb < memory_mb + _SPARE_MB:
        raise SnapshotError(
            f"{directory} has {free_mb} MiB free; a template of this {memory_mb} MiB guest needs "
            f"{memory_mb + _SPARE_MB} MiB there (its RAM image plus {_SPARE_MB} MiB spare): free some "
            f"space, enlarge the tmpfs, or point {RAM_DIR_ENV} at a larger folder"
        )
    return path


def remove_template(directory: Path) -> None:
    """Delete a template folder and the RAM image it names."""
    from engine.snapshot.meta import SnapshotInfo  # the JSON may be broken: read it leniently

    try:
        info = SnapshotInfo.from_json((directory / META_FILE).read_text(), directory / META_FILE)
        if info.ram_file:
            Path(info.ram_file).unlink(missing_ok=True)
    except (OSError, SnapshotError):
        pass
    shutil.rmtree(directory, ignore_errors=True)


def prune_stale_templates(*, orphan_age_s: float = 600.0) -> list[Path]:
    """Remove what can never be used again: templates whose kernel or initrd is gone (an
    image rebuilt and pruned), broken template folders, and RAM images of this store's keys
    that no template names any more (older than ``orphan_age_s``, so a build in progress
    keeps its own). Returns what went."""
    from engine.snapshot.meta import SnapshotInfo

    removed: list[Path] = []
    named: set[Path] = set()
    keys: set[str] = set()  # templates this store has or had: their old RAM images are ours
    root = templates_dir()
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        if not directory.is_dir() or directory.name.startswith(".") or directory.name == "ram":
            continue
        keys.add(directory.name)
        try:
            info = SnapshotInfo.from_json((directory / META_FILE).read_text(), directory / META_FILE)
        except (OSError, SnapshotError):
            if time.time() - directory.stat().st_mtime > orphan_age_s:
                shutil.rmtree(directory, ignore_errors=True)
                removed.append(directory)
            continue
        inputs = [info.shape.kernel] + ([info.shape.initrd] if info.shape.initrd else [])
        if not all(Path(path).exists() for path in inputs):
            remove_template(directory)
            removed.append(directory)
        elif info.ram_file:
            named.add(Path(info.ram_file))
    ram = ram_dir()
    for image in ram.glob("*.ram") if ram.is_dir() else []:
        try:
            old = time.time() - image.stat().st_mtime > orphan_age_s
        except OSError:
            continue
        if image not in named and old and image.name.split("-", 1)[0] in keys:
            image.unlink(missing_ok=True)
            removed.append(image)
    return removed


def prune_templates() -> list[Path]:
    """Remove every template and RAM image; returns the folders removed."""
    removed: list[Path] = []
    root = templates_dir()
    if root.is_dir():
        for directory in sorted(root.iterdir()):
            if directory.is_dir() and directory.name != "ram" and not directory.name.startswith("."):
                remove_template(directory)
                removed.append(directory)
    ram = ram_dir()
    if ram.is_dir():
        for image in ram.glob("*.ram"):
            image.unlink(missing_ok=True)
    shutil.rmtree(root / "ram", ignore_errors=True)
    return removed
