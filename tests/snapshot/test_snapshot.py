"""Snapshots and clones with real guests: identity, pools that refill from a template, faults.

Every test works in a templates folder and a RAM folder of this module's own (never the user's
cache), and one template is shared by the tests that only clone it.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import engine
from engine.snapshot.clone import WaitingClone
from engine.snapshot.template import build_template, find_template, template_for
from engine.snapshot.meta import META_FILE, STATE_FILE
from engine.snapshot.store import RAM_DIR_ENV, TEMPLATES_DIR_ENV
from tests.template_store import private_template_store
from tests.procs import qemu_children
from tests.waiting import free_port, pool_settled, until

pytestmark = pytest.mark.guest

_IDENTITY = (
    "head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; hostname; "
    "cat /sys/class/net/eth0/address; date +%s; cat /proc/sys/kernel/random/boot_id"
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """This module's templates folder (its RAM images beside it on /dev/shm)."""
    with private_template_store(tmp_path_factory.mktemp("templates"), "snapshot") as root:
        yield root


def _net(port: int = 0) -> engine.UserNatConfig:
    nat = engine.NetworkMode.user_nat().host("api.test", "127.0.0.1").dns_upstream(f"127.0.0.1:{free_port()}")
    return nat.policy(engine.NetworkPolicy.deny_all().allow_domain("api.test")).build()


def _spec(boot: engine.LinuxDirectBoot) -> engine.VmSpec:
    return engine.vm(boot).memory_mb(192).console_enabled().network(_net()).spec()


@pytest.fixture(scope="module")
async def template(store: Path, boot: engine.LinuxDirectBoot) -> engine.Snapshot:
    snapshot = await template_for(_spec(boot))
    # Clones are checked to take the host's time, not the template's: let the template age.
    await asyncio.sleep(max(0.0, 4 - (time.time() - snapshot.info.created_at)))
    return snapshot


@pytest.fixture
async def http_server() -> AsyncIterator[tuple[int, list[str]]]:
    """A loopback HTTP server answering ``pong``; yields its port and the peers it served."""
    served: list[str] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        served.append(str(writer.get_extra_info("peername")))
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\npong\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], served
    finally:
        server.close()
        await server.wait_closed()


def _identity(output: str) -> tuple[str, str, str, int, str]:
    random_hex, hostname, mac, epoch, boot_id = output.split()
    return random_hex, hostname, mac, int(epoch), boot_id


# ----- clone identity ----------------------------------------------------------------------------


async def test_two_clones_are_machines_of_their_own(
    template: engine.Snapshot, boot: engine.LinuxDirectBoot, http_server: tuple[int, list[str]]
) -> None:
    port, served = http_server
    spec = _spec(boot)
    first, second = await asyncio.gather(
        (await WaitingClone.launch(template, spec)).restore(hostname="clone-a"),
        (await WaitingClone.launch(template, spec)).restore(hostname="clone-b"),
    )
    async with first, second:
        consoles = [await vm.console() for vm in (first, second)]
        outputs = await asyncio.gather(*(console.exec(_IDENTITY) for console in consoles))
        ids = [_identity(out) for out in outputs]
        assert ids[0][0] != ids[1][0], "two clones produced the same random bytes"
        assert ids[0][4] != ids[1][4], "two clones share a boot id"
        assert [i[1] for i in ids] == ["clone-a", "clone-b"]
        macs = {i[2] for i in ids}
        assert len(macs) == 2 and engine.UserNatConfig().guest_mac not in macs
        for vm, ident in zip((first, second), ids):
            assert isinstance(vm.spec.network, engine.UserNatConfig) and vm.spec.network.guest_mac == ident[2]
            assert abs(ident[3] - time.time()) <= 2, "the clone kept the template's clock"
            assert str(vm.guest_ip) == template.info.guest.guest_ip  # re-granted by its own gateway
            assert isinstance(vm.status(), engine.Running)
        # Both reach the network through their own gateway, with their new MACs.
        pages = await asyncio.gather(*(c.exec(f"timeout 20 wget -qO- http://api.test:{port}/") for c in consoles))
        assert pages == ["pong\n", "pong\n"] and len(served) == 2
        # The console starts at the clone's first prompt: the fix-up line is not the user's.
        scrollback = consoles[0].stream.scrollback()
        assert b"capsa_clone" not in scrollback


