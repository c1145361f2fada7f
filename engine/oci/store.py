"""The OCI image cache: one read-only erofs file per layer, named by the layer's ``diff_id``
(the digest of its uncompressed tar), and one record per image naming its layers. Two images
that share base layers share those files; ``rm`` and ``prune`` delete a layer only when no
image names it any more.

Every change is made under one file lock, files are installed by rename (a reader never sees a
half-written layer or record), and a build's scratch folder (``.unpack-*``, ``.pull-*``) is
swept at the next locked change, so a killed pull leaves nothing that counts as cached.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import platformdirs

from engine.errors import ImageError
from engine.oci.config import ImageConfig, config_from_json
from engine.oci.image import OciImage
from engine.oci.reference import LocalSource, parse_reference, parse_source

CACHE_ENV = "CAPSA_OCI_CACHE"
RECORD_VERSION = 1
_SCRATCH = (".unpack-", ".pull-", ".record-")


def default_store_dir() -> Path:
    """$CAPSA_OCI_CACHE, else ``oci`` in the user's capsa-tui cache."""
    override = os.environ.get(CACHE_ENV)
    return Path(override).expanduser() if override else platformdirs.user_cache_path("capsa-tui") / "oci"


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


class OciStore:
    """The cache folder: ``layers/<diff_id>.erofs`` and ``images/<image id>.json``."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_store_dir()
        self.layers = self.root / "layers"
        self.images = self.root / "images"

    def ensure(self) -> None:
        for folder in (self.root, self.layers, self.images):
            folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # layer trees are unpacked in here, device nodes and all

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One writer at a time (pulls in other processes wait); sweeps dead builds' scratch."""
        self.ensure()
        with open(self.root / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                self._sweep()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def scratch(self, kind: str) -> Path:
        """A private scratch folder in the cache (same file system: installs are renames)."""
        self.ensure()
        return Path(tempfile.mkdtemp(prefix=f".{kind}-{os.getpid()}-", dir=self.root))

    def _sweep(self) -> None:
        for path in self.root.iterdir():
            if path.name.startswith(_SCRATCH) and not _owned_by_live_process(path.name):
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)

    # -- layers
    def layer_file(self, diff_id: str) -> Path:
        return self.layers / f"{_hex(diff_id)}.erofs"

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_file(diff_id).is_file()

    def install_layer(self, diff_id: str, built: Path) -> None:
        os.replace(built, self.layer_file(diff_id))

    # -- images
    def _record_path(self, image_id: str) -> Path:
        return self.images / f"{_hex(image_id)}.json"

    def _load(self, path: Path) -> OciImage | None:
        try:
            record = json.loads(path.read_text())
            config = config_from_json(record["config"])
            diff_ids = tuple(str(d) for d in record["diff_ids"])
            return OciImage(
                id=str(record["id"]), manifest_digest=str(record["manifest_digest"]),
                names=tuple(str(n) for n in record.get("names", [])),
                repo_digests=tuple(str(n) for n in record.get("repo_digests", [])),
                config=config, diff_ids=diff_ids, layer_files=tuple(self.layer_file(d) for d in diff_ids),
                size=int(record.get("size", 0)), created_at=float(record.get("created_at", 0.0)),
            )
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            return None  # half-removed or foreign: not an image

    def list_images(self) -> list[OciImage]:
        """Every image whose record and layer files are all there, newest first."""
        if not self.images.is_dir():
            return []
        found = [image for path in self.images.glob("*.json") if (image := self._load(path)) is not None
                 and all(f.is_file() for f in image.layer_files)]
        return sorted(found, key=lambda image: image.created_at, reverse=True)

    def find(self, name: str) -> OciImage | None:
        """The image named ``name``: a tag as pulled (``python:3.11`` matches
        ``docker.io/library/python:3.11``), ``repo@sha256:...``, or an id (12+ hex digits)."""
        candidates = {name}
        try:
            source = parse_source(name)
            if isinstance(source, LocalSource):
                source = LocalSource(source.transport, source.path.resolve(), source.tag)
            candidates.add(str(source))
        except ImageError:
            pass
        for image in self.list_images():
            known = {*image.names, *map(_normal, image.names), *image.repo_digests}
            if candidates & known or _is_id_of(name, image.id):
                return image
        return None

    def write_record(self, image_id: str, manifest_digest: str, names: Sequence[str], repo_digests: Sequence[str],
                     config: ImageConfig, diff_ids: Sequence[str], size: int) -> OciImage:
        """Record an image (its layers installed); a name another image held moves to this one."""
        moving = {_normal(n) for n in names}
        for other in self.list_images():
            if other.id != image_id and moving & {_normal(n) for n in other.names}:
                self._rewrite(other, [n for n in other.names if _normal(n) not in moving])
        existing = self._load(self._record_path(image_id))
        all_names = list(dict.fromkeys([*names, *(existing.names if existing else ())]))  # the newest name first
        all_digests = list(dict.fromkeys([*(existing.repo_digests if existing else ()), *repo_digests]))
        record = {"version": RECORD_VERSION, "id": image_id, "manifest_digest": manifest_digest, "names": all_names,
                  "repo_digests": all_digests, "config": config.to_json(), "diff_ids": list(diff_ids), "size": size,
                  "created_at": existing.created_at if existing else time.time()}
        self._write_json(self._record_path(image_id), record)
        image = self._load(self._record_path(image_id))
        assert image is not None
        return image

    def _rewrite(self, image: OciImage, names: list[str], repo_digests: list[str] | None = None) -> None:
        path = self._record_path(image.id)
        record = json.loads(path.read_text())
        record["names"] = names
        if repo_digests is not None:
            record["repo_digests"] = repo_digests
        self._write_json(path, record)

    def _write_json(self, path: Path, record: dict[str, object]) -> None:
        partial = path.with_name(f".record-{os.getpid()}-{path.name}")
        partial.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(partial, path)

    def remove(self, name: str) -> OciImage:
        """Untag ``name``; the image goes, with the layers no other image uses, once it has no
        name left. An id (12+ hex digits, or sha256:...) removes the image with all its names,
        a ``repo@sha256:...`` forgets that digest. ImageError if nothing has that name."""
        with self.lock():
            image = self.find(name)
            if image is None:
                raise ImageError(f"no image named {name!r} in {self.root} (see `capsa-tui image list`)")
            normal = _normal(name)
            by_id = _is_id_of(name, image.id)
            names = [] if by_id else [n for n in image.names if _normal(n) != normal]
            digests = [] if by_id else [d for d in image.repo_digests if d not in (name, normal)]
            if names:
                self._rewrite(image, names, digests)
            else:
                self._record_path(image.id).unlink(missing_ok=True)
                self._drop_unused_layers()
            return image

    def prune(self) -> tuple[list[OciImage], int]:
        """Remove untagged images and every layer no image uses; (images removed, bytes freed)."""
        with self.lock():
            removed = [image for image in self.list_images() if not image.names]
            for image in removed:
                self._record_path(image.id).unlink(missing_ok=True)
            return removed, self._drop_unused_layers()

    def _drop_unused_layers(self) -> int:
        used = {f.name for image in self.list_images() for f in image.layer_files}
        freed = 0
        for path in self.layers.glob("*.erofs"):
            if path.name not in used:
                freed += path.stat().st_size
                path.unlink(missing_ok=True)
        return freed

    def disk_usage(self) -> int:
        """Bytes the cache's layer files take."""
        return sum(p.stat().st_size for p in self.layers.glob("*.erofs")) if self.layers.is_dir() else 0


def _is_id_of(name: str, image_id: str) -> bool:
    """``name`` is ``image_id`` or a prefix of it of at least 12 hex digits."""
    bare = _hex(name)
    return len(bare) >= 12 and all(c in "0123456789abcdef" for c in bare) and _hex(image_id).startswith(bare)


def _normal(name: str) -> str:
    try:
        return str(parse_reference(name))
    except ImageError:
        return name


def _owned_by_live_process(name: str) -> bool:
    """Scratch names carry their maker's pid: a live maker's is not swept."""
    parts = name.split("-")
    if len(parts) < 3 or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
