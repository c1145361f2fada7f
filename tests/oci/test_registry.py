"""Pulling from a real registry on loopback (Debian's docker-registry): by tag and by digest,
config kept, layers shared with what is cached, and each failure named: a registry that is
down, one that refuses our credentials, a tag it does not have, a reference that does not parse."""
from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

import engine
from engine.oci.pull import pull_image
from engine.oci.store import OciStore
from tests.oci.conftest import Registry
from tests.oci.registry import _free_port, push, running_registry


def test_pull_by_tag_then_by_digest_gives_one_image_with_its_config(registry: Registry, tmp_path: Path) -> None:
    store = OciStore(tmp_path / "store")
    lines: list[str] = []
    image = pull_image(registry.app, store=store, tls_verify=False, progress=lines.append)
    assert image.names == (registry.app,)
    assert image.config.entrypoint == ("python3",) and image.config.cmd == ("/app/main.py",)
    assert image.config.user == "app" and image.config.working_dir == "/app"
    assert ("GREETING", "hello from the image") in image.config.env
    assert len(image.layer_files) == 2 and all(f.is_file() for f in image.layer_files)
    assert any("layer 1/2" in line and "unpacking" in line for line in lines), lines
    (by_digest,) = image.repo_digests
    assert by_digest.startswith(f"{registry.address}/test/app@sha256:")
    # The digest skopeo reports for the registry's manifest is the one we recorded.
    inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{registry.app}"],
                               capture_output=True, text=True, check=True)
    assert json.loads(inspected.stdout)["Digest"] == image.manifest_digest
    before = store.disk_usage()
    again = pull_image(by_digest, store=store, tls_verify=False, progress=lines.append)
    assert again.id == image.id
    assert store.disk_usage() == before  # nothing unpacked twice
    assert lines[-1].endswith("already cached") or any("already cached" in line for line in lines[-3:])
    assert store.find(by_digest) == store.find(registry.app)


def test_two_images_sharing_a_base_store_it_once(registry: Registry, tmp_path: Path) -> None:
    store = OciStore(tmp_path / "store")
    app = pull_image(registry.app, store=store, tls_verify=False)
    noshell = pull_image(registry.noshell, store=store, tls_verify=False)
    assert app.layer_files[0] == noshell.layer_files[0]
    sizes = sum(f.stat().st_size for f in app.layer_files) + sum(f.stat().st_size for f in noshell.layer_files)
    assert store.disk_usage() < sizes
    assert store.disk_usage() == sum(f.stat().st_size for f in {*app.layer_files, *noshell.layer_files})


def test_a_registry_that_is_down_is_named(tmp_path: Path, oci_cache: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(engine.ImageError, match=f"cannot reach the registry {address}"):
        pull_image(f"{address}/test/app:1", store=OciStore(tmp_path / "store"), tls_verify=False)
    assert not list((tmp_path / "store").glob("layers/*")) and not list((tmp_path / "store").glob(".pull-*"))


def test_a_tag_the_registry_lacks_is_named(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(engine.ImageError, match=f"the registry {registry.address} has no tag nope of test/app"):
        pull_image(f"{registry.address}/test/app:nope", store=OciStore(tmp_path / "store"), tls_verify=False)


def test_a_plain_http_registry_without_tls_verify_false_says_so(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(engine.ImageError, match="speaks plain HTTP: pass --tls-verify=false"):
        pull_image(registry.app, store=OciStore(tmp_path / "store"))


def test_a_registry_that_refuses_our_credentials_says_so(registry: Registry, tmp_path: Path) -> None:
    with running_registry(tmp_path / "auth-registry", user=("alice", "s3cret")) as address:
        push(registry.app_layout, "1", address, "private/app", creds=("alice", "s3cret"))
        store = OciStore(tmp_path / "store")
        with pytest.raises(engine.ImageError, match=f"the registry {address} refused access to private/app"):
            pull_image(f"{address}/private/app:1", store=store, tls_verify=False)
        auth = tmp_path / "auth.json"
        auth.write_text(json.dumps({"auths": {address: {"auth": base64.b64encode(b"alice:wrong").decode()}}}))
        with pytest.raises(engine.ImageError, match="refused access"):
            pull_image(f"{address}/private/app:1", store=store, tls_verify=False, authfile=auth)
        auth.write_text(json.dumps({"auths": {address: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
        image = pull_image(f"{address}/private/app:1", store=store, tls_verify=False, authfile=auth)
        assert image.config.user == "app"


@pytest.mark.parametrize("reference", ["Test/App:1", "127.0.0.1:5000/app:-bad", "app@sha256:1234", ""])
def test_a_reference_that_does_not_parse_is_refused_before_any_pull(reference: str, tmp_path: Path) -> None:
    with pytest.raises(engine.ImageError, match="image reference"):
        pull_image(reference, store=OciStore(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_a_mirror_from_registries_conf_serves_the_pull(registry: Registry, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # registries.conf's own conventions: a prefix served from another location, marked insecure
    # (plain HTTP), so no --tls-verify is needed. skopeo reads it; we pass its variable through.
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nprefix = "mirror.invalid/team"\nlocation = "{registry.address}/test"\n'
                    "insecure = true\n")
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(conf))
    image = pull_image("mirror.invalid/team/app:1", store=OciStore(tmp_path / "store"))
    assert image.names == ("mirror.invalid/team/app:1",) and image.config.user == "app"


def test_a_docker_format_image_keeps_the_registrys_digest(registry: Registry, tmp_path: Path) -> None:
    reference = f"{registry.address}/test/app-v2s2:1"
    subprocess.run(["skopeo", "copy", "--format", "v2s2", "--dest-tls-verify=false", f"oci:{registry.app_layout}:1",
                    f"docker://{reference}"], check=True, capture_output=True)
    inspected = subprocess.run(["skopeo", "inspect", "--tls-verify=false", f"docker://{reference}"],
                               capture_output=True, text=True, check=True)
    image = pull_image(reference, store=OciStore(tmp_path / "store"), tls_verify=False)
    # The manifest is kept as the registry serves it (no conversion to OCI on the way in).
    assert image.manifest_digest == json.loads(inspected.stdout)["Digest"]
    assert image.repo_digests == (f"{registry.address}/test/app-v2s2@{image.manifest_digest}",)
    assert image.config.entrypoint == ("python3",)
