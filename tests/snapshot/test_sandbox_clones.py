"""Sandbox templates and their clones, with real guests: identity set through the agent.

A template of a sandbox is saved with its agent connected and idle; each clone opens a new
agent session and calls ``set_identity`` (random state, clock, hostname, MAC, and a cluster
member's address). Every test works in a templates folder and RAM folder of this module's
own, and the tests that only clone share one template.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

import engine
from engine.microvm.boot import LinuxDirectBoot
from engine.microvm.disk import DiskImage
from engine.microvm.spec import VmSpec
from engine.snapshot.clone import WaitingClone
from engine.snapshot.snapshot import Snapshot
from tests.template_store import private_template_store
from engine.snapshot.template import template_for
from tests.waiting import free_port, pool_settled, until

pytestmark = pytest.mark.guest

_READY_S = 120.0


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This module's templates folder (its RAM images beside it on /dev/shm)."""
    with private_template_store(tmp_path_factory.mktemp("sandbox-templates"), "sb") as root:
        yield root


def _net() -> engine.UserNatConfig:
    return engine.NetworkMode.user_nat().dns_upstream(f"127.0.0.1:{free_port()}").build()


def _spec(boot: LinuxDirectBoot, **fields: object) -> VmSpec:
    settings: dict[str, object] = {"cpus": 1, "memory_mb": 512, "console": True, "network": _net(), **fields}
    return VmSpec(boot=boot, **settings)  # type: ignore[arg-type]  # fields are VmSpec's own


@pytest.fixture(scope="module")
async def template(store: Path, sandbox_boot_config: LinuxDirectBoot) -> Snapshot:
    snapshot = await template_for(_spec(sandbox_boot_config), boot_timeout=_READY_S)
    # Clones are checked to take the host's time, not the template's: let the template age.
    await asyncio.sleep(max(0.0, 5 - (time.time() - snapshot.info.created_at)))
    return snapshot


async def _clone(template: Snapshot, spec: VmSpec, hostname: str) -> engine.VmHandle:
    waiting = await WaitingClone.launch(template, spec)
    return await waiting.restore(spec, hostname=hostname)


async def _facts(vm: engine.VmHandle) -> tuple[str, str, str, float]:
    agent = await vm.agent()
    r = await agent.exec(["sh", "-c", "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; "
                                      "cat /sys/class/net/eth0/address; date +%s.%N"], timeout=60)
    assert r.exit_code == 0, r.stderr
    rand, host, mac, clock = r.stdout.decode().split()
    return rand, host, mac, float(clock)


async def test_a_sandbox_template_records_its_root_disk_and_agent_port(template: Snapshot) -> None:
    shape = template.info.shape
    assert shape.root_disk is not None and shape.root_disk_stamp is not None
    assert shape.agent_port == "capsa.agent"
    assert template.info.extra["identity"] == "agent"
    rebuilt = template.vm_spec()
    assert rebuilt.boot.has_agent and rebuilt.boot.root_disk is not None
    assert rebuilt.boot.root_disk.path == Path(shape.root_disk) and rebuilt.boot.root_disk.read_only


async def test_two_sandbox_clones_are_machines_of_their_own(template: Snapshot, sandbox_boot_config: LinuxDirectBoot) -> None:
    spec = _spec(sandbox_boot_config)
    first = await _clone(template, spec, "sb-one")
    try:
        second = await _clone(template, spec, "sb-two")
        try:
            facts = []
            for vm in (first, second):
                agent = await vm.agent()
                assert (await agent.exec(["true"], timeout=60)).exit_code == 0
                facts.append(await _facts(vm))
            (rand1, host1, mac1, clock1), (rand2, host2, mac2, clock2) = facts
            assert rand1 != rand2 and len(rand1) == 64
            assert (host1, host2) == ("sb-one", "sb-two")
            assert mac1 != mac2
            now = time.time()
            # The template is older than 5 s: a clone keeping its clock would be that far behind.
            assert abs(clock1 - now) < 4 and abs(clock2 - now) < 4
            # The console still answers (its shell is at a prompt, as in the template).
            console = await first.console()
            assert (await console.run("hostname", timeout=60)).output.strip() == "sb-one"
        finally:
            await second.kill()
    finally:
        await first.kill()


