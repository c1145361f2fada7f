"""Bad share input (no guest): each error names the path, tag or guest path at fault; and what a
snapshot records of the shares."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import engine
from engine.errors import ConfigError
from engine.microvm.boot import LinuxDirectBoot
from engine.microvm.mounts import mount_command
from engine.microvm.share import MountMode, Share
from engine.microvm.spec import VmSpec
from engine.snapshot.meta import GuestFacts, SnapshotInfo
from engine.snapshot.record import guest_facts


def _boot(tmp_path: Path, *, agent: bool) -> LinuxDirectBoot:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"k")
    return LinuxDirectBoot(kernel, None, has_agent=agent)


def test_a_missing_share_folder_is_named(tmp_path: Path) -> None:
    spec = VmSpec(boot=_boot(tmp_path, agent=False), shares=(Share(tmp_path / "nope", "src"),))
    with pytest.raises(ConfigError, match="share folder not found: .*nope"):
        spec.check()


def test_a_share_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    spec = VmSpec(boot=_boot(tmp_path, agent=False), shares=(Share(tmp_path / "file", "src"),))
    with pytest.raises(ConfigError, match="not a directory: .*file"):
        spec.check()


def test_two_shares_with_one_tag(tmp_path: Path) -> None:
    spec = VmSpec(boot=_boot(tmp_path, agent=False), shares=(Share(tmp_path / "a", "src"), Share(tmp_path / "b", "src")))
    with pytest.raises(ConfigError, match="two shares have the tag 'src'"):
        spec.validate()


@pytest.mark.parametrize("tag", ["has space", "", "-dash", "a/b", "x" * 40])
def test_a_malformed_tag_is_named(tmp_path: Path, tag: str) -> None:
    with pytest.raises(ConfigError, match="share tag"):
        VmSpec(boot=_boot(tmp_path, agent=False), shares=(Share(tmp_path, tag),)).validate()


@pytest.mark.parametrize("where", ["mnt/src", "/mnt/../etc", "/", "/mnt/a b"])
def test_a_bad_guest_path_is_named(tmp_path: Path, where: str) -> None:
    with pytest.raises(ConfigError, match="guest path"):
        VmSpec(boot=_boot(tmp_path, agent=True), shares=(Share(tmp_path, "capsa0", guest_path=where),)).validate()


def test_two_shares_at_one_guest_path(tmp_path: Path) -> None:
    shares = (Share(tmp_path / "a", "capsa0", guest_path="/mnt/src"), Share(tmp_path / "b", "capsa1", guest_path="/mnt/src/"))
    with pytest.raises(ConfigError, match="two shares mount at /mnt/src"):
        VmSpec(boot=_boot(tmp_path, agent=True), shares=shares).validate()


def test_a_guest_path_share_on_a_raw_vm_and_a_tag_share_on_a_sandbox(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="raw VM cannot mount at a guest path \\(/mnt/src\\)"):
        VmSpec(boot=_boot(tmp_path, agent=False), shares=(Share(tmp_path, "capsa0", guest_path="/mnt/src"),)).validate()
    with pytest.raises(ConfigError, match="tag src.*absolute guest path"):
        VmSpec(boot=_boot(tmp_path, agent=True), shares=(Share(tmp_path, "src"),)).validate()


def test_the_builder_tags_sandbox_shares_by_position_and_the_mount_line_is_documented(tmp_path: Path) -> None:
    builder = engine.vm(_boot(tmp_path, agent=False)).share(tmp_path, "src", MountMode.ReadOnly)
    share = builder._spec.shares[0]
    assert (share.tag, share.read_only, share.guest_path) == ("src", True, None)
    assert share.mount_line() == ("mkdir -p /mnt/src && mount -t 9p -o "
                                  "trans=virtio,version=9p2000.L,msize=524288,nosuid,nodev,ro src /mnt/src")
    sb = engine.vm(_boot(tmp_path, agent=True)).share(tmp_path, "/mnt/a").share(tmp_path, "/mnt/b", MountMode.ReadOnly)
    assert [s.tag for s in sb._spec.shares] == ["capsa0", "capsa1"]
    # The engine's mount passes the guest path as an argument, never through a shell string.
    argv = mount_command(sb._spec.shares[1])
    assert argv[:2] == ["/bin/sh", "-c"] and argv[4:] == ["capsa1", "/mnt/b", sb._spec.shares[1].mount_options()]


def test_a_snapshot_records_the_shares_and_gives_them_back(tmp_path: Path) -> None:
    spec = VmSpec(boot=_boot(tmp_path, agent=True),
                  shares=(Share(tmp_path, "capsa0", MountMode.ReadOnly, guest_path="/mnt/src"),))
    facts = guest_facts(spec, None)
    assert facts.shares == (("capsa0", str(tmp_path), "ro", "/mnt/src"),)
    from engine.snapshot.meta import MachineShape
    shape = MachineShape(qemu="q", kernel="k", kernel_stamp="1", initrd=None, initrd_stamp=None, append="",
                         cpus=1, memory_mb=256, machine="microvm", accel="tcg", nic=False, nic_mtu=1500,
                         shares=(("capsa0", str(tmp_path), True),))
    info = SnapshotInfo(kind="full", shape=shape, guest=facts, state_size=0, state_sha256="")
    back = SnapshotInfo.from_json(info.to_json(), tmp_path / "snapshot.json")
    assert back == info  # JSON lists come back as the tuples compared in shapes
    assert back.shape.key() != replace(shape, shares=(("capsa0", str(tmp_path), False),)).key()
    from engine.snapshot.snapshot import Snapshot
    snap = Snapshot(tmp_path, back)
    assert snap.shares() == spec.shares
    assert isinstance(back.guest, GuestFacts)
