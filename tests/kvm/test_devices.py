"""Unit tests of the drive and agent-port parts of the QEMU command line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import engine
from engine.kvm.cmdline import AGENT_DEVICE_ID, Drive, MachineSockets, MachineSpec, qemu_argv


def _argv(tmp_path: Path, **fields: object) -> list[str]:
    spec = MachineSpec(kernel=Path("/k"), initrd=None, append="", **fields)  # type: ignore[arg-type]  # test passes typed fields through
    sockets = MachineSockets(qmp=tmp_path / "q", serial=tmp_path / "s", agent=tmp_path / "agent.sock")
    return qemu_argv("qemu", spec, sockets)


def _values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_read_only_drive_is_read_only_at_both_layers(tmp_path: Path) -> None:
    argv = _argv(tmp_path, drives=(Drive(Path("/img/a,b.erofs"), read_only=True),))
    (blockdev,) = _values(argv, "-blockdev")
    node = json.loads(blockdev)
    assert node["driver"] == "raw" and node["read-only"] is True
    assert node["file"] == {"driver": "file", "filename": "/img/a,b.erofs", "read-only": True, "aio": "threads"}
    assert "virtio-blk-device,drive=disk0,id=vd0" in _values(argv, "-device")


def test_drives_keep_their_order_format_and_bus(tmp_path: Path) -> None:
    drives = (Drive(Path("/a.qcow2"), format="qcow2"), Drive(Path("/b"), read_only=False))
    argv = _argv(tmp_path, drives=drives, machine="q35")
    nodes = [json.loads(v) for v in _values(argv, "-blockdev")]
    assert [n["node-name"] for n in nodes] == ["disk0", "disk1"]
    assert nodes[0]["driver"] == "qcow2" and nodes[1]["read-only"] is False
    assert [d for d in _values(argv, "-device") if d.startswith("virtio-blk")] == [
        "virtio-blk-pci,drive=disk0,id=vd0", "virtio-blk-pci,drive=disk1,id=vd1",
    ]


def test_agent_port_connects_to_our_socket(tmp_path: Path) -> None:
    argv = _argv(tmp_path, agent_port="capsa.agent")
    assert f"socket,id=agentchr,path={tmp_path / 'agent.sock'},server=off" in _values(argv, "-chardev")
    devices = _values(argv, "-device")
    assert "virtio-serial-device,id=vser0,max_ports=2" in devices
    assert f"virtserialport,bus=vser0.0,chardev=agentchr,name=capsa.agent,id={AGENT_DEVICE_ID}" in devices
    assert "virtio-serial-pci,id=vser0,max_ports=2" in _values(_argv(tmp_path, agent_port="capsa.agent", machine="pc"), "-device")


def test_no_devices_unless_asked(tmp_path: Path) -> None:
    argv = _argv(tmp_path)
    assert "-blockdev" not in argv and not any("virtserialport" in a or "agentchr" in a for a in argv)


def test_bad_drive_format_and_port_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(engine.ConfigError, match="/x.*vmdk"):
        _argv(tmp_path, drives=(Drive(Path("/x"), format="vmdk"),))
    with pytest.raises(engine.ConfigError, match="agent port name"):
        _argv(tmp_path, agent_port="a,b")
