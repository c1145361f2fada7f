"""Cluster members are not cloned: a clone wakes up holding its template's address."""
from __future__ import annotations

from pathlib import Path

import engine
from engine.snapshot.snapshot import snapshot_unsupported


def _boot(tmp_path: Path) -> engine.LinuxDirectBoot:
    kernel, initrd = tmp_path / "k", tmp_path / "i"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    return engine.LinuxDirectBoot(kernel, initrd, ready_marker=b"READY", capsa_guest=True)


def test_a_cluster_network_turns_clones_off_with_a_reason(tmp_path: Path) -> None:
    boot = _boot(tmp_path)
    plain = engine.vm(boot).console_enabled().network(engine.NetworkMode.user_nat().build()).spec()
    member = engine.vm(boot).console_enabled().network(engine.NetworkMode.cluster("a").build()).spec()
    assert snapshot_unsupported(plain) is None
    reason = snapshot_unsupported(member)
    assert reason is not None and "cluster" in reason and "address" in reason
