"""Image references and local sources (engine/oci/reference.py): what Docker and skopeo accept,
normalised the way they normalise it, and an ImageError naming the bad part otherwise."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from engine.errors import ImageError
from engine.oci.reference import ImageReference, LocalSource, parse_reference, parse_source, source_of_path

DIGEST = "sha256:" + "0123456789abcdef" * 4


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


# -- registry references

def test_official_image_with_tag_is_on_docker_hub_under_library() -> None:
    ref = parse_reference("python:3.11")
    assert ref == ImageReference("docker.io", "library/python", "3.11", None)
    assert ref.name == "docker.io/library/python"
    assert str(ref) == "docker.io/library/python:3.11"
    assert ref.skopeo() == "docker://docker.io/library/python:3.11"


def test_no_tag_means_latest() -> None:
    ref = parse_reference("ubuntu")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("docker.io", "library/ubuntu", "latest", None)
    assert str(ref) == "docker.io/library/ubuntu:latest"


def test_docker_hub_user_repository_is_not_under_library() -> None:
    ref = parse_reference("team/app:2")
    assert (ref.registry, ref.repository, ref.tag) == ("docker.io", "team/app", "2")


def test_registry_with_port_and_digest() -> None:
    ref = parse_reference(f"127.0.0.1:5000/team/app@{DIGEST}")
    assert ref.registry == "127.0.0.1:5000"
    assert ref.repository == "team/app"
    assert ref.digest == DIGEST
    assert ref.tag is None  # a digest alone does not add the default tag
    assert str(ref) == f"127.0.0.1:5000/team/app@{DIGEST}"


def test_tag_and_digest_together() -> None:
    ref = parse_reference(f"quay.io/org/tool:1.0@{DIGEST}")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("quay.io", "org/tool", "1.0", DIGEST)
    assert str(ref) == f"quay.io/org/tool:1.0@{DIGEST}"


def test_localhost_is_a_registry() -> None:
    ref = parse_reference("localhost/x:1")
    assert (ref.registry, ref.repository, ref.tag) == ("localhost", "x", "1")


def test_ipv6_registry_with_port() -> None:
    ref = parse_reference("[::1]:5000/a:b")
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == ("[::1]:5000", "a", "b", None)


def test_ipv6_registry_without_tag_does_not_take_the_port_for_a_tag() -> None:
    ref = parse_reference("[::1]:5000/a")
    assert (ref.registry, ref.repository, ref.tag) == ("[::1]:5000", "a", "latest")


def test_docker_transport_prefix_is_accepted() -> None:
    assert parse_reference("docker://python:3.11") == parse_reference("python:3.11")


@pytest.mark.parametrize("text, bad_part", [
    ("", "empty"),
    ("python 3", "spaces"),
    (" python", "spaces"),
    ("Python:3", "'Python'"),
    ("a:-x", "'-x'"),
    ("a@sha256:zz", "'sha256:zz'"),
    ("a@md5:" + "0" * 32, "sha256"),
    ("team//app", "no repository name"),
    ("bad_host!:5000/app", "'bad_host!:5000'"),
])
def test_bad_references_are_refused_naming_the_bad_part(text: str, bad_part: str) -> None:
    with pytest.raises(ImageError) as caught:
        parse_reference(text)
    assert bad_part in str(caught.value)


def test_an_over_long_tag_is_refused() -> None:
    with pytest.raises(ImageError, match="not a valid tag"):
        parse_reference("app:" + "a" * 129)
    assert parse_reference("app:" + "a" * 128).tag == "a" * 128


# -- local sources

def test_oci_layout_with_tag() -> None:
    assert parse_source("oci:/some/dir:tag") == LocalSource("oci", Path("/some/dir"), "tag")
    assert str(parse_source("oci:/some/dir:tag")) == "oci:/some/dir:tag"


def test_oci_layout_without_tag() -> None:
    source = parse_source("oci:/some/dir")
    assert source == LocalSource("oci", Path("/some/dir"), None)
    assert isinstance(source, LocalSource) and source.skopeo() == "oci:/some/dir"


def test_docker_archive() -> None:
    assert parse_source("docker-archive:/x.tar") == LocalSource("docker-archive", Path("/x.tar"), None)


def test_oci_archive() -> None:
    assert parse_source("oci-archive:/x.tar") == LocalSource("oci-archive", Path("/x.tar"), None)


def test_a_registry_reference_is_not_a_local_source() -> None:
    assert parse_source("localhost:5000/app:1") == ImageReference("localhost:5000", "app", "1", None)


def test_local_transport_without_path_is_refused() -> None:
    with pytest.raises(ImageError, match="names no path") as caught:
        parse_source("docker-archive:")
    assert "docker-archive:" in str(caught.value)


# -- what a path on disk is

def test_folder_with_oci_layout_is_an_oci_source(tmp_path: Path) -> None:
    (tmp_path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    assert source_of_path(tmp_path) == LocalSource("oci", tmp_path)


def test_folder_without_oci_layout_is_refused(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(ImageError, match="no oci-layout file") as caught:
        source_of_path(tmp_path)
    assert str(tmp_path) in str(caught.value)


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        source_of_path(tmp_path / "nothing.tar")


def test_docker_save_tarball(tmp_path: Path) -> None:
    path = _tar(tmp_path / "saved.tar", {"manifest.json": b"[]", "repositories": b"{}"})
    assert source_of_path(path) == LocalSource("docker-archive", path)


def test_oci_archive_tarball_with_dot_slash_names(tmp_path: Path) -> None:
    path = _tar(tmp_path / "image.tar", {"./oci-layout": b"{}", "./index.json": b"{}"})
    assert source_of_path(path) == LocalSource("oci-archive", path)


def test_tarball_that_is_no_image_is_refused(tmp_path: Path) -> None:
    path = _tar(tmp_path / "random.tar", {"hello.txt": b"hello"})
    with pytest.raises(ImageError) as caught:
        source_of_path(path)
    message = str(caught.value)
    assert str(path) in message
    assert "manifest.json" in message and "oci-layout" in message


def test_truncated_tarball_is_refused(tmp_path: Path) -> None:
    whole = _tar(tmp_path / "whole.tar", {"manifest.json": b"[]", "blob": b"x" * 100_000})
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:50_000])
    with pytest.raises(ImageError, match="not a readable image tarball") as caught:
        source_of_path(cut)
    assert str(cut) in str(caught.value)


def test_file_that_is_no_tarball_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a tarball at all\n" * 50)
    with pytest.raises(ImageError, match="not a readable image tarball") as caught:
        source_of_path(path)
    assert str(path) in str(caught.value)
