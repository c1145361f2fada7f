"""``capsa-tui image pull|import|list|rm|prune|export``, run through the CLI's own entry point
(``capsatui.cli.main``, in this process) against a layer cache in a tmp folder
(``CAPSA_OCI_CACHE``), with small images built here from layer tars of a few files."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

import engine
from capsatui.cli import main
from capsatui.commands.oci import run_config
from tests.oci.images import layer_tar

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="unpacking layers keeps owners and device nodes: needs root"),
    pytest.mark.skipif(shutil.which("mkfs.erofs") is None, reason="mkfs.erofs (erofs-utils) is not installed"),
]

Cli = tuple[int, str, str]


@pytest.fixture(autouse=True)
def private_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own layer cache and template store: the user's are never touched."""
    cache = tmp_path / "oci-cache"
    monkeypatch.setenv("CAPSA_OCI_CACHE", str(cache))
    monkeypatch.setenv("CAPSA_TEMPLATES_DIR", str(tmp_path / "templates"))
    monkeypatch.setenv("CAPSA_SNAPSHOT_RAM_DIR", str(tmp_path / "ram"))
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no name wrapped over two lines
    return cache


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Cli:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def listed(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    code, out, err = cli(capsys, "image", "list", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert isinstance(rows, list)
    return rows


def base_layer(work: Path) -> Path:
    return layer_tar(work / "base.tar", [
        ("etc", None, 0o755, 0),
        ("etc/os-release", b"ID=capsa-test\n", 0o644, 0),
        ("bin", None, 0o755, 0),
    ])


def image_layout(work: Path, name: str, payload: bytes, *, tag: str = "1", base: Path | None = None) -> Path:
    """An OCI layout of a base layer (``base``, the same tar for images that share it: its
    entries carry the time they were made) and a top layer of its own (``/srv/NAME``)."""
    work.mkdir(parents=True, exist_ok=True)
    top = layer_tar(work / f"{name}.tar", [("srv", None, 0o755, 0), (f"srv/{name}", payload, 0o644, 0)])
    layout = work / f"layout-{name}"
    engine.write_layout(layout, [base or base_layer(work), top],
                        engine.RunConfig(cmd=("/bin/sh", "-c", f"cat /srv/{name}")), tag=tag)
    return layout


def layer_files(cache: Path) -> set[str]:
    return {p.name for p in (cache / "layers").glob("*.erofs")}


def test_import_list_and_rm(tmp_path: Path, capsys: pytest.CaptureFixture[str], private_caches: Path) -> None:
    layout = image_layout(tmp_path, "alpha", b"alpha payload\n" * 100)
    code, out, err = cli(capsys, "image", "import", str(layout), "--tag", "demo:1")
    assert code == 0, err
    assert "layer 1/2" in out and "layer 2/2" in out and "unpacking" in out and "done" in out
    assert "imported demo:1" in out and "2 layer(s)" in out

    rows = listed(capsys)
    assert len(rows) == 1
    row = rows[0]
    assert row["names"] == ["demo:1"] and row["layers"] == 2
    short = str(row["short_id"])
    assert len(short) == 12 and all(c in "0123456789abcdef" for c in short)
    assert str(row["id"]).startswith(f"sha256:{short}") and len(str(row["id"])) == 71
    assert short in out  # the import's summary names the same id
    on_disk = sum(f.stat().st_size for f in (private_caches / "layers").glob("*.erofs"))
    assert row["size"] == on_disk > 0 and f"{on_disk / 1e6:.1f} MB" in out

    code, out, err = cli(capsys, "image", "list")
    assert code == 0, err
    table_line = next(line for line in out.splitlines() if "demo:1" in line)
    assert short in table_line and " 2 " in table_line and "MB" in table_line
    usage = engine.OciStore(private_caches).disk_usage()
    assert usage > 0 and f"{usage / 1e6:.1f} MB on disk" in out and "stored once" in out

    code, out, err = cli(capsys, "image", "rm", "demo:1")
    assert code == 0, err
    assert f"removed image {short}" in out
    assert listed(capsys) == [] and layer_files(private_caches) == set()
    code, out, err = cli(capsys, "image", "list")
    assert code == 0 and "no OCI images" in out and "0.0 MB on disk" in out


def test_rm_of_one_name_of_several_untags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = image_layout(tmp_path, "beta", b"beta\n")
    for tag in ("app:1", "app:latest"):
        code, _out, err = cli(capsys, "image", "import", str(layout), "--tag", tag)
        assert code == 0, err
    rows = listed(capsys)
    assert len(rows) == 1 and sorted(rows[0]["names"]) == ["app:1", "app:latest"]
    code, out, err = cli(capsys, "image", "rm", "app:1")
    assert code == 0, err
    assert "untagged app:1" in out and "app:latest" in out
    assert [row["names"] for row in listed(capsys)] == [["app:latest"]]


def test_prune_removes_untagged_images_and_frees_their_layers(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                               private_caches: Path) -> None:
    base = base_layer(tmp_path)
    old = image_layout(tmp_path / "old", "svc", b"old\n" * 5000, base=base)
    new = image_layout(tmp_path / "new", "svc", b"new\n", base=base)
    assert cli(capsys, "image", "import", str(old), "--tag", "svc:1")[0] == 0
    code, out, err = cli(capsys, "image", "import", str(new), "--tag", "svc:1")  # the tag moves to the new image
    assert code == 0, err
    assert "layer 1/2" in out and "already cached" in out  # the base layer is shared
    rows = listed(capsys)
    untagged = [row for row in rows if row["names"] == []]
    tagged = [row for row in rows if row["names"] == ["svc:1"]]
    assert len(untagged) == 1 and len(tagged) == 1

    store = engine.OciStore(private_caches)
    old_image = store.find(str(untagged[0]["short_id"]))
    new_image = store.find("svc:1")
    assert old_image is not None and new_image is not None
    only_old = [f for f in old_image.layer_files if f not in new_image.layer_files]
    assert len(only_old) == 1  # the base layer is stored once, for both
    expected = only_old[0].stat().st_size

    code, out, err = cli(capsys, "image", "prune")
    assert code == 0, err
    assert f"removed untagged image {untagged[0]['short_id']}" in out
    assert "1 untagged image(s) removed" in out and f"({expected} bytes)" in out
    assert [row["names"] for row in listed(capsys)] == [["svc:1"]]
    assert not only_old[0].exists() and all(f.is_file() for f in new_image.layer_files)

    code, out, err = cli(capsys, "image", "prune")
    assert code == 0 and "0 untagged image(s) removed" in out and "(0 bytes)" in out


def test_prune_keeps_snapshot_templates_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    template = tmp_path / "templates" / "0123abcd"
    template.mkdir(parents=True)
    (template / "state").write_bytes(b"device state")
    code, out, err = cli(capsys, "image", "prune")
    assert code == 0, err
    assert template.is_dir() and "templates kept" in out
    code, out, err = cli(capsys, "image", "prune", "--templates")
    assert code == 0, err
    assert not template.exists()
    assert f"removed template {template}" in out and "1 template(s) removed" in out


def test_rm_of_an_unknown_name_fails_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "image", "rm", "nosuch:7")
    assert code != 0 and "nosuch:7" in err and "error" in err
    layout = image_layout(tmp_path, "gamma", b"gamma\n")
    assert cli(capsys, "image", "import", str(layout), "--tag", "keep:1")[0] == 0
    code, out, err = cli(capsys, "image", "rm", "nosuch:8", "keep:1")  # the good name still goes
    assert code != 0 and "nosuch:8" in err and "removed image" in out
    assert listed(capsys) == []


def test_import_of_a_missing_file_fails_naming_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        private_caches: Path) -> None:
    missing = tmp_path / "no-such-image.tar"
    code, out, err = cli(capsys, "image", "import", str(missing))
    assert code != 0 and str(missing) in err and "does not exist" in err
    assert listed(capsys) == []


