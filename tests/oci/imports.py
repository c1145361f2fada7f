"""What the OCI import tests share: layouts of two images sharing a base layer (written with
engine.oci.export), a store in the test's folder, what the cache holds, and the host tools the
tests check with (a tmpfs, loop devices, skopeo's docker-archive)."""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.oci.export import RunConfig, write_layout
from engine.oci.store import OciStore
from tests.oci.images import layer_tar

SKOPEO = "/usr/bin/skopeo"
SCRATCH_PREFIXES = (".unpack-", ".pull-", ".record-")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)


def store_in(tmp_path: Path) -> OciStore:
    return OciStore(tmp_path / "store")


def layer_files(store: OciStore) -> list[Path]:
    return sorted(store.layers.glob("*")) if store.layers.is_dir() else []


def image_records(store: OciStore) -> list[Path]:
    return sorted(store.images.glob("*")) if store.images.is_dir() else []


def scratch_left(store: OciStore) -> list[str]:
    return [p.name for p in store.root.iterdir() if p.name.startswith(SCRATCH_PREFIXES)] if store.root.is_dir() else []


def assert_nothing_cached(store: OciStore) -> None:
    assert layer_files(store) == [], "a layer file was cached"
    assert image_records(store) == [], "an image record was written"
    assert scratch_left(store) == [], "a scratch folder was left behind"
    assert store.list_images() == []


@dataclass(frozen=True)
class Layouts:
    """Two images sharing a base layer, as OCI layout folders."""

    a: Path  # base + top_a, tag "a"
    b: Path  # base + top_b, tag "b"


def base_layer(work: Path) -> Path:
    return layer_tar(work / "base.tar", [
        ("etc", None, 0o755, 0),
        ("etc/os-release", b"ID=test\n", 0o644, 0),
        ("usr", None, 0o755, 0),
        ("usr/share", None, 0o755, 0),
        ("usr/share/blob", os.urandom(64 * 1024), 0o644, 0),  # random: the base is the biggest layer
    ])


@pytest.fixture
def layouts(tmp_path: Path) -> Layouts:
    work = tmp_path / "work"
    work.mkdir()
    base = base_layer(work)
    top_a = layer_tar(work / "top-a.tar", [("srv", None, 0o755, 0), ("srv/a", b"image a\n", 0o644, 0)])
    top_b = layer_tar(work / "top-b.tar", [("srv", None, 0o755, 0), ("srv/b", b"image b\n", 0o644, 0)])
    a, b = tmp_path / "layout-a", tmp_path / "layout-b"
    write_layout(a, [base, top_a], RunConfig(cmd=("/bin/a",)), tag="a", compresslevel=1)
    write_layout(b, [base, top_b], RunConfig(cmd=("/bin/b",)), tag="b", compresslevel=1)
    return Layouts(a, b)


def blob_of_layer(layout: Path, number: int) -> Path:
    """The blob file of layer ``number`` (0: the bottom one) of the layout's only image."""
    blobs = layout / "blobs" / "sha256"
    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads((blobs / index["manifests"][0]["digest"].removeprefix("sha256:")).read_text())
    return blobs / manifest["layers"][number]["digest"].removeprefix("sha256:")


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@contextmanager
def mounted_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    done = run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder))
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs here (the tests run as root): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if run("umount", str(folder)).returncode != 0:
            run("umount", "-l", str(folder))


def mounts_under(path: Path) -> list[str]:
    with open("/proc/self/mounts") as mounts:
        return [line.split()[1] for line in mounts if line.split()[1].startswith(str(path))]


def loop_backing_files() -> list[str]:
    done = run("losetup", "--list", "--noheadings", "--output", "BACK-FILE")
    return sorted(line.strip() for line in done.stdout.splitlines() if line.strip())


def docker_archive(layout: Path, tag: str, dest: Path) -> Path:
    done = run(SKOPEO, "copy", f"oci:{layout}:{tag}", f"docker-archive:{dest}")
    assert done.returncode == 0, done.stderr
    return dest
