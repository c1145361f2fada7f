"""Snapshot pieces without a guest: the reseed program, the fix-up line, metadata, QEMU argv."""
from __future__ import annotations

import json
import os
import struct
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest

import engine
from engine.snapshot.identity import AWAIT_LINE, ERROR_PREFIX, fixup_line
from engine.kvm.cmdline import MachineSockets, MachineSpec, qemu_argv
from engine.netstack.dhcp import DhcpConfig, DhcpServer
from engine.snapshot.agent import agent_program, assemble_agent
from engine.snapshot.clone import clone_hostname
from engine.snapshot.snapshot import snapshot_unsupported
from engine.snapshot.meta import (
    META_FILE,
    STATE_FILE,
    GuestFacts,
    MachineShape,
    SnapshotInfo,
    read_info,
    sha256_file,
    write_info,
)
from engine.snapshot.store import RAM_DIR_ENV, prepare_ram_file


# ----- capsa-agent ------------------------------------------------------------------------------


def test_agent_is_a_static_x86_64_executable() -> None:
    elf = agent_program()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and elf[5] == 1  # 64-bit little-endian
    e_type, e_machine = struct.unpack_from("<HH", elf, 16)
    assert (e_type, e_machine) == (2, 0x3E)  # ET_EXEC, x86-64
    assert b"/run/capsa-agent\x00" in elf and b"/dev/urandom\x00" in elf


def test_agent_bytes_are_what_its_source_assembles_to() -> None:
    built = assemble_agent()
    assert built is not None, "GNU as and ld are missing: ./scripts/install.sh installs binutils"
    assert built == agent_program(), "engine/image/guest/agent.S changed: regenerate engine/snapshot/agent.py"


# ----- the fix-up line ---------------------------------------------------------------------------


def test_fixup_line_carries_seed_time_name_and_mac() -> None:
    seed = bytes(range(32))
    line = fixup_line(seed, 1_700_000_000, "web-3", "52:54:00:aa:bb:cc").decode()
    assert line == f"capsa_clone {seed.hex()} 1700000000 web-3 52:54:00:aa:bb:cc\n"
    # The echo of the typed line must never read as a failure report or as the ready marker.
    assert ERROR_PREFIX.decode() not in line
    assert "\x1b]777;capsa-ready\x07" not in line


def test_fixup_line_for_a_template_waiting_in_read_sends_only_the_arguments() -> None:
    line = fixup_line(bytes(16), 7, "c1", None, awaiting=True)
    assert line == b"00" * 16 + b" 7 c1\n"
    assert AWAIT_LINE.endswith(b"\n") and b"read -r" in AWAIT_LINE and b"capsa_clone" in AWAIT_LINE


def test_fixup_line_without_network_leaves_the_nic_alone() -> None:
    assert fixup_line(bytes(16), 1, "capsa", None) == b"capsa_clone " + b"00" * 16 + b" 1 capsa\n"


@pytest.mark.parametrize(
    ("seed", "hostname", "mac"),
    [
        (b"short", "ok", None),
        (os.urandom(32), "bad;reboot", None),
        (os.urandom(32), "x" * 64, None),
        (os.urandom(32), "ok", "52:54:00:aa:bb:cc; reboot"),
        (os.urandom(32), "ok", "52:54:00:AA:BB:CC"),
    ],
)
def test_fixup_line_refuses_what_could_inject_commands(seed: bytes, hostname: str, mac: str | None) -> None:
    with pytest.raises(engine.ConfigError):
        fixup_line(seed, 1, hostname, mac)


@pytest.mark.parametrize(
    ("name", "expected"),
    [("default-3", "default-3"), ("web_a-12", "web-a-12"), ("__", "capsa"), ("a" * 80, "a" * 63)],
)
def test_clone_hostname(name: str, expected: str) -> None:
    assert clone_hostname(name) == expected


# ----- which shapes can be cloned ----------------------------------------------------------------


def test_snapshot_unsupported_names_the_reason(fake_guest: engine.LinuxDirectBoot) -> None:
    assert snapshot_unsupported(engine.vm(fake_guest).spec()) is not None  # no ready marker
    ours = engine.LinuxDirectBoot(fake_guest.kernel, fake_guest.initrd, ready_marker=b"m", capsa_guest=True)
    assert snapshot_unsupported(engine.vm(ours).spec()) is None
    assert "login" in (snapshot_unsupported(engine.vm(ours).login_user("alice").spec()) or "")
    assert snapshot_unsupported(engine.vm(ours).cmdline_override("console=ttyS0").spec()) is not None


