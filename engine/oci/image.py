"""OciImage: an image in the cache, with what it takes to run it (its layer files, bottom first,
and its run config)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.oci.config import ImageConfig


@dataclass(frozen=True)
class OciImage:
    """A pulled or imported image: ``id`` is its config's digest (what Docker calls the image ID)."""

    id: str
    manifest_digest: str
    names: tuple[str, ...]  # e.g. 127.0.0.1:5000/team/app:1; empty once untagged
    repo_digests: tuple[str, ...]  # e.g. 127.0.0.1:5000/team/app@sha256:...
    config: ImageConfig
    diff_ids: tuple[str, ...]  # the layers, bottom first
    layer_files: tuple[Path, ...]  # the read-only erofs of each layer, in the same order
    size: int  # bytes its layer files take on disk (shared layers counted in each image)
    created_at: float

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    @property
    def display_name(self) -> str:
        return self.names[0] if self.names else f"<untagged {self.short_id}>"
