"""Where an OCI image comes from: a registry reference (``python:3.11``,
``127.0.0.1:5000/team/app@sha256:...``) or a local source (``docker-archive:FILE``,
``oci:FOLDER[:TAG]``, ``oci-archive:FILE``). Sans-IO: a string in, an :class:`ImageSource` or
an ``ImageError`` naming the reference out.

The grammar is the one Docker and skopeo use (distribution's reference package): a first path
component with a dot or a colon, or ``localhost``, is a registry; otherwise the image lives on
Docker Hub (``docker.io``), and a one-component name is under ``library/``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ImageError

DEFAULT_REGISTRY = "docker.io"
DEFAULT_TAG = "latest"
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_REGISTRY = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
                       r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$")
LOCAL_TRANSPORTS = ("docker-archive", "oci", "oci-archive")


@dataclass(frozen=True)
class ImageReference:
    """An image in a registry: ``registry/repository`` and a tag or a digest (or both)."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        """The full name without tag or digest (``docker.io/library/python``)."""
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    def skopeo(self) -> str:
        """The reference as skopeo's ``docker://`` transport takes it."""
        return f"docker://{self}"


@dataclass(frozen=True)
class LocalSource:
    """An image on this machine: a ``docker save`` tarball, an OCI layout folder or its tar."""

    transport: str  # one of LOCAL_TRANSPORTS
    path: Path
    tag: str | None = None  # oci: which tagged manifest of the layout (None: its only one)

    def __str__(self) -> str:
        return f"{self.transport}:{self.path}" + (f":{self.tag}" if self.tag else "")

    def skopeo(self) -> str:
        return str(self)


ImageSource = ImageReference | LocalSource


def parse_reference(text: str) -> ImageReference:
    """``text`` as a registry reference; ImageError saying what is wrong with it."""
    original = text
    if text.startswith("docker://"):
        text = text[len("docker://"):]
    if not text or text != text.strip() or any(c.isspace() for c in text):
        raise ImageError(f"image reference {original!r} is empty or has spaces")
    digest = None
    if "@" in text:
        text, _, digest = text.partition("@")
        if not _DIGEST.match(digest):
            raise ImageError(f"image reference {original!r}: digest {digest!r} is not sha256: and 64 hex digits")
    tag = None
    slash = text.rfind("/")
    colon = text.rfind(":")
    if colon > slash:
        text, tag = text[:colon], text[colon + 1:]
        if not _TAG.match(tag):
            raise ImageError(f"image reference {original!r}: tag {tag!r} is not a valid tag "
                             "(letters, digits, _ . -, at most 128, not starting with . or -)")
    parts = text.split("/")
    registry = DEFAULT_REGISTRY
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost" or parts[0].startswith("[")):
        registry = parts.pop(0)
        if not _REGISTRY.match(registry):
            raise ImageError(f"image reference {original!r}: {registry!r} is not a registry host[:port]")
    if not parts or not all(parts):
        raise ImageError(f"image reference {original!r} has no repository name")
    for part in parts:
        if not _COMPONENT.match(part):
            raise ImageError(f"image reference {original!r}: {part!r} is not a valid repository name component "
                             "(lowercase letters and digits, separated by . _ __ or -)")
    if registry == DEFAULT_REGISTRY and len(parts) == 1:
        parts.insert(0, "library")
    repository = "/".join(parts)
    if len(repository) > 255:
        raise ImageError(f"image reference {original!r}: the repository name is over 255 characters")
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageReference(registry, repository, tag, digest)


def parse_source(text: str) -> ImageSource:
    """A registry reference, or ``docker-archive:PATH`` / ``oci:PATH[:TAG]`` / ``oci-archive:PATH``."""
    transport, sep, rest = text.partition(":")
    if sep and transport in LOCAL_TRANSPORTS:
        if not rest:
            raise ImageError(f"image source {text!r} names no path")
        tag = None
        if transport == "oci":
            path_text, colon, maybe_tag = rest.rpartition(":")
            if colon and _TAG.match(maybe_tag) and "/" not in maybe_tag:
                rest, tag = path_text, maybe_tag
        return LocalSource(transport, Path(rest).expanduser(), tag)
    return parse_reference(text)


def source_of_path(path: Path) -> LocalSource:
    """The transport of a local file or folder (``image import PATH``): an OCI layout folder,
    an OCI layout tar (it has ``oci-layout``) or a ``docker save`` tarball (``manifest.json``)."""
    import tarfile

    if path.is_dir():
        if not (path / "oci-layout").is_file():
            raise ImageError(f"{path} is a folder but not an OCI image layout (it has no oci-layout file)")
        return LocalSource("oci", path)
    if not path.exists():
        raise ImageError(f"{path} does not exist")
    try:
        with tarfile.open(path) as archive:
            names = {name.lstrip("./") for name in archive.getnames()}
    except (tarfile.TarError, OSError, EOFError) as err:
        raise ImageError(f"{path} is not a readable image tarball: {err}") from None
    if "oci-layout" in names:
        return LocalSource("oci-archive", path)
    if "manifest.json" in names:
        return LocalSource("docker-archive", path)
    raise ImageError(f"{path} is a tarball but neither `docker save` output (manifest.json) nor an OCI layout (oci-layout)")
