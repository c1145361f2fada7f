"""Sandbox profiles (``kind: sandbox``): the image section, scratch disks, timeouts, every error
naming file, line and field, and the Profile -> builder path resolving the sandbox image.

No test here boots or builds anything: ``sandbox_boot`` is replaced where the profile calls it.
"""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

import engine
import engine.profile.parse
from capsatui.cli import main as cli_main

BUNDLED = Path(__file__).resolve().parents[2] / "profiles"


def _issues(text: str) -> list[str]:
    with pytest.raises(engine.ProfileError) as caught:
        engine.parse_profile(textwrap.dedent(text), "p.yaml")
    return [str(issue) for issue in caught.value.errors]


def _parse(text: str) -> engine.Profile:
    return engine.parse_profile(textwrap.dedent(text), "p.yaml")


@pytest.fixture
def resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Replace sandbox_boot in the profile module; the calls it gets are recorded."""
    calls: list[tuple[Any, ...]] = []
    rootfs = tmp_path / "rootfs.erofs"
    rootfs.write_bytes(b"r")
    boot = engine.LinuxDirectBoot(tmp_path / "k", tmp_path / "i", capsa_guest=True, has_agent=True,
                                  root_disk=engine.DiskImage(rootfs, read_only=True))

    def fake(base: str, packages: tuple[str, ...], *, build: bool) -> engine.LinuxDirectBoot:
        calls.append((base, packages, build))
        return boot

    monkeypatch.setattr(engine.profile.parse, "sandbox_boot", fake)
    return calls


def test_kind_defaults_to_vm_and_a_sandbox_gets_its_defaults() -> None:
    assert _parse("name: a\n").kind == "vm" and _parse("name: a\n").image is None
    profile = _parse("name: a\nkind: sandbox\n")
    assert (profile.kind, profile.image, profile.memory_mb) == ("sandbox", engine.profile.parse.ImageChoice(), 512)
    assert (profile.scratch_disk_mb, profile.timeout_s) == (None, None)


def test_every_sandbox_field_is_read() -> None:
    profile = _parse("""\
        name: sb
        kind: sandbox
        image:
          base: debian
          packages: [git, python3-numpy, g++]
        memory_mb: 768
        scratch_disk_mb: 256
        timeout: 90.5
        """)
    assert profile.image == engine.profile.parse.ImageChoice("debian", ("git", "python3-numpy", "g++"))
    assert (profile.memory_mb, profile.scratch_disk_mb, profile.timeout_s) == (768, 256, 90.5)
    assert profile.to_dict()["kind"] == "sandbox"
    assert profile.to_dict()["image"] == {"base": "debian", "packages": ["git", "python3-numpy", "g++"]}


def test_a_timeout_works_for_a_vm_profile_too(resolved: list[tuple[Any, ...]], fake_guest: engine.LinuxDirectBoot) -> None:
    assert _parse("name: a\ntimeout: 30\n").vm_builder().spec().timeout_s == 30.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: box\n", "p.yaml:2: kind: expected 'vm' or 'sandbox', found string 'box'"),
        ("kind: sandbox\nimage: debian\n", "p.yaml:3: image: expected a mapping, found string 'debian'"),
        ("kind: sandbox\nimage: {base: alpine}\n", "p.yaml:3: image.base: expected 'debian', found string 'alpine'"),
        ("kind: sandbox\nimage: {packages: git}\n",
         "p.yaml:3: image.packages: expected a list of Debian package names, found string 'git'"),
        ("kind: sandbox\nimage:\n  packages:\n    - git\n    - Bad_Name\n",
         "p.yaml:6: image.packages[1]: expected a Debian package name (lowercase letters, digits, '+', '-', '.'), "
         "found 'Bad_Name'"),
        ("kind: sandbox\nimage: {packages: [3]}\n", "p.yaml:3: image.packages[0]: expected a Debian package name, found integer 3"),
        ("kind: sandbox\nimage: {pkgs: [git]}\n", "p.yaml:3: image.pkgs: unknown key (did you mean 'packages'?)"),
        ("image: {packages: [git]}\n", "p.yaml:2: image: expected no image in a kind: vm profile (add 'kind: sandbox')"),
        ("scratch_disk_mb: 64\n",
         "p.yaml:2: scratch_disk_mb: expected no scratch_disk_mb in a kind: vm profile (only a sandbox has an overlay to put on it)"),
        ("kind: sandbox\nscratch_disk_mb: 8\n", "p.yaml:3: scratch_disk_mb: expected an integer from 16 to 4194304, found integer 8"),
        ("timeout: 0\n", "p.yaml:2: timeout: expected a number of seconds from 0.1 to 86400, found integer 0"),
        ("timeout: 10s\n", "p.yaml:2: timeout: expected a number of seconds from 0.1 to 86400, found string '10s'"),
        ("kind: sandbox\nboot: default\n",
         "p.yaml:3: boot: expected no boot in a kind: sandbox profile (it boots the image's kernel)"),
        ("kind: sandbox\nlogin: {user: bob}\n",
         "p.yaml:3: login: expected no login in a kind: sandbox profile (its console is a root shell)"),
    ],
)
def test_each_sandbox_error_names_file_line_and_field(text: str, expected: str) -> None:
    assert _issues(f"name: a\n{text}") == [expected]


def test_a_sandbox_profile_builds_sandbox_specs(resolved: list[tuple[Any, ...]]) -> None:
    profile = _parse("""\
        name: sb
        kind: sandbox
        image: {packages: [git]}
        cpus: 2
        scratch_disk_mb: 64
        timeout: 45
        pool: {size: 1, max_size: 2, snapshot: false}
        """)
    spec = profile.pool_builder().spec()
    assert spec.boot.has_agent and spec.boot.root_disk is not None
    assert (spec.cpus, spec.memory_mb, spec.scratch_disk_mb, spec.timeout_s, spec.console) == (2, 512, 64, 45.0, True)
    assert profile.pool_builder().settings(profile.size).name == "sb"
    assert profile.vm_builder(build=False).spec().boot.has_agent
    assert resolved == [("debian", ("git",), True), ("debian", ("git",), True), ("debian", ("git",), False)]


def test_a_vm_profile_never_resolves_a_sandbox_image(resolved: list[tuple[Any, ...]], fake_guest: engine.LinuxDirectBoot) -> None:
    assert _parse("name: a\n").pool_builder().spec().boot == fake_guest
    assert resolved == []


def test_the_bundled_sandbox_profile(resolved: list[tuple[Any, ...]]) -> None:
    profile = engine.load_profile(BUNDLED / "sandbox.yaml")
    assert (profile.name, profile.kind, profile.image) == ("sandbox", "sandbox", engine.profile.parse.ImageChoice())
    assert profile.size <= 2 and profile.description
    spec = profile.pool_builder().spec()
    assert spec.boot.has_agent and spec.console
    assert resolved[0] == ("debian", (), True)  # python3 only: check_packages always adds it


def test_cli_check_accepts_the_sandbox_profile(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["profiles", "check", str(BUNDLED / "sandbox.yaml")]) == 0
    assert capsys.readouterr().out.strip() == f"{BUNDLED / 'sandbox.yaml'}: ok"


def test_cli_list_shows_the_kind(user_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (user_dir / "box.yaml").write_text("name: box\nkind: sandbox\nimage: {packages: [git]}\n")
    assert cli_main(["profiles", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("name"))
    assert header.split()[:2] == ["name", "kind"]
    box = next(line for line in lines if line.startswith("box "))
    assert box.split()[1] == "sandbox" and "debian image + git" in box
    default = next(line for line in lines if line.startswith("default "))
    assert default.split()[1] == "vm"
    assert cli_main(["profiles", "list", "--json"]) == 0
    listed = {entry["name"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed["box"]["kind"] == "sandbox" and listed["default"]["kind"] == "vm"
