"""The capsa-tui command, run as a user would run it (a real process, a real terminal)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

import engine

CLI = str(Path(sys.executable).with_name("capsa-tui"))


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_no_arguments_prints_help() -> None:
    res = _run()
    assert res.returncode == 0
    assert "usage: capsa-tui" in res.stdout and "vm" in res.stdout and "image" in res.stdout


def test_image_info_shows_paths_and_accelerator(boot: engine.LinuxDirectBoot) -> None:
    res = _run("image", "info")
    assert res.returncode == 0, res.stderr
    assert str(boot.kernel) in res.stdout.replace("\n", "") or boot.kernel.name in res.stdout
    assert "accelerator" in res.stdout


@pytest.mark.guest
def test_vm_run_prints_output_and_exit_code(boot: engine.LinuxDirectBoot) -> None:
    res = _run("vm", "run", "--cpus", "2", "--", "sh", "-c", "nproc; echo to-stderr >&2; exit 3")
    assert res.returncode == 3, res.stderr
    assert res.stdout.splitlines() == ["2", "to-stderr"]  # the console merges the two streams


@pytest.mark.guest
def test_vm_run_attaches_a_disk_and_a_tagged_share(boot: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    disk = tmp_path / "marked.img"
    with open(disk, "wb") as file:
        file.write(b"DISK-MARK-7f3")
        file.truncate(1 << 20)
    out = tmp_path / "out"
    out.mkdir()
    mount = engine.Share(out, "out", engine.MountMode.ReadWrite).mount_line("/mnt/out")
    res = _run("vm", "run", "--disk", f"{disk}:ro", "--share", f"{out}:out", "--",
               f"head -c 13 /dev/vda; echo; {mount} && echo from-guest > /mnt/out/made", timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.splitlines()[0] == "DISK-MARK-7f3"
    assert (out / "made").read_text() == "from-guest\n"


def test_vm_run_without_command_is_an_error() -> None:
    res = _run("vm", "run")
    assert res.returncode == 2 and "give the command" in res.stderr


@pytest.mark.guest
def test_vm_console_attaches_and_ctrl_bracket_stops(boot: engine.LinuxDirectBoot) -> None:
    child = pexpect.spawn(CLI, ["vm", "console"], timeout=60, dimensions=(24, 80))
    try:
        child.expect("Ctrl-]")
        child.expect(r"capsa:.*# ")
        child.sendline("echo attached-$((40+2))")
        child.expect("attached-42")
        child.send("\x1d")
        child.expect("VM stopped")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
