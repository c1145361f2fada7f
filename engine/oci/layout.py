"""Reading an image folder: an OCI image layout (``oci:DIR``: its index, the manifest for this
host's platform) or skopeo's ``dir:`` transport (one manifest, kept byte for byte, so its digest
is the registry's even for a Docker-format image, which an ``oci:`` copy would convert), then
the config and the layer blobs, every blob checked against the digest and size its descriptor
names. Sans-IO apart from reading the folder.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import ImageError
from engine.oci.config import host_architecture

REF_ANNOTATION = "org.opencontainers.image.ref.name"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_MAX_JSON = 8 << 20  # a manifest or config bigger than this is not one


@dataclass(frozen=True)
class Descriptor:
    """A blob named by digest, size and media type."""

    media_type: str
    digest: str
    size: int

    @classmethod
    def of(cls, value: object, where: str) -> Descriptor:
        if not isinstance(value, dict):
            raise ImageError(f"{where}: a descriptor is not a JSON object")
        digest, size, media = value.get("digest"), value.get("size"), value.get("mediaType", "")
        if not isinstance(digest, str) or not _DIGEST.match(digest):
            raise ImageError(f"{where}: digest {digest!r} is not a sha256 digest")
        if not isinstance(size, int) or size < 0:
            raise ImageError(f"{where}: descriptor of {digest} has no valid size")
        return cls(str(media), digest, size)


@dataclass(frozen=True)
class Manifest:
    """One image's manifest: its digest, the config's descriptor and the layers, bottom first."""

    digest: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


class Layout:
    """An OCI image layout folder, or a skopeo ``dir:`` folder (``manifest.json`` + blobs)."""

    def __init__(self, root: Path, where: str) -> None:
        self.root = root
        self.where = where
        self.flat = (root / "manifest.json").is_file() and (root / "version").is_file()  # skopeo's dir:
        if not self.flat and (not (root / "oci-layout").is_file() or not (root / "index.json").is_file()):
            raise ImageError(f"{where}: {root} is not an OCI image layout (no oci-layout or index.json)")

    def blob_path(self, digest: str) -> Path:
        match = _DIGEST.match(digest)
        if match is None:
            raise ImageError(f"{self.where}: {digest!r} is not a sha256 digest")
        if self.flat:
            return self.root / match.group(1)
        return self.root / "blobs" / "sha256" / match.group(1)

    def read_json(self, descriptor: Descriptor) -> Any:
        """The blob's JSON, after its digest and size were checked."""
        if descriptor.size > _MAX_JSON:
            raise ImageError(f"{self.where}: {descriptor.digest} claims {descriptor.size} bytes, too big for a manifest or config")
        path = self.blob_path(descriptor.digest)
        try:
            data = path.read_bytes()
        except OSError as err:
            raise ImageError(f"{self.where}: blob {descriptor.digest} is missing: {err.strerror}") from None
        check_blob(data, descriptor, self.where)
        try:
            return json.loads(data)
        except ValueError as err:
            raise ImageError(f"{self.where}: blob {descriptor.digest} is not JSON: {err}") from None

    def manifest(self, tag: str | None = None) -> Manifest:
        """The image manifest for this host's platform: the index entry tagged ``tag`` (or its only
        entry), through an image index or manifest list if that is what it names. A ``dir:``
        folder has one manifest, ``manifest.json``, whose digest is that of its bytes."""
        if self.flat:
            data = (self.root / "manifest.json").read_bytes()
            try:
                document = json.loads(data)
            except ValueError as err:
                raise ImageError(f"{self.where}: manifest.json is not JSON: {err}") from None
            media = str(document.get("mediaType", "")) if isinstance(document, dict) else ""
            return self._of(document, Descriptor(media, "sha256:" + hashlib.sha256(data).hexdigest(), len(data)), 0)
        try:
            index = json.loads((self.root / "index.json").read_text())
        except (OSError, ValueError) as err:
            raise ImageError(f"{self.where}: index.json is unreadable: {err}") from None
        entries = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ImageError(f"{self.where}: index.json lists no manifests")
        if tag is not None:
            chosen = [e for e in entries if isinstance(e, dict) and (e.get("annotations") or {}).get(REF_ANNOTATION) == tag]
            if not chosen:
                raise ImageError(f"{self.where}: the layout has no image tagged {tag!r}")
        elif len(entries) > 1:
            tags = sorted(str((e.get("annotations") or {}).get(REF_ANNOTATION, "?")) for e in entries if isinstance(e, dict))
            raise ImageError(f"{self.where}: the layout holds {len(entries)} images ({', '.join(tags)}): name one with oci:PATH:TAG")
        else:
            chosen = entries
        return self._resolve(Descriptor.of(chosen[0], f"{self.where}: index.json"), depth=0)

    def _resolve(self, descriptor: Descriptor, depth: int) -> Manifest:
        return self._of(self.read_json(descriptor), descriptor, depth)

    def _of(self, document: Any, descriptor: Descriptor, depth: int) -> Manifest:
        media = descriptor.media_type or (document.get("mediaType", "") if isinstance(document, dict) else "")
        if not isinstance(document, dict):
            raise ImageError(f"{self.where}: manifest {descriptor.digest} is not a JSON object")
        if media in INDEX_TYPES or "manifests" in document:
            if depth > 2:
                raise ImageError(f"{self.where}: image indexes nest too deeply")
            return self._resolve(self._platform_entry(document, descriptor.digest), depth + 1)
        if media and media not in MANIFEST_TYPES:
            raise ImageError(f"{self.where}: {descriptor.digest} has media type {media!r}, not an image manifest")
        config = Descriptor.of(document.get("config"), f"{self.where}: manifest {descriptor.digest} config")
        layers = document.get("layers")
        if not isinstance(layers, list):
            raise ImageError(f"{self.where}: manifest {descriptor.digest} has no layers list")
        return Manifest(descriptor.digest, config,
                        tuple(Descriptor.of(layer, f"{self.where}: layer {n}") for n, layer in enumerate(layers)))

    def _platform_entry(self, index: dict[str, Any], digest: str) -> Descriptor:
        arch = host_architecture()
        found: list[str] = []
        for entry in index.get("manifests") or []:
            platform = entry.get("platform") if isinstance(entry, dict) else None
            if isinstance(platform, dict):
                found.append(f"{platform.get('os')}/{platform.get('architecture')}")
                if platform.get("os") == "linux" and platform.get("architecture") == arch:
                    return Descriptor.of(entry, f"{self.where}: index {digest}")
        raise ImageError(f"{self.where}: the image index has no linux/{arch} image (it has {', '.join(found) or 'none'})")


def check_blob(data: bytes, descriptor: Descriptor, where: str) -> None:
    """ImageError unless ``data`` is what ``descriptor`` names (size, then sha256)."""
    if len(data) != descriptor.size:
        raise ImageError(f"{where}: blob {descriptor.digest} has {len(data)} bytes, its descriptor says {descriptor.size}")
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != descriptor.digest:
        raise ImageError(f"{where}: blob {descriptor.digest} does not match its digest (its content hashes to {actual})")
