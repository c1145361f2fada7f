"""The sandbox image builder: bad input gives clear errors, a damaged image is rebuilt, a change
of our own files rebuilds from the cached tree. Each test builds in its own cache folder; the
python3 tree is copied from the real cache (or made there once) so no test waits for mmdebstrap
twice."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import engine
from engine.image import sandbox
from engine.image.sandbox import check_packages, host_archive, sandbox_image, tree_key


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    real_trees = sandbox.sandbox_dir() / "trees"
    sandbox_image()  # the real cache's python3 tree (and image) exists from here on
    root = tmp_path / "sandbox"
    (root / "trees").mkdir(parents=True)
    key = tree_key(host_archive(), ("python3",))
    shutil.copyfile(real_trees / f"{key}.tar", root / "trees" / f"{key}.tar")
    monkeypatch.setattr(sandbox, "sandbox_dir", lambda: root)
    return root


def test_package_names_are_checked_and_python3_is_always_in() -> None:
    assert check_packages(["git", "curl", "git"]) == ("curl", "git", "python3")
    with pytest.raises(engine.ImageError, match="'bad name'"):
        check_packages(["bad name"])
    with pytest.raises(engine.ImageError, match="base 'alpine'"):
        sandbox_image("alpine")


def test_the_host_archive_is_read_from_apts_sources() -> None:
    archive = host_archive()
    assert archive.mirror.startswith("http") and archive.suite == "bookworm"
    assert host_archive("http://mirror.example/debian/").mirror == "http://mirror.example/debian"


def test_not_built_and_build_false_says_how(private_cache: Path) -> None:
    with pytest.raises(engine.ImageError, match="not built yet.*image build debian"):
        sandbox_image(build=False)


def test_a_truncated_image_is_noticed_and_rebuilt(private_cache: Path) -> None:
    stages: list[tuple[str, float]] = []
    image = sandbox_image(progress=lambda stage, fraction: stages.append((stage, fraction)))
    assert image.rootfs.is_relative_to(private_cache) and image.fs_format == "erofs"
    assert stages[-1] == ("Sandbox image ready", 1.0)
    fractions = [f for _s, f in stages]
    assert fractions == sorted(fractions)
    size = image.rootfs.stat().st_size
    with open(image.rootfs, "r+b") as file:
        file.truncate(size // 2)
    again = sandbox_image()
    assert again.rootfs == image.rootfs and again.rootfs.stat().st_size == size
    # A same-size corruption is caught when asked to verify.
    with open(image.rootfs, "r+b") as file:
        file.seek(size // 2)
        file.write(b"\xff" * 4096)
    assert sandbox_image(build=True, verify=True).rootfs.stat().st_size == size
    assert sandbox_image(verify=True).key == image.key
    assert not [p for p in private_cache.iterdir() if p.name.startswith((".build-", ".old-"))]


def test_a_change_of_our_files_makes_a_new_image_from_the_cached_tree(
    private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = sandbox_image()
    files = sandbox.our_files()
    files["etc/capsa-test"] = (b"changed\n", 0o644)
    monkeypatch.setattr(sandbox, "our_files", lambda: files)
    second = sandbox_image()
    assert second.key != first.key and second.rootfs.exists()
    assert len(list((private_cache / "trees").iterdir())) == 1  # no second mmdebstrap run


def test_an_unknown_package_is_named(private_cache: Path) -> None:
    with pytest.raises(engine.ImageError, match="no package capsa-no-such-package"):
        sandbox_image(packages=["capsa-no-such-package"])
    assert not [p for p in (private_cache / "trees").iterdir() if p.name.startswith(".tree-")]


def test_an_unreachable_archive_is_a_clear_error(private_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sandbox.MIRROR_ENV, "http://127.0.0.1:9/debian")
    with pytest.raises(engine.ImageError, match=r"cannot reach the Debian archive http://127.0.0.1:9/debian"):
        sandbox_image()
