"""Root disks on the default guest: ``with_root_disk`` and capsa's ``root=/dev/vda`` form boot
a small ext4 disk of our own (static busybox, an /sbin/init script), read-write, read-only or
copy-on-write, and a disk without the init named says so on the console and leaves the
initramfs's shell."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import engine
from engine.image.build import downloads_dir
from tests.disks.images import ext4_disk, overlay_dirs, sha256

pytestmark = pytest.mark.guest

BOOTED = "capsa-root-disk-booted-5c1d"
INIT = f"""#!/bin/sh
# PID 1 of the test root disk: the initramfs moved /dev, /proc, /sys, /run and /tmp here.
export PATH=/bin:/sbin
[ -e /proc/mounts ] || mount -t proc proc /proc
echo {BOOTED} > /dev/console
exec /bin/busybox init
"""
# busybox init with this inittab: a login shell on the console, whose /etc/profile prints the
# ready marker the engine waits for (as the default guest's does).
INITTAB = "::respawn:/bin/cttyhack /bin/sh -l -i\n"
PROFILE = "export PATH=/bin:/sbin\nPS1='rootdisk# '\nprintf '\\033]777;capsa-ready\\007'\n"


@pytest.fixture(scope="module")
def pristine_root_disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ext4 root disk: static busybox (from the image build's download cache) and its
    applet links, /sbin/init, /etc/inittab and /etc/profile."""
    folder = tmp_path_factory.mktemp("rootdisk")
    debs = sorted(downloads_dir().glob("busybox-static_*.deb"))
    if not debs:
        pytest.fail(f"no busybox-static .deb in {downloads_dir()}: run 'capsa-tui image build'")
    tree = folder / "tree"
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(tree)], check=True)
    busybox = tree / "bin" / "busybox"
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = tree / applet
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for name in ("dev", "proc", "sys", "run", "tmp", "root"):
        (tree / name).mkdir(exist_ok=True)
    (tree / "sbin" / "init").unlink()
    (tree / "etc").mkdir(exist_ok=True)
    for name, text in {"sbin/init": INIT, "etc/inittab": INITTAB, "etc/profile": PROFILE}.items():
        (tree / name).write_text(text)
    os.chmod(tree / "sbin" / "init", 0o755)
    return ext4_disk(folder / "root.ext4", {}, size_mb=16, source=tree)


@pytest.fixture
def root_disk(pristine_root_disk: Path, tmp_path: Path) -> Path:
    """A copy of the root disk for one test (a VM killed with it mounted read-write leaves a
    journal to replay)."""
    copy = tmp_path / "root.ext4"
    shutil.copyfile(pristine_root_disk, copy)
    return copy


async def _boot(boot: engine.LinuxDirectBoot, *, disk: engine.DiskImage | None = None,
                args: tuple[tuple[str, str], ...] = ()) -> engine.VmHandle:
    builder = engine.vm(boot).memory_mb(192).console_enabled()
    if disk is not None:
        builder = builder.disk(disk)
    for key, value in args:
        builder = builder.cmdline_arg(key, value)
    vm = await builder.build()
    try:
        await vm.wait_ready(60)
    except BaseException:
        await vm.kill()
        raise
    return vm


def _root_mount(mounts: str) -> list[str]:
    return next(line.split() for line in mounts.splitlines() if line.split()[1] == "/")


async def test_a_root_disk_boots_read_write(boot: engine.LinuxDirectBoot, root_disk: Path) -> None:
    async with await _boot(boot.with_root_disk(engine.DiskImage(root_disk))) as vm:
        con = await vm.console()
        assert BOOTED in vm.console_stream.read_from(0).decode(errors="replace")
        device, _, fstype, options = _root_mount(await con.exec("cat /proc/mounts"))[:4]
        assert (device, fstype, options.split(",")[0]) == ("/dev/vda", "ext4", "rw")
        # It is the disk's tree, not the initramfs's: no capsa init script, our own profile.
        assert (await con.run("test -e /init")).exit_code != 0
        assert await con.exec("echo written > /root/mark && sync && cat /root/mark") == "written\n"
    assert b"written" in root_disk.read_bytes()


