"""Importing OCI images into the layer cache (engine/oci/pull.py, store.py) end to end: layouts
written by engine.oci.export, imported into a store in tmp_path, the layer files mounted by the
kernel, shared layers, names, removal, and the refusals that must leave nothing cached.
Runs as root (unpacking keeps owners and device nodes; the mount tests mount)."""
from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.errors import ImageError
from engine.oci.config import config_from_json
from engine.oci.export import RunConfig, write_layout
from engine.oci.pull import import_image, import_layout, pull_image
from engine.oci.store import OciStore
from tests.oci.images import layer_tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="importing an image keeps owners and device nodes: needs root")

SKOPEO = "/usr/bin/skopeo"
SCRATCH_PREFIXES = (".unpack-", ".pull-", ".record-")


# -- helpers

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
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
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
            pytest.skip(f"cannot mount erofs/overlay here: {reason}")
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


# -- shared layers, names, removal

def test_images_sharing_a_base_layer_share_its_file(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    a = pull_image(f"oci:{layouts.a}:a", store=store)
    b = pull_image(f"oci:{layouts.b}:b", store=store)
    assert a.id != b.id
    assert a.diff_ids[0] == b.diff_ids[0] and a.diff_ids[1] != b.diff_ids[1]
    assert a.layer_files[0] == b.layer_files[0]
    assert len(layer_files(store)) == 3  # the base once, and one top layer each
    assert len(list(store.layers.glob(a.diff_ids[0].removeprefix("sha256:") + "*"))) == 1
    per_image = sum(f.stat().st_size for image in (a, b) for f in image.layer_files)
    assert store.disk_usage() < per_image
    assert store.disk_usage() == sum(f.stat().st_size for f in layer_files(store))
    assert {image.id for image in store.list_images()} == {a.id, b.id}
    assert store.list_images()[0].id == b.id  # newest first


def test_image_record_carries_the_config(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    tar = layer_tar(work / "one.tar", [("app", None, 0o755, 1000), ("app/main.py", b"print(1)\n", 0o644, 1000)])
    layout = tmp_path / "layout"
    digest = write_layout(layout, [tar], RunConfig(entrypoint=("python3",), cmd=("/app/main.py",),
                                                   env=("GREETING=hi",), working_dir="/app", user="app"), tag="1")
    store = store_in(tmp_path)
    image = pull_image(f"oci:{layout}:1", store=store)
    assert image.manifest_digest == digest
    assert image.config.command() == ["python3", "/app/main.py"]
    assert image.config.environment()["GREETING"] == "hi"
    assert (image.config.working_dir, image.config.user) == ("/app", "app")
    found = store.find(image.id)
    assert found is not None and found.config == image.config  # as read back from the record
    record = json.loads((store.images / f"{image.id.removeprefix('sha256:')}.json").read_text())
    assert config_from_json(record["config"]) == image.config


def test_importing_the_same_image_twice_is_one_image(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    first = pull_image(f"oci:{layouts.a}:a", store=store)
    files = {f: f.stat().st_mtime_ns for f in layer_files(store)}
    second = pull_image(f"oci:{layouts.a}:a", store=store)
    assert second.id == first.id and second.created_at == first.created_at
    assert {f: f.stat().st_mtime_ns for f in layer_files(store)} == files  # the cached layers were not rebuilt
    assert len(store.list_images()) == 1


def test_image_size_is_its_layer_files_whatever_was_cached(tmp_path: Path, layouts: Layouts) -> None:
    alone = pull_image(f"oci:{layouts.b}:b", store=OciStore(tmp_path / "alone"))
    assert alone.size == sum(f.stat().st_size for f in alone.layer_files) > 0
    store = store_in(tmp_path)
    pull_image(f"oci:{layouts.a}:a", store=store)  # caches the shared base
    shared = pull_image(f"oci:{layouts.b}:b", store=store)
    assert shared.size == sum(f.stat().st_size for f in shared.layer_files) == alone.size
    again = pull_image(f"oci:{layouts.b}:b", store=store)  # every layer cached now
    assert again.size == alone.size


def test_find_by_name_repo_digest_and_id(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    # What pull_image does after skopeo copied a registry image into its scratch layout.
    image = import_layout(store, layouts.a, "a", where="127.0.0.1:5000/team/app:1",
                          names=("127.0.0.1:5000/team/app:1",), progress=lambda line: None,
                          repository="127.0.0.1:5000/team/app")
    other = pull_image(f"oci:{layouts.b}:b", store=store)
    assert image.names == ("127.0.0.1:5000/team/app:1",)
    assert image.repo_digests == (f"127.0.0.1:5000/team/app@{image.manifest_digest}",)

    def found(name: str) -> str | None:
        hit = store.find(name)
        return hit.id if hit is not None else None

    assert found("127.0.0.1:5000/team/app:1") == image.id
    assert found(f"127.0.0.1:5000/team/app@{image.manifest_digest}") == image.id
    assert found(image.id) == image.id
    assert found(image.short_id) == image.id
    assert len(image.short_id) == 12
    assert found(f"sha256:{image.short_id}") == image.id
    assert found(other.short_id) == other.id
    assert found(image.short_id[:11]) is None  # an id prefix is 12 hex digits at least
    assert found("127.0.0.1:5000/team/app:2") is None
    assert found(f"127.0.0.1:5000/team/other@{image.manifest_digest}") is None


def test_docker_hub_names_match_their_short_form(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    image = import_layout(store, layouts.a, "a", where="python:3.11", names=("docker.io/library/python:3.11",),
                          progress=lambda line: None, repository="docker.io/library/python")
    for name in ("python:3.11", "docker.io/library/python:3.11", f"python@{image.manifest_digest}"):
        hit = store.find(name)
        assert hit is not None and hit.id == image.id, name
    assert store.find("python") is None  # python:latest is another tag


def test_import_with_tag_names_the_image(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    image = import_image(layouts.a, store=store, tag="mine:1")
    assert image.names == ("mine:1",)
    hit = store.find("mine:1")
    assert hit is not None and hit.id == image.id
    assert store.find("mine:2") is None


def test_import_without_tag_is_named_by_its_source(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    image = import_image(layouts.a, store=store)
    assert image.names == (f"oci:{layouts.a.resolve()}",)
    hit = store.find(f"oci:{layouts.a}")
    assert hit is not None and hit.id == image.id


def test_pull_of_a_layout_tag_is_named_by_it(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    image = pull_image(f"oci:{layouts.b}:b", store=store)
    assert image.names == (f"oci:{layouts.b.resolve()}:b",)
    hit = store.find(f"oci:{layouts.b}:b")
    assert hit is not None and hit.id == image.id
    assert store.find(f"oci:{layouts.b}:other") is None


def test_import_tag_is_found_by_its_full_name(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    image = import_image(layouts.a, store=store, tag="mine:1")
    hit = store.find("docker.io/library/mine:1")
    assert hit is not None and hit.id == image.id


def test_a_name_moves_to_the_image_imported_last(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    a = import_image(layouts.a, store=store, tag="app:1")
    b = import_image(layouts.b, store=store, tag="app:1")
    hit = store.find("app:1")
    assert hit is not None and hit.id == b.id
    old = store.find(a.id)
    assert old is not None and old.names == ()


def test_remove_of_a_shared_layer_image_keeps_the_other_images_layers(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    a = import_image(layouts.a, store=store, tag="a:1")
    b = import_image(layouts.b, store=store, tag="b:1")
    removed = store.remove("a:1")
    assert removed.id == a.id
    assert store.find("a:1") is None and store.find(a.id) is None
    assert not a.layer_files[1].exists()  # a's own top layer went with it
    assert all(f.is_file() for f in b.layer_files)  # the shared base stayed for b
    assert [image.id for image in store.list_images()] == [b.id]
    assert len(layer_files(store)) == 2


def test_remove_of_one_name_keeps_the_image(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    import_image(layouts.a, store=store, tag="a:1")
    image = import_image(layouts.a, store=store, tag="a:2")
    assert set(image.names) == {"a:1", "a:2"}
    store.remove("a:1")
    hit = store.find(image.id)
    assert hit is not None and hit.names == ("a:2",)
    assert all(f.is_file() for f in hit.layer_files)


def test_remove_by_id_removes_every_name(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    import_image(layouts.a, store=store, tag="a:1")
    image = import_image(layouts.a, store=store, tag="a:2")
    store.remove(image.short_id)
    assert store.list_images() == [] and layer_files(store) == []


def test_remove_of_an_unknown_name_is_refused(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    pull_image(f"oci:{layouts.a}:a", store=store)
    with pytest.raises(ImageError, match="'nothing:1'"):
        store.remove("nothing:1")
    assert len(store.list_images()) == 1


def test_remove_of_a_name_that_occurs_inside_the_id_only_untags(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    import_image(layouts.a, store=store, tag="keep:1")
    image = store.find("keep:1")
    assert image is not None
    name = image.id.removeprefix("sha256:")[20:24]  # a name made of four hex digits of its own id
    import_image(layouts.a, store=store, tag=name)
    store.remove(name)
    hit = store.find("keep:1")
    assert hit is not None and hit.names == ("keep:1",)


def test_remove_by_repo_digest_removes_that_name(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    image = import_layout(store, layouts.a, "a", where="localhost:5000/app:1", names=("localhost:5000/app:1",),
                          progress=lambda line: None, repository="localhost:5000/app")
    by_digest = f"localhost:5000/app@{image.manifest_digest}"
    store.remove(by_digest)
    assert store.find(by_digest) is None


def test_prune_removes_untagged_images_and_unused_layers(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    old = import_image(layouts.a, store=store, tag="app:1")
    new = import_image(layouts.b, store=store, tag="app:1")  # the name moves: the first image is untagged now
    untagged = store.find(old.id)
    assert untagged is not None and untagged.names == ()
    only_old = old.layer_files[1]
    size = only_old.stat().st_size
    removed, freed = store.prune()
    assert [image.id for image in removed] == [old.id]
    assert freed == size
    assert not only_old.exists()
    assert all(f.is_file() for f in new.layer_files)  # the shared base stayed
    assert [image.id for image in store.list_images()] == [new.id]
    assert store.prune() == ([], 0)  # nothing left to prune


def test_prune_keeps_named_images(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    pull_image(f"oci:{layouts.a}:a", store=store)
    import_image(layouts.b, store=store, tag="b:1")
    files = layer_files(store)
    assert store.prune() == ([], 0)
    assert layer_files(store) == files and len(store.list_images()) == 2


def test_prune_sweeps_a_dead_pulls_scratch(tmp_path: Path, layouts: Layouts) -> None:
    store = store_in(tmp_path)
    import_image(layouts.a, store=store, tag="a:1")  # tagged: prune keeps it
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs
    left = store.root / f".unpack-{dead.pid}-killed"
    (left / "tree-1").mkdir(parents=True)
    store.prune()
    assert not left.exists()
    assert len(store.list_images()) == 1


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


def test_arm64_image_is_refused_and_nothing_cached(tmp_path: Path) -> None:
    if os.uname().machine == "aarch64":
        pytest.skip("this host runs arm64 images")
    work = tmp_path / "work"
    work.mkdir()
    tar = layer_tar(work / "one.tar", [("bin", None, 0o755, 0), ("bin/tool", b"\x7fELF arm64\n", 0o755, 0)])
    layout = tmp_path / "layout"
    write_layout(layout, [tar], RunConfig(architecture="arm64"), tag="1", compresslevel=1)
    store = store_in(tmp_path)
    with pytest.raises(ImageError, match="arm64"):
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