def test_import_rejects_a_bad_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = image_layout(tmp_path, "delta", b"delta\n")
    code, _out, err = cli(capsys, "image", "import", str(layout), "--tag", "Bad Name")
    assert code != 0 and "Bad Name" in err
    assert listed(capsys) == []


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_import_of_archives_and_pull_of_a_local_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    layout = image_layout(tmp_path, "eps", b"eps\n", tag="t")
    archive = tmp_path / "eps.oci.tar"
    with tarfile.open(archive, "w") as tar:
        for entry in sorted(layout.iterdir()):
            tar.add(entry, arcname=entry.name)
    docker = tmp_path / "eps.docker.tar"
    subprocess.run(["skopeo", "copy", f"oci:{layout}:t", f"docker-archive:{docker}"], check=True, capture_output=True)

    code, out, err = cli(capsys, "image", "import", str(archive), "--tag", "from-oci:1")
    assert code == 0, err
    assert "imported from-oci:1" in out
    code, out, err = cli(capsys, "image", "import", str(docker), "--tag", "from-docker:1")
    assert code == 0, err
    assert "copying blob" in out and "imported from-docker:1" in out
    code, out, err = cli(capsys, "image", "pull", f"oci:{layout}:t")
    assert code == 0, err
    assert "pulled" in out and "2 layer(s)" in out
    names = sorted(name for row in listed(capsys) for name in row["names"])
    assert {"from-oci:1", "from-docker:1"} <= set(names)


def test_pull_takes_tls_verify_true_or_false_only(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["image", "pull", "--tls-verify=maybe", "python:3.11"])
    assert stopped.value.code == 2 and "maybe" in capsys.readouterr().err


def test_export_run_config_from_options() -> None:
    config = run_config("python3 -c 'print(1)'", None, ["GREETING=hi there", "PATH=/opt/bin"])
    assert config.cmd == ("python3", "-c", "print(1)") and config.entrypoint == ()
    assert config.env == ("PATH=/opt/bin", "GREETING=hi there")
    assert run_config(None, "tini --", []).cmd == engine.RunConfig().cmd
    assert run_config(None, "tini --", []).entrypoint == ("tini", "--")
    with pytest.raises(engine.ConfigError, match="NOEQUALS"):
        run_config(None, None, ["NOEQUALS"])


def test_export_refuses_a_registry_or_an_existing_destination(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = cli(capsys, "image", "export", "docker.io/me/app:1")
    assert code != 0 and "oci:DIR" in err and "docker-archive:FILE" in err
    taken = tmp_path / "taken"
    taken.mkdir()
    code, _out, err = cli(capsys, "image", "export", f"oci:{taken}:1")
    assert code != 0 and f"{taken} already exists" in err


def test_export_of_the_debian_tree_imports_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The sandbox image's own tree: install.sh builds it, so this is a cache hit (a build otherwise).
    dest = tmp_path / "exported"
    code, out, err = cli(capsys, "image", "export", f"oci:{dest}:t", "--cmd", "python3 -V")
    assert code == 0, err
    index = json.loads((dest / "index.json").read_text())
    [entry] = index["manifests"]
    assert entry["annotations"]["org.opencontainers.image.ref.name"] == "t"
    assert f"manifest {entry['digest']}" in out
    assert f"skopeo copy oci:{dest}:t docker://" in out

    code, out, err = cli(capsys, "image", "import", str(dest), "--tag", "exported:t")
    assert code == 0, err
    [row] = listed(capsys)
    assert row["names"] == ["exported:t"] and row["layers"] == 1 and row["command"] == ["python3", "-V"]
