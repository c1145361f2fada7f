"""Sandbox shares against a hostile guest: one booted sandbox with a read-only, a read-write and
a to-be-removed share of tmp folders, attacked through the agent (root in the guest).

The tests share the VM and run in file order; the last one kills it and checks nothing is left
on the host.
"""
from __future__ import annotations

import os
import secrets
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import engine
from engine.microvm.boot import LinuxDirectBoot
from engine.microvm.handle import VmHandle
from engine.microvm.share import MountMode, Share
from engine.microvm.spec import VmSpec

pytestmark = pytest.mark.guest

_READY_S = 120.0


@dataclass
class Setup:
    vm: VmHandle
    ro: Path
    rw: Path
    gone: Path
    outside: Path
    secret: str
    mounts_before: str


def _mounts() -> str:
    return Path("/proc/mounts").read_text()


@pytest.fixture(scope="module")
async def setup(tmp_path_factory: pytest.TempPathFactory, sandbox_boot_config: LinuxDirectBoot) -> AsyncIterator[Setup]:
    root = tmp_path_factory.mktemp("shares")
    ro, rw, gone, outside = (root / name for name in ("ro", "rw", "gone", "outside"))
    for folder in (ro, rw, gone, outside):
        folder.mkdir()
    secret = f"SECRET-{secrets.token_hex(8)}"
    (outside / "secret.txt").write_text(secret)
    (ro / "hello.txt").write_text("hello from the host\n")
    (ro / "keep.txt").write_text("keep\n")
    # Host-made symlinks inside the share pointing out of it: absolute and relative.
    (rw / "abs").symlink_to(outside)
    (rw / "rel").symlink_to(Path("..") / "outside" / "secret.txt")
    mounts_before = _mounts()
    shares = (
        Share(ro, "capsa0", MountMode.ReadOnly, guest_path="/mnt/ro"),
        Share(rw, "capsa1", MountMode.ReadWrite, guest_path="/mnt/rw"),
        Share(gone, "capsa2", MountMode.ReadWrite, guest_path="/mnt/gone"),
    )
    spec = VmSpec(boot=sandbox_boot_config.for_shares(), cpus=1, memory_mb=512, console=True, shares=shares)
    vm = await VmHandle.start(spec)
    try:
        await vm.wait_ready(_READY_S)
        yield Setup(vm, ro, rw, gone, outside, secret, mounts_before)
    finally:
        await vm.kill()


async def _sh(setup: Setup, script: str, timeout: float = 30) -> engine.ExecResult:
    agent = await setup.vm.agent(10)
    return await agent.exec(script, timeout=timeout)


async def test_shares_are_mounted_before_the_sandbox_is_handed_out(setup: Setup) -> None:
    assert setup.vm.shares_mounted
    # No exec before this one mounted anything: wait_ready returned with the shares in place.
    r = await _sh(setup, "cat /mnt/ro/hello.txt; grep ' /mnt/ro \\| /mnt/rw ' /proc/mounts")
    assert r.exit_code == 0, r
    out = r.stdout.decode()
    assert out.startswith("hello from the host\n")
    assert "capsa0 /mnt/ro 9p ro," in out and "capsa1 /mnt/rw 9p rw," in out, out


async def test_the_read_only_share_cannot_be_written_whatever_the_guest_tries(setup: Setup) -> None:
    before = {p.name: (p.read_bytes(), p.stat().st_mode) for p in setup.ro.iterdir()}
    attempts = {
        "write": "echo evil > /mnt/ro/hello.txt",
        "create": "echo evil > /mnt/ro/new.txt",
        "rm": "rm /mnt/ro/keep.txt",
        "chmod": "chmod 777 /mnt/ro/hello.txt",
        "mkdir": "mkdir /mnt/ro/dir",
        "remount": "mount -o remount,rw /mnt/ro; echo evil > /mnt/ro/hello.txt",
        "remount-create": "mount -o remount,rw /mnt/ro; echo evil > /mnt/ro/new2.txt",
    }
    for what, script in attempts.items():
        r = await _sh(setup, script)
        assert r.exit_code != 0, f"{what} succeeded on the read-only share: {r}"
    after = {p.name: (p.read_bytes(), p.stat().st_mode) for p in setup.ro.iterdir()}
    assert after == before


