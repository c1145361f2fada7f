"""Writing OCI images: an OCI layout folder from layer tars and a run config (our own Debian
builder's trees become images users can push), and ``oci:``/``docker-archive:`` exports
through skopeo. The layout is the spec's own: ``oci-layout``, ``index.json`` and
``blobs/sha256/``, gzip layers, every blob named by its digest.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from engine.errors import ImageError
from engine.oci import skopeo
from engine.oci.config import DEFAULT_PATH, host_architecture
from engine.oci.layout import REF_ANNOTATION
from engine.oci.reference import LocalSource, parse_source

_CHUNK = 1 << 20
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class RunConfig:
    """The ``config`` object an exported image carries."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ("/bin/sh",)
    env: tuple[str, ...] = (f"PATH={DEFAULT_PATH}",)
    working_dir: str = "/"
    user: str = ""
    architecture: str = ""  # empty: this host's

    def document(self, diff_ids: Sequence[str]) -> dict[str, object]:
        run: dict[str, object] = {"Env": list(self.env), "WorkingDir": self.working_dir}
        if self.entrypoint:
            run["Entrypoint"] = list(self.entrypoint)
        if self.cmd:
            run["Cmd"] = list(self.cmd)
        if self.user:
            run["User"] = self.user
        return {"architecture": self.architecture or host_architecture(), "os": "linux",
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "config": run,
                "rootfs": {"type": "layers", "diff_ids": list(diff_ids)}}


def _write_blob(blobs: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


class _HashingWriter:
    """A write-only file that hashes and counts what it passes to ``raw`` (the gzip blob's
    digest is known when it is written, not by reading it back)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _gzip_layer(tar: Path, blobs: Path, level: int) -> tuple[dict[str, object], str]:
    """The gzip blob of the tar at ``tar``: its descriptor and the tar's own digest (diff_id)."""
    raw = hashlib.sha256()
    partial = blobs / f".layer-{os.getpid()}"
    with open(tar, "rb") as source, open(partial, "wb") as out:
        blob = _HashingWriter(out)
        with gzip.GzipFile(fileobj=blob, mode="wb", compresslevel=level, mtime=0) as packed:
            while chunk := source.read(_CHUNK):
                raw.update(chunk)
                packed.write(chunk)
    digest = blob.digest.hexdigest()
    os.replace(partial, blobs / digest)
    return ({"mediaType": LAYER_TYPE, "digest": f"sha256:{digest}", "size": blob.size}, f"sha256:{raw.hexdigest()}")


def write_layout(dest: Path, layers: Sequence[Path], config: RunConfig, *, tag: str = "latest",
                 compresslevel: int = 6) -> str:
    """An OCI layout at ``dest`` (created; must not exist) holding one image of ``layers``
    (uncompressed tars, bottom first) tagged ``tag``; the manifest's digest."""
    if dest.exists():
        raise ImageError(f"{dest} already exists: an image layout is written into a new folder")
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    descriptors, diff_ids = [], []
    for tar in layers:
        descriptor, diff_id = _gzip_layer(tar, blobs, compresslevel)
        descriptors.append(descriptor)
        diff_ids.append(diff_id)
    config_blob = _write_blob(blobs, json.dumps(config.document(diff_ids), sort_keys=True).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_blob},
                "layers": descriptors}
    manifest_blob = _write_blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                                 **manifest_blob, "annotations": {REF_ANNOTATION: tag}}]}
    (dest / "index.json").write_text(json.dumps(index))
    (dest / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return str(manifest_blob["digest"])


def export_layers(layers: Sequence[Path], config: RunConfig, destination: str, *, scratch: Path,
                  compresslevel: int = 6) -> str:
    """Write an image of ``layers`` to ``destination``: ``oci:DIR[:TAG]`` or
    ``docker-archive:FILE[:NAME:TAG]``; the manifest digest of the layout written first."""
    target = parse_source(destination)
    if not isinstance(target, LocalSource):
        raise ImageError(f"export to {destination!r}: give oci:DIR[:TAG] or docker-archive:FILE "
                         "(push the result with `skopeo copy`)")
    if target.transport == "oci":
        return write_layout(target.path, layers, config, tag=target.tag or "latest", compresslevel=compresslevel)
    layout = scratch / "export-layout"
    shutil.rmtree(layout, ignore_errors=True)
    digest = write_layout(layout, layers, config, compresslevel=compresslevel)
    try:
        skopeo.copy(f"oci:{layout}:latest", destination, what=None)
    finally:
        shutil.rmtree(layout, ignore_errors=True)
    return digest
