"""Integration tests: real guests booted with QEMU, driven through their real serial console."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

import engine

pytestmark = pytest.mark.guest


async def test_boot_and_exec(shared_vm: engine.VmHandle, console: engine.Console) -> None:
    assert shared_vm.status() == engine.Running()
    out = await console.exec("uname -r", timeout=10)
    assert out.strip().endswith("-cloud-amd64")
    assert await console.exec("echo hello") == "hello\n"


async def test_accelerator_is_reported(shared_vm: engine.VmHandle) -> None:
    assert shared_vm.accel.name in ("kvm", "tcg")
    assert shared_vm.accel.reason
    if os.path.exists("/sys/module/kvm_pvm"):
        assert shared_vm.accel.name == "tcg"


async def test_run_exit_codes(console: engine.Console) -> None:
    assert await console.run("true") == engine.CommandResult(0, "")
    assert (await console.run("false")).exit_code == 1
    res = await console.run("echo out; sh -c 'exit 42'")
    assert (res.exit_code, res.output) == (42, "out\n")


async def test_exec_pipes_quotes_and_comments(console: engine.Console) -> None:
    out = await console.exec("printf 'a|b\\nc d\\n' | grep -c '|'  # count pipes")
    assert out == "1\n"
    long_word = "x" * 150  # wraps the 80-column echo twice
    assert await console.exec(f"echo {long_word} | wc -c") == "151\n"


async def test_two_vcpus(console: engine.Console) -> None:
    assert (await console.exec("nproc")).strip() == "2"


async def test_memory_size(console: engine.Console) -> None:
    line = await console.exec("grep MemTotal /proc/meminfo")
    kib = int(line.split()[1])
    # The kernel keeps some memory for itself; what is left must be close to 320 MiB.
    assert 250 * 1024 < kib <= 320 * 1024


async def test_send_interrupt_stops_sleep(console: engine.Console) -> None:
    task = asyncio.create_task(console.run("sleep 100", timeout=60))
    await asyncio.sleep(1.0)
    await console.send_interrupt()
    res = await asyncio.wait_for(task, 20)
    assert res.exit_code == 130


async def test_send_eof_ends_cat(console: engine.Console) -> None:
    task = asyncio.create_task(console.run("cat", timeout=60))
    await asyncio.sleep(0.5)
    await console.write_line("from-stdin")
    await console.send_eof()
    res = await asyncio.wait_for(task, 20)
    assert res.exit_code == 0
    assert res.output.count("from-stdin") == 2  # the tty's echo, then cat's copy


async def test_split_halves_concurrently(console: engine.Console) -> None:
    reader, writer = await console.split()

    async def write_later() -> None:
        await asyncio.sleep(0.2)
        await writer.write_line("echo split-$((6*7))")

    writing = asyncio.create_task(write_later())
    seen = await reader.wait_for("split-42\r\n", timeout=15)
    await writing
    assert "split-42" in seen
    await console.wait_for("split-42\r\n", timeout=15)  # keep the console's own reader in step


async def test_two_readers_see_the_same_bytes(console: engine.Console) -> None:
    first, second = console.reader(), console.reader()
    await console.exec("seq 1 300")
    a = await first.wait_for("300\r\n", timeout=10)
    b = await second.wait_for("300\r\n", timeout=10)
    assert a == b and "\n150\r\n" in a


async def test_one_megabyte_burst_keeps_its_end(console: engine.Console) -> None:
    res = await console.run("head -c 1000000 /dev/zero | tr '\\0' x; echo; echo burst-end", timeout=120)
    assert res.exit_code == 0
    assert res.output.endswith("burst-end\n")
    assert res.output.count("x") == 1_000_000


async def test_wait_for_timeout_shows_what_was_seen(console: engine.Console) -> None:
    await console.write_line("echo last-words")
    with pytest.raises(engine.ConsoleTimeout) as info:
        await console.wait_for("never-printed-pattern", timeout=1.5)
    assert "last-words" in str(info.value)
    assert "never-printed-pattern" in str(info.value)


async def test_login_with_and_without_password(boot: engine.LinuxDirectBoot) -> None:
    async with await engine.vm(boot).console_enabled().login_user("alice", "s3cret pw").build() as vm:
        console = await vm.console()
        await console.login("root", None, timeout=60)
        assert (await console.exec("id -u")).strip() == "0"
        await console.write_line("exit")
        with pytest.raises(engine.ConsoleError, match="alice"):
            await console.login("alice", "wrong", timeout=30)
        await console.login("alice", "s3cret pw", timeout=30)
        assert (await console.exec("id -un")).strip() == "alice"
        assert (await console.exec("echo $HOME")).strip() == "/home/alice"


async def test_poweroff_gives_stopped(boot: engine.LinuxDirectBoot) -> None:
    vm = await engine.vm(boot).console_enabled().build()
    console = await vm.console()
    await vm.wait_ready(60)
    await console.write_line("poweroff")
    status = await vm.wait_timeout(30)
    assert status == engine.Stopped(0)


async def test_stop_is_graceful(boot: engine.LinuxDirectBoot) -> None:
    vm = await engine.vm(boot).console_enabled().build()
    await vm.wait_ready(60)
    status = await vm.stop(timeout=20)
    assert status == engine.Stopped(0)
    assert vm.shutdown_reason == "guest-shutdown"  # the guest answered the power button


async def test_panic_is_failed_with_console_lines(boot: engine.LinuxDirectBoot) -> None:
    vm = await engine.vm(boot).cmdline_arg("rdinit", "/no/such/init").cmdline_arg("root", "/dev/nothing").build()
    status = await vm.wait_timeout(60)
    assert isinstance(status, engine.Failed)
    assert "Kernel panic" in status.message


async def test_machine_killed_from_outside(boot: engine.LinuxDirectBoot) -> None:
    vm = await engine.vm(boot).console_enabled().build()
    console = await vm.console()
    await vm.wait_ready(60)
    reader = console.reader()
    os.kill(vm.pid, signal.SIGKILL)
    status = await vm.wait_timeout(10)
    assert isinstance(status, engine.Failed) and "SIGKILL" in status.message

    async def read_to_eof() -> None:
        while await reader.read():
            pass

    await asyncio.wait_for(read_to_eof(), 5)  # readers get EOF, nothing hangs
    with pytest.raises(engine.ConsoleClosed):
        await asyncio.wait_for(console.wait_for("anything", timeout=5), 10)


async def test_async_with_kills_the_vm(boot: engine.LinuxDirectBoot) -> None:
    async with await engine.vm(boot).build() as vm:
        pid = vm.pid
        assert vm.status() in (engine.Starting(), engine.Running())
    assert isinstance(vm.status(), engine.Stopped)
    assert not os.path.exists(f"/proc/{pid}")


async def test_console_requires_console_enabled(boot: engine.LinuxDirectBoot) -> None:
    async with await engine.vm(boot).build() as vm:
        with pytest.raises(engine.ConsoleError, match="console_enabled"):
            await vm.console()


async def test_boot_timeout_names_the_console(boot: engine.LinuxDirectBoot) -> None:
    async with await engine.vm(boot).console_enabled().build() as vm:
        with pytest.raises(engine.BootTimeout, match="not ready after 0.01s"):
            await vm.wait_ready(0.01)


async def test_a_vm_lifecycle_leaks_no_fds(boot: engine.LinuxDirectBoot) -> None:
    async def one_vm() -> None:
        async with await engine.vm(boot).console_enabled().build() as vm:
            assert await (await vm.console()).exec("echo up") == "up\n"

    await one_vm()  # the first run may open lazily-created loop resources
    before = len(os.listdir("/proc/self/fd"))
    await one_vm()
    assert len(os.listdir("/proc/self/fd")) == before


async def test_own_kernel_and_initrd(boot: engine.LinuxDirectBoot) -> None:
    image = engine.default_image(build=False)
    own = engine.LinuxDirectBoot(image.bzimage, image.initrd)  # the compressed kernel, no marker
    async with await engine.vm(own).console_enabled().build() as vm:
        assert vm.status() == engine.Running()  # without a marker: running once QEMU runs
        console = await vm.console()
        await console.wait_for(":~# ", timeout=60)
        assert await console.exec("echo own-kernel") == "own-kernel\n"


# Here, not in tests/agent: the session's shared VM is best booted where it has always been
# first used (an idle guest in the background slows the timing-sensitive console tests).
async def test_a_plain_vm_has_no_agent(shared_vm: engine.VmHandle) -> None:
    with pytest.raises(engine.AgentUnavailable, match="no agent"):
        await shared_vm.agent()