async def test_no_guest_path_reaches_the_folder_beside_the_share(setup: Setup) -> None:
    r = await _sh(setup, "cat /mnt/rw/../../etc/hostname; echo ---; cat /etc/hostname")
    own, _, guest_hostname = r.stdout.decode().partition("---\n")
    assert own == guest_hostname  # '..' from the share root is the guest's own tree
    outside = str(setup.outside)
    tries = [
        "cat /mnt/rw/../outside/secret.txt",
        "cat /mnt/rw/abs/secret.txt",  # host absolute symlink
        "cat /mnt/rw/rel",  # host relative symlink ../outside/secret.txt
        "cat /mnt/rw/abs/../outside/secret.txt",
        f"cat {outside}/secret.txt",
        "cd /mnt/rw && cat ../../../../../outside/secret.txt",
        "grep -rs SECRET- /mnt /tmp /root 2>/dev/null",
    ]
    for script in tries:
        r = await _sh(setup, script)
        assert setup.secret.encode() not in r.stdout + r.stderr, f"{script!r} read the secret: {r}"


async def test_what_the_guest_creates_is_plain_and_owned_by_the_host_user(setup: Setup) -> None:
    r = await _sh(setup, "set -e; cd /mnt/rw; echo made > made.txt; ln -s /etc evil; mknod dev c 1 3; "
                         "echo s > suid; chmod 4755 suid; chown 0:0 suid; mkdir d; "
                         "ls -l /mnt/rw/evil /mnt/rw/dev /mnt/rw/suid")
    assert r.exit_code == 0, r
    listing = r.stdout.decode()
    assert "evil -> /etc" in listing  # the guest sees what it made (kept in xattrs)
    uid = os.getuid()
    for name in ("made.txt", "evil", "dev", "suid", "d"):
        st = os.lstat(setup.rw / name)
        assert st.st_uid == uid, (name, st.st_uid)
        assert not stat.S_ISLNK(st.st_mode) and not stat.S_ISCHR(st.st_mode) and not stat.S_ISBLK(st.st_mode), name
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), (name, oct(st.st_mode))
    assert stat.S_ISREG(os.lstat(setup.rw / "evil").st_mode)
    assert (setup.rw / "made.txt").read_text() == "made\n"
    # nosuid in the guest too: the setuid bit the guest keeps in xattrs is not honoured.
    r = await _sh(setup, "grep ' /mnt/rw ' /proc/mounts")
    assert "nosuid" in r.stdout.decode() and "nodev" in r.stdout.decode()


async def test_a_snapshot_of_a_vm_with_a_mounted_share_is_refused_clearly(setup: Setup, tmp_path: Path) -> None:
    dest = tmp_path / "snap"
    with pytest.raises(engine.SnapshotError, match="unmount the share") as caught:
        await setup.vm.snapshot(dest)
    assert str(setup.ro) in str(caught.value)
    assert not dest.exists() or not any(dest.iterdir())
    r = await _sh(setup, "cat /mnt/ro/hello.txt")  # the VM runs on
    assert r.exit_code == 0 and r.stdout == b"hello from the host\n"


async def test_the_host_folder_removed_while_mounted_gives_errors_not_hangs(setup: Setup) -> None:
    (setup.gone / "f").write_text("x")
    r = await _sh(setup, "cat /mnt/gone/f")
    assert r.stdout == b"x"
    (setup.gone / "f").unlink()
    setup.gone.rmdir()
    for script in ("echo y > /mnt/gone/new", "mkdir /mnt/gone/sub", "cat /mnt/gone/f"):
        r = await _sh(setup, script, timeout=20)
        assert r.exit_code != 0, f"{script!r} succeeded on a removed folder: {r}"
    assert not setup.gone.exists()  # nothing recreated it on the host
    r = await _sh(setup, "echo still-here")
    assert r.stdout == b"still-here\n"


async def test_a_killed_vm_with_shares_leaves_nothing_on_the_host(setup: Setup) -> None:
    pid = setup.vm.pid
    status = await setup.vm.kill()
    assert status.is_terminal
    assert not Path(f"/proc/{pid}").exists() or "qemu" not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    assert _mounts() == setup.mounts_before
    assert (setup.ro / "hello.txt").read_text() == "hello from the host\n"
    assert (setup.rw / "made.txt").read_text() == "made\n"
    assert (setup.outside / "secret.txt").read_text() == setup.secret