# ----- metadata ----------------------------------------------------------------------------------


def _shape(**changes: Any) -> MachineShape:
    shape = MachineShape(
        qemu="QEMU emulator version 7.2.22", kernel="/k", kernel_stamp="1:2", initrd="/i", initrd_stamp="3:4",
        append="console=ttyS0", cpus=1, memory_mb=256, machine="microvm", accel="tcg", nic=True, nic_mtu=1500,
    )
    return replace(shape, **changes)


def test_shape_key_changes_with_everything_that_shapes_the_vm() -> None:
    base = _shape()
    keys = {base.key()}
    for change in ({"qemu": "QEMU emulator version 8.0"}, {"kernel_stamp": "1:3"}, {"initrd_stamp": "9:9"},
                   {"append": "quiet"}, {"cpus": 2}, {"memory_mb": 512}, {"machine": "q35"}, {"accel": "kvm"},
                   {"nic": False}, {"nic_mtu": 9000}, {"extra_args": ("-s",)}, {"ram_block": "ram0"}):
        keys.add(_shape(**change).key())
    assert len(keys) == 13
    assert base.differences(_shape(cpus=2)) == ["cpus: 1 != 2"]
    assert base.differences(base) == []


def _write_snapshot(directory: Path, state: bytes = b"device state") -> SnapshotInfo:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / STATE_FILE).write_bytes(state)
    info = SnapshotInfo(
        kind="full", shape=_shape(), guest=GuestFacts("00", True, True, "capsa", 4096, "10.0.2.15"),
        state_size=len(state), state_sha256=sha256_file(directory / STATE_FILE),
    )
    write_info(directory, info)
    return info


def test_snapshot_info_round_trips(tmp_path: Path) -> None:
    info = _write_snapshot(tmp_path / "snap")
    assert read_info(tmp_path / "snap") == info


def test_truncated_and_corrupt_state_files_are_caught(tmp_path: Path) -> None:
    _write_snapshot(tmp_path / "snap")
    state = tmp_path / "snap" / STATE_FILE
    state.write_bytes(b"device")
    with pytest.raises(engine.SnapshotError, match="truncated or corrupt: 6 bytes"):
        read_info(tmp_path / "snap")
    state.write_bytes(b"DEVICE STATE")
    with pytest.raises(engine.SnapshotError, match="SHA-256"):
        read_info(tmp_path / "snap")
    state.unlink()
    with pytest.raises(engine.SnapshotError, match="state file state is missing"):
        read_info(tmp_path / "snap")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"shape": {"format": 99}}', "snapshot format 99"),
        ('{"shape": {"format": 1}}', "missing or malformed"),
    ],
)
def test_bad_snapshot_json_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / META_FILE).write_text(text)
    with pytest.raises(engine.SnapshotError, match=message) as caught:
        read_info(tmp_path)
    assert str(tmp_path / META_FILE) in str(caught.value)


def test_a_folder_without_json_is_not_a_snapshot(tmp_path: Path) -> None:
    with pytest.raises(engine.SnapshotError, match="is not a snapshot"):
        engine.Snapshot.load(tmp_path)


def test_template_ram_file_must_exist_and_match_the_memory(tmp_path: Path) -> None:
    info = _write_snapshot(tmp_path / "snap")
    ram = tmp_path / "ram"
    write_info(tmp_path / "snap", replace(info, kind="template", ram_file=str(ram)))
    with pytest.raises(engine.SnapshotError, match="RAM file .* is gone"):
        read_info(tmp_path / "snap")
    ram.write_bytes(b"\0" * 4096)
    with pytest.raises(engine.SnapshotError, match="the guest has 256 MiB"):
        read_info(tmp_path / "snap")


def test_ram_folder_without_room_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RAM_DIR_ENV, str(tmp_path))
    free_mb = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize >> 20
    with pytest.raises(engine.SnapshotError, match=r"MiB free; a template of this .* MiB guest needs") as caught:
        prepare_ram_file("k", free_mb + 1)
    assert str(tmp_path) in str(caught.value) and RAM_DIR_ENV in str(caught.value)
    assert prepare_ram_file("k", 1).parent == tmp_path  # room enough: a fresh path, not yet a file


