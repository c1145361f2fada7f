"""Cluster members may be cloned: the template is no member, each clone joins with its own address."""
from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest

import engine
from engine.errors import ConfigError
from engine.snapshot.identity import fixup_line
from engine.snapshot.snapshot import snapshot_unsupported


def _boot(tmp_path: Path) -> engine.LinuxDirectBoot:
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    return engine.LinuxDirectBoot(kernel, initrd, ready_marker=b"READY", capsa_guest=True)


def test_a_cluster_network_keeps_clones_on(tmp_path: Path) -> None:
    member = engine.vm(_boot(tmp_path)).console_enabled().network(engine.NetworkMode.cluster("a").build()).spec()
    assert snapshot_unsupported(member) is None


def test_the_fixup_line_carries_a_new_address_only_with_a_new_mac() -> None:
    address = (IPv4Interface("10.0.2.16/24"), IPv4Address("10.0.2.2"))
    line = fixup_line(b"s" * 16, 5, "clone-1", "52:54:00:00:00:01", address=address)
    assert line.split()[-2:] == [b"10.0.2.16/24", b"10.0.2.2"]
    assert len(fixup_line(b"s" * 16, 5, "clone-1", "52:54:00:00:00:01").split()) == 5
    with pytest.raises(ConfigError):
        fixup_line(b"s" * 16, 5, "clone-1", None, address=address)
