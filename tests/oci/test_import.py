"""Importing OCI images into the layer cache (engine/oci/pull.py) end to end: layouts written by
engine.oci.export, imported into a store in tmp_path, the layer files mounted by the kernel,
and the refusals that must leave nothing cached (bad blobs, another architecture, a full disk,
damaged docker archives). Names, sharing and removal are in test_store.py.
Runs as root (unpacking keeps owners and device nodes; the mount tests mount)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from engine.errors import ImageError
from engine.oci.config import host_architecture
from engine.oci.export import RunConfig, write_layout
from engine.oci.pull import import_image, pull_image
from engine.oci.store import OciStore
from tests.oci.images import layer_tar
from tests.oci.imports import (Layouts, assert_nothing_cached, blob_of_layer, docker_archive, flip_byte, layer_files,
                               loop_backing_files, mounted_tmpfs, mounts_under, run, scratch_left, store_in)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="importing an image keeps owners and device nodes: needs root")


# -- the kernel's view of an imported image

class Mounts:
    """Mount points made by a test, unmounted in reverse order by ``close``."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def mount(self, *argv: str) -> subprocess.CompletedProcess[str]:
        done = run("mount", *argv)
        if done.returncode == 0:
            self.points.append(Path(argv[-1]))
        return done

    def close(self) -> None:
        for point in reversed(self.points):
            if run("umount", str(point)).returncode != 0:
                run("umount", "-l", str(point))
        self.points.clear()


def _kernel_can_mount(work: Path, mounts: Mounts) -> str | None:
    """Why this kernel cannot mount erofs by loop or overlayfs here, or None if it can."""
    tree, probe, lower, upper, workdir, merged = (work / n for n in ("tree", "probe", "lower", "upper", "wd", "merged"))
    for folder in (tree, probe, lower, upper, workdir, merged):
        folder.mkdir(parents=True)
    (tree / "f").write_text("probe")
    image = work / "probe.erofs"
    made = run("mkfs.erofs", "--quiet", str(image), str(tree))
    if made.returncode != 0:
        return f"mkfs.erofs cannot make a probe image: {made.stderr.strip()}"
    done = mounts.mount("-t", "erofs", "-o", "ro,loop", str(image), str(probe))
    if done.returncode != 0:
        return f"erofs over a loop device is unavailable: {done.stderr.strip()}"
    done = mounts.mount("-t", "overlay", "overlay", "-o",
                        f"lowerdir={probe}:{lower},upperdir={upper},workdir={workdir}", str(merged))
    if done.returncode != 0:
        return f"overlayfs is unavailable: {done.stderr.strip()}"
    return None