# ----- QEMU's command line -----------------------------------------------------------------------


def test_argv_for_template_clone_and_named_ram() -> None:
    base = MachineSpec(kernel=Path("/k"), initrd=None, append="", memory_mb=256)
    sockets = MachineSockets(Path("/q"), Path("/s"))
    template = qemu_argv("qemu", replace(base, ram_backend="file", ram_file=Path("/dev/shm/t.ram"), ram_shared=True), sockets)
    assert "memory-backend-file,id=ram0,size=256M,mem-path=/dev/shm/t.ram,share=on" in template
    assert any("memory-backend=ram0" in arg for arg in template)
    clone = qemu_argv("qemu", replace(base, ram_backend="file", ram_file=Path("/dev/shm/t.ram"), incoming="defer"), sockets)
    assert "memory-backend-file,id=ram0,size=256M,mem-path=/dev/shm/t.ram,share=off" in clone
    assert clone[clone.index("-incoming") + 1] == "defer"
    named = qemu_argv("qemu", replace(base, ram_backend="ram"), sockets)
    assert "memory-backend-ram,id=ram0,size=256M" in named
    plain = qemu_argv("qemu", base, sockets)
    assert not any("memory-backend" in arg for arg in plain) and "-incoming" not in plain
    with pytest.raises(engine.ConfigError):
        qemu_argv("qemu", replace(base, ram_backend="file"), sockets)


# ----- the gateway's side ------------------------------------------------------------------------


def test_dhcp_grant_binds_an_address_without_an_exchange() -> None:
    server = DhcpServer(DhcpConfig.for_subnet("10.0.2.0/24"))
    mac = bytes.fromhex("525400aabbcc")
    server.grant(mac, IPv4Address("10.0.2.15"), now=0)
    assert server.lease_of(mac, now=1) == IPv4Address("10.0.2.15")
    with pytest.raises(ValueError, match="leased to another client"):
        server.grant(bytes.fromhex("525400000001"), IPv4Address("10.0.2.15"), now=1)
    with pytest.raises(ValueError, match="outside the DHCP range"):
        server.grant(mac, IPv4Address("10.0.2.2"), now=1)


# ----- profiles ----------------------------------------------------------------------------------


def test_profile_snapshot_key(fake_guest: engine.LinuxDirectBoot) -> None:
    assert engine.parse_profile("name: a\npool: {size: 1, snapshot: false}\n").snapshot is False
    assert engine.parse_profile("name: a\npool: {size: 1}\n").snapshot is None
    with pytest.raises(engine.ProfileError, match=r"pool.snapshot: expected true or false"):
        engine.parse_profile("name: a\npool: {snapshot: 3}\n", "a.yaml")
    with pytest.raises(engine.ProfileError, match=r"a.yaml:3: pool.snapshot: expected false or no key: a login profile"):
        engine.parse_profile("name: a\nlogin: {user: alice}\npool: {snapshot: true}\n", "a.yaml")


def test_profile_snapshot_default_follows_the_shape(fake_guest: engine.LinuxDirectBoot, monkeypatch: pytest.MonkeyPatch) -> None:
    import engine.profile.parse

    ours = engine.LinuxDirectBoot(fake_guest.kernel, fake_guest.initrd, ready_marker=b"m", capsa_guest=True)
    monkeypatch.setattr(engine.profile.parse, "default_boot", lambda: ours)
    assert engine.parse_profile("name: a\n").pool_builder().settings(1).snapshot is True
    assert engine.parse_profile("name: a\nlogin: {user: alice}\n").pool_builder().settings(1).snapshot is False
    assert engine.parse_profile("name: a\npool: {snapshot: false}\n").pool_builder().settings(1).snapshot is False
    assert json.loads(json.dumps(engine.parse_profile("name: a\n").to_dict()))["snapshot"] is None


