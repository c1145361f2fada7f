"""A profile's ``shares:``, ``disks:`` and ``boot.root_disk``: parsed relative to the profile's folder, applied to the
builders, and every mistake named by file, line and field (no guest: see tests/shares for the
real mounts)."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import engine


def _parse(text: str, base: Path | None = None) -> engine.Profile:
    return engine.parse_profile(textwrap.dedent(text), "p.yaml", base_dir=base)


def _issues(text: str) -> list[str]:
    with pytest.raises(engine.ProfileError) as caught:
        _parse(text, Path("/profiles"))
    return [str(issue) for issue in caught.value.errors]


def test_sandbox_shares_and_disks_resolve_against_the_profile_folder(tmp_path: Path) -> None:
    profile = _parse("""\
        name: dev
        kind: sandbox
        shares:
          - {host: ./src, guest: /mnt/src, mode: ro}
          - {host: /abs/out, guest: /mnt/out}
        disks:
          - {path: data.img, mode: ro}
          - {path: cache.qcow2, mode: cow}
        """, tmp_path)
    src, out = profile.shares
    assert (src.host_path, src.guest_path, src.mode, src.tag) == (tmp_path / "src", "/mnt/src", engine.MountMode.ReadOnly, "capsa0")
    assert (out.host_path, out.mode, out.tag) == (Path("/abs/out"), engine.MountMode.ReadWrite, "capsa1")
    data, cache = profile.disks
    assert data.path == tmp_path / "data.img" and data.read_only and data.format == "raw"
    assert cache.format == "qcow2" and cache.copy_on_write and not cache.read_only
    summary = profile.to_dict()
    assert summary["shares"][0] == {"host": str(tmp_path / "src"), "guest": "/mnt/src", "mode": "ro"}
    assert summary["disks"][1]["mode"] == "cow"


def test_a_vm_profile_shares_by_tag_and_reaches_the_builder(tmp_path: Path, fake_guest: engine.LinuxDirectBoot,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _parse("""\
        name: raw
        shares:
          - {host: out, tag: out, mode: rw}
        disks:
          - {path: d.img, format: raw}
        """, tmp_path)
    monkeypatch.setattr(type(profile.boot), "resolve", lambda self: fake_guest)
    spec = profile.vm_builder()._spec
    assert [(s.tag, s.host_path, s.guest_path) for s in spec.shares] == [("out", (tmp_path / "out").resolve(), None)]
    assert [d.path for d in spec.disks] == [tmp_path / "d.img"]


def test_a_root_disk_boots_the_default_guest_into_it(tmp_path: Path, fake_guest: engine.LinuxDirectBoot,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.profile.parse, "default_boot", lambda: fake_guest)
    profile = _parse("""\
        name: own
        boot:
          root_disk: {path: root.ext4, mode: cow}
        """, tmp_path)
    root = profile.boot.root_disk
    assert root is not None and (root.path, root.copy_on_write, profile.boot.kind) == (tmp_path / "root.ext4", True, "default")
    spec = profile.vm_builder()._spec
    assert spec.boot.kernel == fake_guest.kernel and spec.boot.root_disk == root
    assert profile.to_dict()["boot"] == {"root_disk": {"path": str(tmp_path / "root.ext4"), "format": "raw", "mode": "cow"}}
    assert "root disk" in profile.describe_boot() and "(cow)" in profile.describe_boot()
    # A bare path is a writable raw disk; a pool of it is refused when it starts (not cloned).
    (tmp_path / "r.img").write_bytes(bytes(1 << 20))
    plain = _parse("name: own\nboot: {root_disk: r.img}\n", tmp_path)
    assert plain.boot.root_disk == engine.DiskImage(tmp_path / "r.img")
    with pytest.raises(engine.ConfigError, match=f"root disk {tmp_path / 'r.img'} is writable and would be shared"):
        plain.pool_builder().start(1)


def test_a_custom_boot_takes_a_root_disk_too(tmp_path: Path) -> None:
    for name in ("vmlinuz", "initrd.img"):
        (tmp_path / name).write_text("x")
    profile = _parse("""\
        name: own
        boot: {kernel: vmlinuz, initrd: initrd.img, root_disk: {path: root.qcow2, mode: ro}}
        """, tmp_path)
    boot = profile.boot.resolve()
    assert boot.kernel == tmp_path / "vmlinuz" and boot.root_disk is not None
    assert (boot.root_disk.format, boot.root_disk.read_only) == ("qcow2", True)
    assert profile.to_dict()["boot"]["kernel"] == str(tmp_path / "vmlinuz")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\nkind: sandbox\nshares:\n  - {host: ./s, tag: s}\n", "p.yaml:4: shares[0].tag: a sandbox mounts its shares at a guest path"),
        ("name: a\nshares:\n  - {host: ./s, guest: /mnt/s}\n", "p.yaml:3: shares[0].guest: a kind: vm guest mounts its shares itself"),
        ("name: a\nkind: sandbox\nshares:\n  - {guest: /mnt/s}\n", "p.yaml:4: shares[0].host"),
        ("name: a\nkind: sandbox\nshares:\n  - {host: ./s, guest: mnt/s}\n", "is not absolute"),
        ("name: a\nshares:\n  - {host: ./s, tag: my tag}\n", "(no spaces)"),
        ("name: a\nshares:\n  - {host: ./s, tag: t}\n  - {host: ./u, tag: t}\n", "p.yaml:4: shares[1].tag: two shares have the tag 't'"),
        ("name: a\nkind: sandbox\nshares:\n  - {host: ./s, guest: /m}\n  - {host: ./u, guest: /m}\n", "two shares mount at /m"),
        ("name: a\nshares:\n  - {host: ./s, tag: t, mode: rx}\n", "p.yaml:3: shares[0].mode: expected ro or rw"),
        ("name: a\nshares:\n  - {host: ./s, tag: t, size: 3}\n", "shares[0].size"),
        ("name: a\nshares: ./s\n", "p.yaml:2: shares: expected a list"),
        ("name: a\ndisks:\n  - {path: d.img, mode: rx}\n", "p.yaml:3: disks[0].mode: expected ro, rw or cow"),
        ("name: a\ndisks:\n  - {path: d.img, format: vmdk}\n", "p.yaml:3: disks[0].format: expected raw or qcow2"),
        ("name: a\ndisks:\n  - {mode: ro}\n", "p.yaml:3: disks[0].path"),
        ("name: a\ndisks:\n  - d.img\n", "p.yaml:3: disks[0]: expected a mapping"),
        ("name: a\nboot:\n  root_disk: 3\n", "p.yaml:3: boot.root_disk: expected a disk image path or {path"),
        ("name: a\nboot:\n  root_disk: {path: r.img, mode: rx}\n", "p.yaml:3: boot.root_disk.mode: expected ro, rw or cow"),
        ("name: a\nboot:\n  root_disk: {mode: ro}\n", "p.yaml:3: boot.root_disk.path"),
        ("name: a\nboot: {root_disk: r.img}\nlogin: {user: u}\n", "p.yaml:3: login: expected no login with boot.root_disk"),
        ("name: a\nboot: {root_disk: r.img}\npool: {snapshot: true}\n", "p.yaml:3: pool.snapshot: expected false or no key: clones share their root disk"),
        ("name: a\nkind: sandbox\nboot: {root_disk: r.img}\n", "p.yaml:3: boot: expected no boot in a kind: sandbox profile"),
    ],
)
def test_each_device_error_names_file_line_and_field(text: str, expected: str) -> None:
    issues = _issues(text)
    assert any(expected in issue for issue in issues), issues
