"""End to end: the installed ``capsa-tui`` command on a real terminal (tmux), driven by keys.

A private tmux server (``-L``, no config) runs ``capsa-tui app --start e2e`` in a 120x40 window
with a config folder holding one small profile; the test reads the screen with ``capture-pane``
and types with ``send-keys``, as a person would: wait for the warm VM, reserve it, run a command
in its console, copy its output with the keyboard (to tmux's buffer by OSC 52) and paste it back,
release it (``ctrl+]`` then ``x``), quit with ``q``, and check that the app ended
and took every QEMU process and VM socket folder it made with it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import engine
from tests.procs import alive, processes

CAPSA_TUI = Path(sys.executable).with_name("capsa-tui")
PROFILE = """\
name: e2e
description: "end-to-end test pool"
boot: default
cpus: 1
memory_mb: 192
console: true
pool:
  size: 1
  max_size: 1
"""
TIMEOUT_S = 60.0


def _qemu_pids() -> set[int]:
    return {p.pid for p in processes() if p.comm.startswith("qemu-system")}


class Tmux:
    """One private tmux server holding one session."""

    def __init__(self, tmp: Path) -> None:
        self.socket = f"capsa-e2e-{os.getpid()}-{time.monotonic_ns()}"
        self.socket_path = ""
        self.tmp = tmp

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args],
                              capture_output=True, text=True, check=check, timeout=10)  # fmt: skip

    def start(self, command: list[str], env: dict[str, str]) -> None:
        env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
        self.run("new-session", "-d", "-s", "e2e", "-x", "120", "-y", "40", *env_args,
                 " ".join(command))  # fmt: skip
        self.socket_path = self.run("display-message", "-p", "#{socket_path}").stdout.strip()

    def alive(self) -> bool:
        return self.run("has-session", "-t", "e2e", check=False).returncode == 0

    def screen(self) -> str:
        result = self.run("capture-pane", "-p", "-t", "e2e", check=False)
        return result.stdout if result.returncode == 0 else ""

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.run("send-keys", "-t", "e2e", *(["-l"] if literal else []), *keys)

    def kill(self) -> None:
        self.run("kill-server", check=False)
        if self.socket_path:  # tmux leaves its socket file behind
            Path(self.socket_path).unlink(missing_ok=True)


def wait_until(check: Callable[[], bool], tmux: Tmux, deadline: float, what: str) -> None:
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; the screen:\n{tmux.screen()}")
        time.sleep(0.2)


def pool_row(screen: str, name: str) -> dict[str, str]:
    """The pool table's row for ``name`` by column heading (cells split on blanks: every cell
    of an in-process pool is one word), or {}."""
    header: list[str] = []
    for line in screen.splitlines():
        cells = line.split()
        if cells[:2] == ["Profile", "State"]:
            header = cells
        elif header and cells[:1] == [name]:
            return dict(zip(header, cells))
    return {}


@pytest.mark.guest
def test_tui_in_tmux_reserve_type_release_quit(boot: engine.LinuxDirectBoot, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed")
    assert CAPSA_TUI.exists(), f"{CAPSA_TUI} is not installed (pip install -e .)"
    config = tmp_path / "config"
    (config / "profiles").mkdir(parents=True)
    (config / "profiles" / "e2e.yaml").write_text(PROFILE)
    qemu_before = _qemu_pids()
    # A temporary folder of the app's own: its VMs' socket folders go there, so the check after
    # quitting sees only what this app made. Short (in this run's temporary folder, not pytest's
    # deep tmp_path): a Unix socket's path must fit in 108 bytes.
    app_tmp = Path(tempfile.mkdtemp(prefix="e2e-"))
    tmux = Tmux(tmp_path)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        tmux.start([str(CAPSA_TUI), "app", "--start", "e2e"],
                   {"CAPSA_CONFIG_DIR": str(config), "TERM": "xterm-256color", "TMPDIR": str(app_tmp)})  # fmt: skip

        # The dashboard, then the warm VM: the e2e pool running with one idle VM.
        wait_until(lambda: (row := pool_row(tmux.screen(), "e2e")).get("State") == "running" and row.get("Idle") == "1", tmux, deadline,
                   "the e2e pool to run with 1 idle VM")  # fmt: skip

        # Select the e2e row (the detail panel names the selected profile), then reserve.
        for _ in range(10):
            if "e2e  (user)" in tmux.screen():
                break
            tmux.keys("Down")
            time.sleep(0.2)
        assert "e2e  (user)" in tmux.screen(), tmux.screen()
        tmux.keys("r")

        # The console: its status line, then the guest's prompt.
        wait_until(lambda: "ctrl+] helpers · shift+PgUp" in tmux.screen(), tmux, deadline, "the console")
        wait_until(lambda: any(line.rstrip().endswith("#") for line in tmux.screen().splitlines()),
                   tmux, deadline, "the guest's prompt")  # fmt: skip
        tmux.keys("echo e2e-$((6*7))", literal=True)
        tmux.keys("Enter")
        wait_until(lambda: any(line.strip() == "e2e-42" for line in tmux.screen().splitlines()),
                   tmux, deadline, "the command's output e2e-42")  # fmt: skip

        # Copy with the keyboard: the app sends the copy as OSC 52, which tmux (told to take it
        # from applications) keeps as its paste buffer, as a terminal over ssh would take it.
        tmux.run("set-option", "-s", "set-clipboard", "on")
        tmux.keys("C-]")
        wait_until(lambda: "Select with the keyboard" in tmux.screen(), tmux, deadline, "the helper menu")
        tmux.keys("[")
        wait_until(lambda: "selecting: arrows/hjkl move" in tmux.screen(), tmux, deadline, "keyboard selection")
        tmux.keys("Up", "Enter")  # the line above the prompt, copied whole
        wait_until(lambda: tmux.run("show-buffer", check=False).stdout == "e2e-42", tmux, deadline,
                   "tmux's paste buffer to hold e2e-42 (OSC 52)")  # fmt: skip
        # ... and paste it back at the prompt (no key of the selection reached the shell).
        tmux.keys("C-]")
        wait_until(lambda: "Paste what was last copied" in tmux.screen(), tmux, deadline, "the helper menu")
        tmux.keys("v")
        wait_until(lambda: any(line.rstrip().endswith("# e2e-42") for line in tmux.screen().splitlines()),
                   tmux, deadline, "the paste at the prompt")  # fmt: skip
        tmux.keys("C-u")  # the shell's line cleared again

        # Release from the console's helper menu: back to the dashboard, the VM gone.
        tmux.keys("C-]")
        wait_until(lambda: "Release the VM and close its tab" in tmux.screen(), tmux, deadline, "the helper menu")
        tmux.keys("x")
        wait_until(lambda: not tmux.alive() or "Reserved VMs" in tmux.screen(), tmux, deadline,
                   "the dashboard after the release")  # fmt: skip
        assert tmux.alive(), "the app quit when the VM was released (ctrl+] x) instead of showing the dashboard"
        wait_until(lambda: pool_row(tmux.screen(), "e2e").get("Reserved") == "0", tmux, deadline,
                   "no VM reserved in the e2e pool")  # fmt: skip

        # Quit: the app stops its pools and ends, which ends the tmux session.
        tmux.keys("q")
        wait_until(lambda: not tmux.alive(), tmux, deadline, "the app to exit after q")
        left: set[int] = set()
        for _ in range(50):  # its QEMU processes are reaped by the app before it exits
            left = {pid for pid in _qemu_pids() - qemu_before if alive(pid)}
            if not left:
                break
            time.sleep(0.1)
        assert not left, f"QEMU processes left running after the app quit: {left}"
        assert not list(app_tmp.glob("capsa-vm-*")), "VM socket folders left behind after the app quit"
    finally:
        tmux.kill()
        shutil.rmtree(app_tmp, ignore_errors=True)