def test_prune_stale_templates_keeps_only_what_can_still_be_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.snapshot.store import TEMPLATES_DIR_ENV, prune_stale_templates

    monkeypatch.setenv(TEMPLATES_DIR_ENV, str(tmp_path / "templates"))
    monkeypatch.setenv(RAM_DIR_ENV, str(tmp_path / "ram"))
    (tmp_path / "ram").mkdir()
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"k")
    names = ("live-1", "dead-1", "live-0", "live-2", "other-0")
    kept_ram, gone_ram, orphan, fresh_orphan, foreign = (tmp_path / "ram" / f"{n}.ram" for n in names)
    for ram in (kept_ram, gone_ram, orphan, fresh_orphan, foreign):
        ram.write_bytes(b"")
    live = _write_snapshot(tmp_path / "templates" / "live")
    write_info(tmp_path / "templates" / "live", replace(live, kind="template", ram_file=str(kept_ram),
                                                        shape=_shape(kernel=str(kernel), initrd=None)))
    dead = _write_snapshot(tmp_path / "templates" / "dead")
    write_info(tmp_path / "templates" / "dead", replace(dead, kind="template", ram_file=str(gone_ram),
                                                        shape=_shape(kernel=str(tmp_path / "pruned-vmlinux"))))
    os.utime(orphan, (0, 0))
    os.utime(foreign, (0, 0))  # an old image of a key this store never had: another store's
    removed = prune_stale_templates()
    assert set(removed) == {tmp_path / "templates" / "dead", orphan}
    assert kept_ram.exists() and fresh_orphan.exists() and foreign.exists() and not gone_ram.exists()
    assert (tmp_path / "templates" / "live" / META_FILE).exists()


# ----- sandboxes ---------------------------------------------------------------------------------


def _sandbox_boot(fake_guest: engine.LinuxDirectBoot, image: Path, *, read_only: bool = True) -> engine.LinuxDirectBoot:
    from engine.microvm.disk import DiskImage

    image.write_bytes(b"erofs")
    return engine.LinuxDirectBoot(fake_guest.kernel, fake_guest.initrd, ready_marker=b"m", capsa_guest=True,
                                  root_disk=DiskImage(image, read_only=read_only), has_agent=True)


def test_sandboxes_can_be_cloned_but_not_with_a_scratch_disk_or_a_writable_root(
    fake_guest: engine.LinuxDirectBoot, tmp_path: Path
) -> None:
    boot = _sandbox_boot(fake_guest, tmp_path / "root.erofs")
    assert snapshot_unsupported(engine.VmSpec(boot=boot)) is None
    assert "scratch disk" in (snapshot_unsupported(engine.VmSpec(boot=boot, scratch_disk_mb=64)) or "")
    writable = _sandbox_boot(fake_guest, tmp_path / "rw.erofs", read_only=False)
    assert "read-only" in (snapshot_unsupported(engine.VmSpec(boot=writable)) or "")


def test_a_sandbox_shape_records_its_root_image_and_agent_port(fake_guest: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    from engine.kvm.accel import AccelChoice
    from engine.microvm.machine_spec import machine_spec_for
    from engine.snapshot.record import machine_shape

    image = tmp_path / "root.erofs"
    spec = engine.VmSpec(boot=_sandbox_boot(fake_guest, image))
    machine = machine_spec_for(spec, AccelChoice("tcg", "test"))
    shape = machine_shape(machine)
    assert (shape.root_disk, shape.agent_port) == (str(image), "capsa.agent")
    # A rebuilt (or only touched) image is another shape: its template is stale, never loaded.
    os.utime(image, ns=(1, 2))
    touched = machine_shape(machine)
    assert touched.key() != shape.key()
    assert [d.split(":")[0] for d in shape.differences(touched)] == ["root_disk_stamp", "drives"]
    # A writable drive's contents are not saved with the state: such a machine is refused.
    scratch = replace(machine, drives=(*machine.drives, replace(machine.drives[0], read_only=False)))
    with pytest.raises(engine.SnapshotError, match=f"disk {image} is writable in place.*as_copy_on_write"):
        machine_shape(scratch)


def test_a_snapshot_json_from_before_sandboxes_still_loads(tmp_path: Path) -> None:
    info = _write_snapshot(tmp_path / "old")
    data = json.loads((tmp_path / "old" / META_FILE).read_text())
    for key in ("root_disk", "root_disk_stamp", "root_disk_format", "agent_port"):
        del data["shape"][key]
    (tmp_path / "old" / META_FILE).write_text(json.dumps(data))
    assert read_info(tmp_path / "old") == info