async def test_a_read_only_root_disk_stays_unchanged(boot: engine.LinuxDirectBoot, root_disk: Path) -> None:
    before = sha256(root_disk)
    async with await _boot(boot.with_root_disk(engine.DiskImage(root_disk).as_read_only())) as vm:
        con = await vm.console()
        assert _root_mount(await con.exec("cat /proc/mounts"))[3].split(",")[0] == "ro"
        assert (await con.run("echo x > /root/nope")).exit_code != 0
        assert (await con.run("mount -o remount,rw /")).exit_code != 0
        await con.run("printf EVIL | dd of=/dev/vda bs=512 seek=2 conv=notrunc 2>/dev/null; sync")
    assert sha256(root_disk) == before


async def test_a_copy_on_write_root_disk_is_written_in_its_overlay_only(
        boot: engine.LinuxDirectBoot, root_disk: Path) -> None:
    before, overlays = sha256(root_disk), overlay_dirs()
    async with await _boot(boot.with_root_disk(engine.DiskImage(root_disk).as_copy_on_write())) as vm:
        con = await vm.console()
        assert _root_mount(await con.exec("cat /proc/mounts"))[3].split(",")[0] == "rw"
        assert await con.exec("echo cow-write > /root/mark && sync && cat /root/mark") == "cow-write\n"
        # The overlay folder went as soon as QEMU opened it: nothing to leak if the VM is killed.
        assert overlay_dirs() == overlays
    assert sha256(root_disk) == before and b"cow-write" not in root_disk.read_bytes()


async def test_a_read_only_root_disk_left_unclean_boots_without_its_journal(
        boot: engine.LinuxDirectBoot, root_disk: Path) -> None:
    vm = await _boot(boot.with_root_disk(engine.DiskImage(root_disk)))
    try:
        await (await vm.console()).exec("echo before-kill > /root/mark && sync")
    finally:
        await vm.kill()  # mounted read-write: the journal needs replaying now
    before = sha256(root_disk)
    async with await _boot(boot.with_root_disk(engine.DiskImage(root_disk).as_read_only())) as again:
        con = await again.console()
        seen = again.console_stream.read_from(0).decode(errors="replace")
        assert "was not cleanly unmounted: mounted read-only without replaying its journal" in seen
        # The disk's own init runs (the mark itself may be among the unreplayed writes).
        assert BOOTED in seen and (await con.run("test -x /sbin/init && test ! -e /init")).exit_code == 0
    assert sha256(root_disk) == before


async def test_capsas_root_argument_form_boots_it(boot: engine.LinuxDirectBoot, root_disk: Path) -> None:
    async with await _boot(boot, disk=engine.DiskImage(root_disk), args=(("root", "/dev/vda"),)) as vm:
        con = await vm.console()
        assert BOOTED in vm.console_stream.read_from(0).decode(errors="replace")
        assert _root_mount(await con.exec("cat /proc/mounts"))[:3] == ["/dev/vda", "/", "ext4"]


async def test_a_root_disk_without_its_init_stays_on_the_initramfs(boot: engine.LinuxDirectBoot, root_disk: Path) -> None:
    spec_boot = boot.with_root_disk(engine.DiskImage(root_disk).as_read_only())
    async with await _boot(spec_boot, args=(("init", "/sbin/missing"),)) as vm:
        con = await vm.console()
        seen = vm.console_stream.read_from(0).decode(errors="replace")
        assert "capsa: the root disk /dev/vda has no /sbin/missing" in seen
        assert BOOTED not in seen
        # The initramfs's shell, with the disk unmounted again.
        assert (await con.run("test -e /init")).exit_code == 0
        assert "/dev/vda" not in await con.exec("cat /proc/mounts")
