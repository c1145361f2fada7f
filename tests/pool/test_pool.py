"""VM pools against real guests: hand-out, replacement, backpressure, faults and cleanup."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import engine
from tests.procs import qemu_children
from tests.waiting import until

pytestmark = pytest.mark.guest


def _pool(boot: engine.LinuxDirectBoot, name: str) -> engine.PoolBuilder:
    return engine.vm_pool(boot).cpus(1).memory_mb(192).console_enabled().name(name)


_OTHERS: set[int] = set()


@pytest.fixture(autouse=True)
def _machines_of_others() -> None:
    """Machines alive before the test (a session fixture's shared VM) are not its to count."""
    _OTHERS.clear()
    _OTHERS.update(qemu_children(os.getpid()))


def _qemu_children() -> set[int]:
    return qemu_children(os.getpid()) - _OTHERS


@pytest.fixture
async def pool2(boot: engine.LinuxDirectBoot) -> AsyncIterator[engine.VmPool]:
    pool = await _pool(boot, "p2").max_size(3).build(2)
    try:
        yield pool
    finally:
        await pool.close()


async def test_build_returns_with_every_vm_idle_and_ready(pool2: engine.VmPool) -> None:
    assert await pool2.available_count() == 2
    stats = pool2.stats()
    assert (stats.idle, stats.created, stats.booting, stats.reserved) == (2, 2, 0, 0)
    assert stats.boot_p50_s is not None and 0 < stats.boot_p50_s <= stats.boot_p95_s  # type: ignore[operator]  # p95 is set whenever p50 is
    assert {m.state for m in pool2.members()} == {"idle"}


async def test_reserve_exec_release_replaces_the_vm(pool2: engine.VmPool) -> None:
    vm = pool2.try_reserve()
    pid = vm.pid
    assert vm.id.startswith("p2-")
    assert await (await vm.console()).exec("echo pooled-$((6*7))") == "pooled-42\n"
    assert pool2.stats().reserved == 1
    await vm.release()
    assert pid not in _qemu_children(), "a released VM must be killed, not reused"
    assert pool2.stats().released == 1
    await until(lambda: pool2.stats().idle == 2)
    assert pid not in {m.pid for m in pool2.members()}


async def test_async_with_releases_and_each_vm_is_fresh(pool2: engine.VmPool) -> None:
    async with await pool2.reserve(timeout=30) as vm:
        await (await vm.console()).exec("touch /tmp/dirty")
        dirty_id = vm.id
    await until(lambda: pool2.stats().idle == 2)
    for _ in range(2):
        async with pool2.try_reserve() as other:
            assert other.id != dirty_id
            assert (await (await other.console()).run("test -e /tmp/dirty")).exit_code == 1


async def test_try_reserve_on_an_empty_pool_raises_pool_empty(pool2: engine.VmPool) -> None:
    held = [pool2.try_reserve(), pool2.try_reserve()]
    misses = pool2.stats().misses
    with pytest.raises(engine.PoolEmpty, match="no idle VM"):
        pool2.try_reserve()
    assert pool2.stats().misses == misses + 1
    for vm in held:
        await vm.release()


async def test_reserve_times_out_and_leaves_the_queue(pool2: engine.VmPool) -> None:
    held = [pool2.try_reserve(), pool2.try_reserve(), await pool2.reserve(timeout=60)]
    assert pool2.stats().alive == 3  # max_size
    with pytest.raises(engine.PoolTimeout, match="within 0.3s"):
        await pool2.reserve(timeout=0.3)
    await held[0].release()
    # The timed-out waiter must not swallow the replacement: the next caller gets it.
    async with await pool2.reserve(timeout=60) as vm:
        assert vm.status() == engine.Running()
    for vm in held[1:]:
        await vm.release()


async def test_waiters_are_served_first_come_first_served(boot: engine.LinuxDirectBoot) -> None:
    async with await _pool(boot, "fifo").max_size(1).build(1) as pool:
        first = pool.try_reserve()
        order: list[int] = []

        async def wait_turn(i: int) -> None:
            vm = await pool.reserve(timeout=120)
            order.append(i)
            await vm.release()

        tasks = []
        for i in range(3):
            tasks.append(asyncio.create_task(wait_turn(i)))
            await asyncio.sleep(0.05)  # make the arrival order certain
        await first.release()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2]