def test_kernel_overlay_of_imported_layers_hides_whiteouts_and_opaque_folders(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    bottom = layer_tar(work / "bottom.tar", [
        ("etc", None, 0o755, 0),
        ("etc/gone", b"whited out above\n", 0o644, 0),
        ("etc/kept", b"still here\n", 0o644, 0),
        ("data", None, 0o755, 0),
        ("data/old1", b"hidden by the opaque folder\n", 0o644, 0),
        ("data/sub", None, 0o755, 0),
        ("data/sub/old2", b"hidden too\n", 0o644, 0),
        ("top.txt", b"bottom layer\n", 0o644, 0),
        ("usr/bin/tool", b"#!/bin/sh\n", 0o4755, 0),
    ])
    top = layer_tar(work / "top.tar", [
        ("data", None, 0o755, 0),
        ("data/.wh..wh..opq", b"", 0o644, 0),
        ("data/new", b"from the top layer\n", 0o644, 1000),
        ("etc/added", b"new in the top layer\n", 0o600, 0),
    ], whiteouts=["etc/gone"])
    layout = tmp_path / "layout"
    write_layout(layout, [bottom, top], RunConfig(), tag="1", compresslevel=1)
    image = pull_image(f"oci:{layout}:1", store=store_in(tmp_path))
    assert len(image.layer_files) == 2 and all(f.is_file() for f in image.layer_files)

    loops_before = loop_backing_files()
    mounts = Mounts()
    try:
        reason = _kernel_can_mount(tmp_path / "probe", mounts)
        mounts.close()
        if reason is not None:
            pytest.fail(f"cannot mount erofs/overlay here (the guests' own formats): {reason}")
        l1, l2, upper, workdir, root = (tmp_path / n for n in ("l1", "l2", "upper", "wd", "root"))
        for folder in (l1, l2, upper, workdir, root):
            folder.mkdir()
        for layer_file, point in zip(image.layer_files, (l1, l2)):
            done = mounts.mount("-t", "erofs", "-o", "ro,loop", str(layer_file), str(point))
            assert done.returncode == 0, f"the kernel refused the layer file {layer_file}: {done.stderr}"
        # The top layer's own file system holds overlayfs's markers.
        gone = os.lstat(l2 / "etc/gone")
        assert (gone.st_mode & 0o170000) == 0o020000 and gone.st_rdev == os.makedev(0, 0)
        assert os.getxattr(l2 / "data", "trusted.overlay.opaque") == b"y"
        done = mounts.mount("-t", "overlay", "overlay", "-o",
                            f"lowerdir={l2}:{l1},upperdir={upper},workdir={workdir}", str(root))
        assert done.returncode == 0, f"overlayfs refused the image's layers: {done.stderr}"

        assert not (root / "etc/gone").exists()
        assert sorted(os.listdir(root / "etc")) == ["added", "kept"]
        assert (root / "etc/kept").read_text() == "still here\n"
        assert sorted(os.listdir(root / "data")) == ["new"]  # opaque: nothing of the bottom's data/
        assert not (root / "data/old1").exists() and not (root / "data/sub").exists()
        assert (root / "data/new").read_text() == "from the top layer\n"
        assert os.stat(root / "data/new").st_uid == 1000
        assert (root / "top.txt").read_text() == "bottom layer\n"
        assert os.stat(root / "usr/bin/tool").st_mode & 0o7777 == 0o4755
    finally:
        mounts.close()
    assert mounts_under(tmp_path) == [], "a mount was left behind"
    deadline = time.monotonic() + 5
    while any(str(tmp_path) in f for f in loop_backing_files()) and time.monotonic() < deadline:
        time.sleep(0.1)  # a loop device is detached once its last user has let go
    ours = [f for f in loop_backing_files() if str(tmp_path) in f]
    assert ours == [], f"loop devices left behind: {ours}"
    assert [f for f in loop_backing_files() if f not in loops_before] == [], "a loop device was left attached"


# -- refusals that leave nothing cached

def test_altered_layer_blob_is_refused_naming_its_digest(tmp_path: Path, layouts: Layouts) -> None:
    blob = blob_of_layer(layouts.a, 1)  # the top layer: the base is unpacked and built before it fails
    digest = f"sha256:{blob.name}"
    flip_byte(blob, 4)  # the gzip header's mtime: still a valid gzip of the same tar, but not the same blob
    store = store_in(tmp_path)
    with pytest.raises(ImageError) as caught:
        pull_image(f"oci:{layouts.a}:a", store=store)
    message = str(caught.value)
    assert digest in message
    assert "does not match its digest" in message
    assert_nothing_cached(store)


def test_corrupted_layer_blob_is_refused_naming_its_digest(tmp_path: Path, layouts: Layouts) -> None:
    blob = blob_of_layer(layouts.a, 0)
    digest = f"sha256:{blob.name}"
    flip_byte(blob, blob.stat().st_size // 2)  # inside the compressed data
    store = store_in(tmp_path)
    with pytest.raises(ImageError) as caught:
        pull_image(f"oci:{layouts.a}:a", store=store)
    assert digest.removeprefix("sha256:")[:12] in str(caught.value)
    assert_nothing_cached(store)


def test_altered_blob_does_not_touch_what_was_cached_before(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    good = pull_image(f"oci:{layouts.b}:b", store=store)
    before = layer_files(store)
    flip_byte(blob_of_layer(layouts.a, 1), 4)
    with pytest.raises(ImageError, match="does not match its digest"):
        pull_image(f"oci:{layouts.a}:a", store=store)
    assert layer_files(store) == before
    assert [image.id for image in store.list_images()] == [good.id]
    assert scratch_left(store) == []


def test_missing_layer_blob_is_refused(tmp_path: Path, layouts: Layouts) -> None:
    blob = blob_of_layer(layouts.a, 1)
    blob.unlink()
    store = store_in(tmp_path)
    with pytest.raises(ImageError, match="missing") as caught:
        pull_image(f"oci:{layouts.a}:a", store=store)
    assert blob.name in str(caught.value)
    assert_nothing_cached(store)


def test_an_image_for_another_architecture_is_refused_and_nothing_cached(tmp_path: Path) -> None:
    foreign = "arm64" if host_architecture() != "arm64" else "amd64"
    work = tmp_path / "work"
    work.mkdir()
    tar = layer_tar(work / "one.tar", [("bin", None, 0o755, 0), ("bin/tool", b"\x7fELF foreign\n", 0o755, 0)])
    layout = tmp_path / "layout"
    write_layout(layout, [tar], RunConfig(architecture=foreign), tag="1", compresslevel=1)
    store = store_in(tmp_path)
    with pytest.raises(ImageError, match=foreign):
        pull_image(f"oci:{layout}:1", store=store)
    assert_nothing_cached(store)


def test_wrong_tag_of_a_layout_is_refused(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    with pytest.raises(ImageError, match="'nope'"):
        pull_image(f"oci:{layouts.a}:nope", store=store)
    assert_nothing_cached(store)


def _big_layout(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    tar = layer_tar(work / "big.tar", [("opt", None, 0o755, 0), ("opt/random.bin", os.urandom(8 << 20), 0o644, 0)])
    layout = tmp_path / "layout-big"
    write_layout(layout, [tar], RunConfig(), tag="1", compresslevel=1)
    tar.unlink()
    return layout


def test_full_disk_is_reported_and_undone(tmp_path: Path) -> None:
    layout = _big_layout(tmp_path)
    with mounted_tmpfs(tmp_path / "small", "2m") as root:
        store = OciStore(root)
        with pytest.raises(ImageError) as caught:
            pull_image(f"oci:{layout}:1", store=store)
        assert "no space" in str(caught.value).lower()
        assert_nothing_cached(store)
    assert mounts_under(tmp_path) == []


def test_full_disk_while_skopeo_copies_is_reported_and_undone(tmp_path: Path) -> None:
    archive = docker_archive(_big_layout(tmp_path), "1", tmp_path / "big-docker.tar")
    with mounted_tmpfs(tmp_path / "small", "2m") as root:
        store = OciStore(root)
        with pytest.raises(ImageError) as caught:
            import_image(archive, store=store)
        assert "no space" in str(caught.value).lower()
        assert_nothing_cached(store)
    assert mounts_under(tmp_path) == []


def test_full_disk_while_skopeo_copies_does_not_blame_the_archive(tmp_path: Path) -> None:
    archive = docker_archive(_big_layout(tmp_path), "1", tmp_path / "big-docker.tar")
    with mounted_tmpfs(tmp_path / "small", "2m") as root:
        with pytest.raises(ImageError) as caught:
            import_image(archive, store=OciStore(root))
    assert "not a complete, readable" not in str(caught.value)


# -- docker-archive

def test_docker_archive_import_has_the_same_layers_and_config(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    original = pull_image(f"oci:{layouts.a}:a", store=store)
    usage = store.disk_usage()
    archive = docker_archive(layouts.a, "a", tmp_path / "a-docker.tar")
    imported = import_image(archive, store=store, tag="from-archive:1")
    assert imported.diff_ids == original.diff_ids
    assert imported.layer_files == original.layer_files
    assert imported.config == original.config
    assert store.disk_usage() == usage  # every layer was already cached
    assert scratch_left(store) == []
    hit = store.find("from-archive:1")
    assert hit is not None and hit.id == imported.id


def test_docker_archive_keeps_the_config_digest(tmp_path: Path, layouts: Layouts) -> None:
    """What the archive itself says the image id is (``docker load`` would report it)."""
    original = pull_image(f"oci:{layouts.a}:a", store=store_in(tmp_path))
    archive = docker_archive(layouts.a, "a", tmp_path / "a-docker.tar")
    done = run("tar", "-xOf", str(archive), "manifest.json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)[0]["Config"] == f"{original.id.removeprefix('sha256:')}.json"


def test_docker_archive_round_trip_gives_the_same_image_id(tmp_path: Path, layouts: Layouts) -> None:
    original = pull_image(f"oci:{layouts.a}:a", store=store_in(tmp_path))
    archive = docker_archive(layouts.a, "a", tmp_path / "a-docker.tar")
    imported = import_image(archive, store=OciStore(tmp_path / "store2"))
    assert imported.id == original.id


def test_truncated_docker_archive_is_refused_naming_the_file(tmp_path: Path, layouts: Layouts) -> None:
    archive = docker_archive(layouts.a, "a", tmp_path / "a-docker.tar")
    data = archive.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: len(data) // 2])
    store = store_in(tmp_path)
    with pytest.raises(ImageError) as caught:
        import_image(cut, store=store)
    assert str(cut) in str(caught.value)
    assert_nothing_cached(store)


def test_docker_archive_with_a_damaged_layer_is_refused(tmp_path: Path, layouts: Layouts) -> None:
    """Truncated or not, an archive skopeo cannot read fully caches nothing."""
    archive = docker_archive(layouts.a, "a", tmp_path / "a-docker.tar")
    data = bytearray(archive.read_bytes())
    first_layer = data.find(b"etc/os-release")  # the base layer's tar sits inside the archive
    assert first_layer > 0
    data[first_layer + 600] ^= 0xFF  # inside the layer's file data: its digest no longer matches
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(bytes(data))
    store = store_in(tmp_path)
    with pytest.raises(ImageError) as caught:
        import_image(damaged, store=store)
    assert str(damaged) in str(caught.value) or "digest" in str(caught.value)
    assert_nothing_cached(store)