async def test_cluster_sandbox_clones_take_their_own_addresses(template: Snapshot, sandbox_boot_config: LinuxDirectBoot) -> None:
    nat = engine.NetworkMode.cluster(f"sbc{os.getpid()}").dns_upstream(f"127.0.0.1:{free_port()}").build()
    spec = _spec(sandbox_boot_config, network=nat)
    members = []
    try:
        for name in ("member-a", "member-b"):
            # The shared template is no member (templates never are): the same machine.
            members.append(await _clone(template, spec, name))
        addresses = []
        for vm in members:
            assert vm.guest_ip is not None
            agent = await vm.agent()
            r = await agent.exec(["/usr/lib/capsa/busybox", "ip", "-4", "-o", "addr", "show", "dev", "eth0"], timeout=60)
            assert r.exit_code == 0, r.stderr
            assert f" {vm.guest_ip}/" in r.stdout.decode(), r.stdout
            addresses.append(vm.guest_ip)
        assert addresses[0] != addresses[1]
    finally:
        for vm in members:
            await vm.kill()


async def test_a_touched_root_image_makes_the_template_stale_and_it_is_rebuilt(
    store: Path, sandbox_boot_config: LinuxDirectBoot, tmp_path: Path
) -> None:
    assert sandbox_boot_config.root_disk is not None
    image = tmp_path / f"root{sandbox_boot_config.root_disk.path.suffix}"
    shutil.copyfile(sandbox_boot_config.root_disk.path, image)
    boot = sandbox_boot_config.with_root_disk(DiskImage(image, read_only=True))
    spec = _spec(boot)
    first = await template_for(spec, boot_timeout=_READY_S)
    os.utime(image, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    # A clone of the old template is refused: its shape names the image's old stamp.
    with pytest.raises(engine.SnapshotError, match="root_disk_stamp"):
        await engine.vm_from_snapshot(first.directory)
    second = await template_for(spec, boot_timeout=_READY_S)
    assert second.directory != first.directory
    assert second.info.shape.root_disk_stamp != first.info.shape.root_disk_stamp
    vm = await _clone(second, spec, "sb-fresh")
    try:
        assert (await (await vm.agent()).exec(["true"], timeout=60)).exit_code == 0
    finally:
        await vm.kill()


async def test_a_sandbox_pool_refills_from_clones_and_hands_out_a_working_agent(
    template: Snapshot, sandbox_boot_config: LinuxDirectBoot
) -> None:
    builder = engine.vm_pool(sandbox_boot_config).memory_mb(512).console_enabled().network(_net())
    async with await builder.name("sbpool").snapshot(True).build(2) as pool:
        for _ in range(2):
            vm = await pool.reserve(timeout=_READY_S)
            agent = await vm.agent(timeout=5)
            r = await agent.exec(["hostname"], timeout=60)
            assert (r.exit_code, r.stdout.decode().strip()) == (0, vm.id)
            await vm.release()
        await until(lambda: pool_settled(pool), timeout=_READY_S * 2, what="the pool refilled")
        stats = pool.stats()
        assert (stats.snapshot, stats.fallbacks, stats.snapshot_error) == ("ready", 0, None), stats
        assert stats.created == 4, stats


async def test_a_clone_whose_identity_step_fails_is_refused_naming_the_step(
    template: Snapshot, sandbox_boot_config: LinuxDirectBoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.snapshot.clone as clone_module

    # A clock the guest's kernel refuses (far past what clock_settime takes): the real agent's
    # "clock" step fails in the guest, and the clone is killed instead of handed out.
    monkeypatch.setattr(clone_module, "time", SimpleNamespace(time=lambda: 1e20))
    spec = _spec(sandbox_boot_config)
    waiting = await WaitingClone.launch(template, spec)
    with pytest.raises(engine.SnapshotError, match="identity fix-up failed at clock"):
        await waiting.restore(spec, hostname="sb-bad")
    assert waiting.machine.exited