async def test_burst_of_32_reserves_on_pool_of_2_never_exceeds_max_4(boot: engine.LinuxDirectBoot) -> None:
    async with await _pool(boot, "burst").memory_mb(128).max_size(4).build(2) as pool:
        peak = {"stats": 0, "procs": 0}

        def watch(stats: engine.PoolStats) -> None:
            peak["stats"] = max(peak["stats"], stats.alive)
            peak["procs"] = max(peak["procs"], len(_qemu_children()))

        pool.add_listener(watch)

        async def job(i: int) -> str:
            async with await pool.reserve(timeout=600) as vm:
                return (await (await vm.console()).exec(f"echo job{i}")).strip()

        results = await asyncio.gather(*(job(i) for i in range(32)))
        pool.remove_listener(watch)
        assert results == [f"job{i}" for i in range(32)]
        assert 0 < peak["stats"] <= 4
        assert 0 < peak["procs"] <= 4
        stats = pool.stats()
        assert stats.released == 32 and stats.failed == 0


async def test_idle_vm_killed_from_outside_is_never_handed_out(pool2: engine.VmPool) -> None:
    victim = pool2.members()[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    # Blocking sleep: the event loop has not noticed the death when try_reserve runs.
    time.sleep(0.2)
    vm = pool2.try_reserve()
    assert vm.pid != victim.pid
    assert await (await vm.console()).exec("echo alive") == "alive\n"
    await vm.release()
    assert pool2.stats().evicted == 1
    assert "died" in (pool2.last_error or "")
    await until(lambda: pool2.stats().idle == 2)


async def test_reserved_vm_killed_from_outside_reports_to_holder(pool2: engine.VmPool) -> None:
    vm = await pool2.reserve(timeout=30)
    console = await vm.console()
    os.kill(vm.pid, signal.SIGKILL)
    status = await vm.wait()
    assert isinstance(status, engine.Failed) and "SIGKILL" in status.message
    await until(lambda: vm.lost is not None)
    assert "SIGKILL" in (vm.lost or "")
    with pytest.raises(engine.ConsoleClosed):
        await console.exec("echo never")
    assert pool2.stats().failed == 1
    await vm.release()  # harmless on a dead VM
    await until(lambda: pool2.stats().idle == 2)


async def test_idle_vm_whose_console_hangs_is_evicted(boot: engine.LinuxDirectBoot) -> None:
    async with await _pool(boot, "hang").max_size(2).health_interval(0.4).build(1) as pool:
        frozen = pool.members()[0]
        assert frozen.pid is not None
        os.kill(frozen.pid, signal.SIGSTOP)  # alive, but nothing answers
        await until(lambda: pool.stats().evicted == 1, timeout=30)
        assert "did not answer" in (pool.last_error or "")
        async with await pool.reserve(timeout=60) as vm:
            assert vm.pid != frozen.pid
            assert await (await vm.console()).exec("echo ok") == "ok\n"
        assert frozen.pid not in _qemu_children()


async def test_bad_kernel_fails_with_backoff_instead_of_spinning(tmp_path: Path, boot: engine.LinuxDirectBoot) -> None:
    kernel = tmp_path / "garbage-kernel"
    kernel.write_bytes(b"\x7fELF this is no kernel" * 100)
    broken = engine.LinuxDirectBoot(kernel, boot.initrd)
    started = time.monotonic()
    builder = engine.vm_pool(broken).memory_mb(128).name("broken").max_size(4)
    with pytest.raises(engine.PoolBootError, match="broken") as info:
        await builder.build(2)
    elapsed = time.monotonic() - started
    # The first two boots fail together; the third waits out the backoff (1 s after two
    # failures) and ends the build: few attempts, spread out, not a hot loop.
    assert "3 boots failed in a row" in str(info.value)
    assert "QEMU exited during start-up" in str(info.value)
    assert elapsed >= 1.0
    assert not _qemu_children()


async def test_boot_failures_in_a_running_pool_fail_waiters_and_keep_last_error(boot: engine.LinuxDirectBoot) -> None:
    pool = await _pool(boot, "flaky").max_size(1).build(1)
    try:
        vm = pool.try_reserve()
        # Break the pool's boot from now on: its replacement cannot start.
        pool.spec = engine.VmSpec(**{**pool.spec.__dict__, "extra_qemu_args": ("-no-such-option",)})
        await vm.release()
        with pytest.raises(engine.PoolBootError, match="no-such-option"):
            await pool.reserve(timeout=60)
        stats = pool.stats()
        assert 3 <= stats.failed <= 4, stats
        assert "no-such-option" in (pool.last_error or "")
    finally:
        await pool.close()


async def test_close_during_boots_leaves_nothing(boot: engine.LinuxDirectBoot) -> None:
    building = asyncio.create_task(_pool(boot, "early").max_size(3).build(3))
    await asyncio.sleep(0.5)  # machines are starting
    building.cancel()
    with pytest.raises(asyncio.CancelledError):
        await building
    assert not _qemu_children()


async def test_close_kills_reserved_and_idle_and_fails_waiters(boot: engine.LinuxDirectBoot) -> None:
    pool = await _pool(boot, "closing").max_size(3).build(2)
    held = [pool.try_reserve(), pool.try_reserve()]
    waiter = asyncio.create_task(pool.reserve())
    await asyncio.sleep(0.05)
    assert pool.stats().booting == 1  # the third VM is still booting when the pool closes
    await pool.close()
    with pytest.raises(engine.PoolClosed):
        await waiter
    assert all(vm.lost == "the pool was closed" for vm in held)
    assert all(vm.status().is_terminal for vm in held)
    with pytest.raises(engine.PoolClosed):
        pool.try_reserve()
    await pool.close()  # idempotent
    assert not _qemu_children()


async def test_pool_builder_rejects_bad_sizes(boot: engine.LinuxDirectBoot) -> None:
    with pytest.raises(engine.ConfigError, match="max_size"):
        await engine.vm_pool(boot).max_size(1).build(2)
    with pytest.raises(engine.ConfigError, match="size"):
        await engine.vm_pool(boot).build(-1)
    with pytest.raises(engine.ConfigError, match="cpus"):
        await engine.vm_pool(boot).cpus(0).build(1)


async def test_login_pool_hands_out_getty_vms_that_shell_logs_into(boot: engine.LinuxDirectBoot) -> None:
    async with await _pool(boot, "getty").login_user("alice", "s3cret").max_size(1).build(1) as pool:
        async with pool.try_reserve() as vm:
            console = await vm.shell()
            assert await console.exec("id -un") == "alice\n"
            assert (await vm.shell()) is console  # logged in once


async def test_resize_grows_and_shrinks_without_touching_reserved_vms(boot: engine.LinuxDirectBoot) -> None:
    async with await _pool(boot, "resize").max_size(2).build(1) as pool:
        held = pool.try_reserve()
        pool.resize(2, max_size=3)
        await until(lambda: pool.stats().idle == 2)
        assert pool.stats().reserved == 1 and held.status() == engine.Running()
        pool.resize(0)
        await until(lambda: pool.stats().alive == 1)
        assert (pool.stats().idle, pool.stats().reserved) == (0, 1)
        assert await (await held.console()).exec("echo still") == "still\n"
        with pytest.raises(engine.ConfigError, match="max_size"):
            pool.resize(4, max_size=2)
        await held.release()


async def test_wait_filled_counts_vms_reserved_while_the_pool_filled(boot: engine.LinuxDirectBoot) -> None:
    pool = _pool(boot, "fillres").max_size(1).start(1)
    try:
        vm = await pool.reserve(timeout=60)  # the only VM, taken while the pool was filling
        await asyncio.wait_for(pool.wait_filled(), 10)  # no room for a replacement: as full as it gets
        await vm.release()
    finally:
        await pool.close()


async def test_a_socket_folder_too_deep_is_a_clear_machine_error(
    boot: engine.LinuxDirectBoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with pytest.raises(engine.MachineError, match="too deep for Unix socket paths"):
        await engine.vm(boot).memory_mb(128).build()
    pool = _pool(boot, "deep").start(1)
    try:
        with pytest.raises(engine.PoolBootError, match="too deep"):
            await asyncio.wait_for(pool.wait_filled(), 60)
    finally:
        await pool.close()