async def test_twenty_clones_alive_at_once(template: engine.Snapshot, boot: engine.LinuxDirectBoot) -> None:
    waiting = [await WaitingClone.launch(template, _spec(boot)) for _ in range(20)]
    clones: list[engine.VmHandle] = []
    try:
        for index, wait in enumerate(waiting):
            clones.append(await wait.restore(hostname=f"c{index}"))
        assert len({vm.pid for vm in clones}) == 20
        assert all(vm.machine_alive() for vm in clones)
        outputs = [await (await vm.console()).exec("head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'") for vm in clones]
        assert len(set(outputs)) == 20, "clones of one template repeated each other's random bytes"
    finally:
        for wait in waiting[len(clones):]:
            await wait.close()
        await asyncio.gather(*(vm.kill() for vm in clones))


# ----- vm.snapshot and vm_from_snapshot ----------------------------------------------------------


async def test_a_running_vm_snapshot_keeps_it_running_and_clones_it(boot: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    async with await engine.vm(boot).memory_mb(192).console_enabled().build() as vm:
        console = await vm.console()
        await console.exec("echo kept > /tmp/state-file")
        path = await vm.snapshot(tmp_path / "snap")
        assert (path / META_FILE).is_file() and (path / STATE_FILE).stat().st_size > 1 << 20  # RAM inside
        assert await console.exec("cat /tmp/state-file; echo still-running") == "kept\nstill-running\n"
        async with await engine.vm_from_snapshot(path, hostname="restored") as clone:
            out = await (await clone.console()).exec("cat /tmp/state-file; hostname")
            assert out == "kept\nrestored\n"
            mine = await console.exec("head -c 16 /dev/urandom | od -An -tx1")
            theirs = await (await clone.console()).exec("head -c 16 /dev/urandom | od -An -tx1")
            assert mine != theirs
        async with await engine.vm_from_snapshot(path, fix_identity=False) as twin:
            assert isinstance(twin.status(), engine.Running)  # resumed as saved: nothing to wait for
            assert await (await twin.console()).exec("hostname") == f"{vm.spec.hostname}\n"
    with pytest.raises(engine.SnapshotError, match="not empty"):
        async with await engine.vm(boot).memory_mb(192).console_enabled().build() as vm:
            await vm.wait_ready(60)
            await vm.snapshot(path)


async def test_a_truncated_snapshot_is_refused_before_qemu_sees_it(boot: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    async with await engine.vm(boot).memory_mb(128).console_enabled().build() as vm:
        await vm.wait_ready(60)
        path = await vm.snapshot(tmp_path / "snap")
    state = path / STATE_FILE
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size // 2)
    with pytest.raises(engine.SnapshotError, match="truncated or corrupt") as caught:
        await engine.vm_from_snapshot(path)
    assert str(state) in str(caught.value)


# ----- stale templates ---------------------------------------------------------------------------


async def test_a_template_of_another_qemu_or_kernel_is_rebuilt_not_loaded(
    store: Path, boot: engine.LinuxDirectBoot, tmp_path: Path
) -> None:
    # A kernel of this test's own, so its change does not touch other tests' templates.
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(boot.kernel.read_bytes())
    own = engine.LinuxDirectBoot(kernel, boot.initrd, ready_marker=boot.ready_marker, capsa_guest=True)
    spec = engine.vm(own).memory_mb(128).console_enabled().spec()
    first = await template_for(spec)
    meta = first.directory / META_FILE
    data = json.loads(meta.read_text())
    data["shape"]["qemu"] = "QEMU emulator version 6.0.0"
    meta.write_text(json.dumps(data))
    found, why = find_template(spec)
    assert found is None and why is not None and "QEMU emulator version 6.0.0" in why
    notes: list[str] = []
    rebuilt = await template_for(spec, notes=notes)
    assert rebuilt.info.created_at > first.info.created_at and "rebuilt the template" in notes[0]
    assert rebuilt.info.shape.qemu != "QEMU emulator version 6.0.0"
    assert not Path(first.info.ram_file or "").exists(), "the stale template's RAM image was left behind"
    os.utime(kernel, ns=(time.time_ns(), time.time_ns() + 10**9))  # the kernel changed
    found, why = find_template(spec)
    assert found is None and why is None  # another shape: another key, never the old template
    async with await engine.vm_pool(own).memory_mb(128).console_enabled().snapshot(True).build(1) as pool:
        stats = pool.stats()
        assert (stats.snapshot, stats.fallbacks) == ("ready", 0)
        current, _ = find_template(spec)
        assert current is not None and current.info.shape.kernel_stamp != rebuilt.info.shape.kernel_stamp


# ----- pools -------------------------------------------------------------------------------------


def _snap_pool(boot: engine.LinuxDirectBoot, name: str) -> engine.PoolBuilder:
    return engine.vm_pool(boot).memory_mb(192).console_enabled().network(_net()).name(name).snapshot(True)


async def test_a_snapshot_pool_refills_with_fresh_clones(store: Path, boot: engine.LinuxDirectBoot) -> None:
    async with await _snap_pool(boot, "snap").max_size(3).build(2) as pool:
        seen: set[str] = set()
        for _ in range(3):
            vm = await pool.reserve(timeout=60)
            seen.add(await (await vm.console()).exec("head -c 16 /dev/urandom | od -An -tx1"))
            assert (await (await vm.console()).exec("hostname")).strip() == vm.id
            await vm.release()
        await until(lambda: pool_settled(pool), what="the pool refilled")
        stats = pool.stats()
        assert len(seen) == 3
        assert (stats.snapshot, stats.fallbacks, stats.snapshot_error) == ("ready", 0, None)
        assert stats.created == 5 and stats.waiting_clones <= 2
        # A refill restores a clone instead of booting: well under a cold boot's seconds.
        assert stats.boot_p50_s is not None


async def test_waiting_clones_killed_from_outside_are_replaced(store: Path, boot: engine.LinuxDirectBoot) -> None:
    async with await _snap_pool(boot, "killw").build(1) as pool:
        await until(lambda: pool.stats().waiting_clones == 2, what="two waiting clones")
        members = {m.pid for m in pool.members()}
        waiting = qemu_children(os.getpid()) - members - {vm.pid for vm in engine.live_vms()}
        assert len(waiting) == 2
        for pid in waiting:
            os.kill(pid, signal.SIGKILL)
        vm = await pool.reserve(timeout=60)
        await vm.release()
        await until(lambda: pool_settled(pool), what="the pool refilled")
        stats = pool.stats()
        assert (stats.snapshot, stats.fallbacks, stats.failed) == ("ready", 0, 0)
        await until(lambda: pool.stats().waiting_clones == 2, what="waiting clones replaced")


async def test_an_idle_clone_killed_from_outside_is_evicted_and_replaced(store: Path, boot: engine.LinuxDirectBoot) -> None:
    async with await _snap_pool(boot, "killc").build(1) as pool:
        victim = pool.members()[0]
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        await until(lambda: pool.stats().evicted == 1 and pool_settled(pool), what="the dead clone replaced")
        vm = await pool.reserve(timeout=30)
        assert await (await vm.console()).exec("echo alive") == "alive\n"
        await vm.release()
        assert pool.stats().fallbacks == 0


async def test_a_corrupt_template_falls_back_to_cold_boots_and_says_why(store: Path, boot: engine.LinuxDirectBoot) -> None:
    spec = _spec(boot)
    async with await _snap_pool(boot, "corrupt").build(1) as pool:
        template, _ = find_template(spec)
        assert template is not None
        state = template.directory / STATE_FILE
        # Same size and time stamp, as if the disk had flipped its bits: only QEMU can tell.
        before = state.stat()
        state.write_bytes(bytes(b ^ 0x5A for b in state.read_bytes()))
        os.utime(state, ns=(before.st_atime_ns, before.st_mtime_ns))
        vm = await pool.reserve(timeout=60)
        await vm.release()
        await until(lambda: pool.stats().fallbacks >= 1 and pool_settled(pool), timeout=120, what="a cold fallback")
        stats = pool.stats()
        assert stats.snapshot_error is not None and "could not be restored" in stats.snapshot_error
        assert f"restoring {state} failed" in stats.snapshot_error  # QEMU refused it, and said so
        vm = await pool.reserve(timeout=60)
        assert await (await vm.console()).exec("echo cold-or-clone") == "cold-or-clone\n"
        await vm.release()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root (CI runs as root)")
async def test_a_ram_folder_without_room_boots_cold_and_says_why(
    store: Path, boot: engine.LinuxDirectBoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = tmp_path / "small-shm"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(small)], capture_output=True, check=False)
    assert mounted.returncode == 0, f"cannot mount a small tmpfs: {mounted.stderr.decode().strip()}"
    try:
        monkeypatch.setenv(RAM_DIR_ENV, str(small))
        monkeypatch.setenv(TEMPLATES_DIR_ENV, str(tmp_path / "templates"))
        with pytest.raises(engine.SnapshotError, match=r"has \d+ MiB free; a template of this 192 MiB guest"):
            await build_template(_spec(boot))
        async with await _snap_pool(boot, "nospace").build(1) as pool:
            stats = pool.stats()
            assert stats.snapshot == "failed" and stats.fallbacks == 1 and stats.created == 1
            assert stats.snapshot_error is not None and str(small) in stats.snapshot_error
    finally:
        subprocess.run(["umount", str(small)], check=False)


async def test_a_login_pool_boots_cold_and_says_why(boot: engine.LinuxDirectBoot) -> None:
    async with await engine.vm_pool(boot).memory_mb(128).login_user("alice").snapshot(True).build(0) as pool:
        stats = pool.stats()
        assert stats.snapshot == "failed" and "login" in (stats.snapshot_error or "")
