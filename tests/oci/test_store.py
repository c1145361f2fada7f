"""The OCI layer cache (engine/oci/store.py) through real imports: images sharing a base share
its file, records carry the config, names (tags, sources, repo digests, ids, Docker Hub's short
forms) find and move, and removal and pruning delete exactly what no image uses any more."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from engine.errors import ImageError
from engine.oci.config import config_from_json
from engine.oci.export import RunConfig, write_layout
from engine.oci.pull import import_image, import_layout, pull_image
from engine.oci.store import OciStore
from tests.oci.images import layer_tar
from tests.oci.imports import Layouts, layer_files, store_in

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="importing an image keeps owners and device nodes: needs root")


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
