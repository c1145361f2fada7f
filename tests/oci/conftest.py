"""Session fixtures for the OCI tests: one image cache for the run (CAPSA_OCI_CACHE in a temp
folder, so the user's cache is never touched), the test images built once from our Debian
tree, and a real registry on loopback with them pushed."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.oci.store import CACHE_ENV
from tests.oci.images import app_image, noshell_image
from tests.oci.imports import layouts  # noqa: F401  # a fixture of the import and store tests
from tests.oci.registry import push, running_registry


@dataclass(frozen=True)
class Registry:
    """The session's registry and what is pushed to it."""

    address: str  # 127.0.0.1:PORT
    app: str  # the app image by tag: ADDRESS/test/app:1
    noshell: str  # ADDRESS/test/noshell:1
    app_layout: Path
    noshell_layout: Path


@pytest.fixture(scope="session")
def oci_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The run's own OCI cache (every OCI test and sandbox of the run pulls into it)."""
    folder = tmp_path_factory.mktemp("oci-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, oci_cache: Path) -> Iterator[Registry]:
    """docker-registry on 127.0.0.1 holding the app and no-shell images."""
    work = tmp_path_factory.mktemp("oci-images")
    app, noshell = app_image(work), noshell_image(work)
    with running_registry(work / "registry") as address:
        yield Registry(address, push(app, "1", address, "test/app"), push(noshell, "1", address, "test/noshell"),
                       app, noshell)
