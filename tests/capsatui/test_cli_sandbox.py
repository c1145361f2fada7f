"""``capsa-tui sandbox run``, ``vm run --sandbox`` and ``cp``, run as a user would (a real
process): the agent path keeps stdout and stderr apart as bytes and the status a shell gives;
files go in and come back out. Pure pieces (option parsing, statuses) are tested beside them."""
from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import pytest

import engine
from capsatui.commands.agent_exec import TIMEOUT_STATUS, Outcome, emit, outcome_of, shell_status, timeout_outcome
from capsatui.commands.pool import run_on_vm
from capsatui.commands.sandbox import CP_GAP, CopyIn, parse_in, parse_out
from capsatui.screens.dashboard import agent_cell
from tests.sandboxes import running_sandbox

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: float = 300, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    # ``-m`` from the checkout (not the installed script): the code under test is this tree's.
    return subprocess.run([sys.executable, "-m", "capsatui.cli", *args], capture_output=True, timeout=timeout,
                          cwd=ROOT, input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


# -- pure -----------------------------------------------------------------------------------------


def test_parse_in_and_out(tmp_path: Path) -> None:
    src = tmp_path / "a:b"  # a colon in the local name: split at the last one
    src.mkdir()
    assert parse_in(f"{src}:/work") == CopyIn(src, "/work")
    out = parse_out("/work/out:./res:ults")
    assert (out.guest, out.local) == ("/work/out", Path("./res:ults"))
    for bad in ("/work", f"{src}:work", f"{src}:", ":/work"):
        with pytest.raises(engine.ConfigError, match="--in"):
            parse_in(bad)
    with pytest.raises(engine.ConfigError, match=r"no local file or folder .*missing"):
        parse_in(f"{tmp_path / 'missing'}:/work")
    for bad in ("work/out:./x", "/work/out", "/work/out:"):
        with pytest.raises(engine.ConfigError, match="--out"):
            parse_out(bad)


def test_shell_statuses_and_emit() -> None:
    assert shell_status(0, None) == 0 and shell_status(7, None) == 7
    assert shell_status(None, 9) == 137 and shell_status(None, 15) == 143
    killed = outcome_of(engine.ExecResult(None, 9, b"o", b"e", False, 0.1))
    assert killed.status == 137 and killed.note is not None and "signal 9" in killed.note
    capped = outcome_of(engine.ExecResult(0, None, b"x", b"", True, 0.1))
    assert capped.status == 0 and capped.note is not None and "cap" in capped.note
    late = timeout_outcome(engine.ExecTimeout("late", b"so far", b"err so far"), 2.5)
    assert late.status == TIMEOUT_STATUS == 124 and late.stdout == b"so far" and "2.5 s timeout" in (late.note or "")
    out, err = io.BytesIO(), io.BytesIO()
    assert emit(Outcome(b"\xff\x00bin\r\n", b"\xfeerr", 3), out, err) == 3
    assert out.getvalue() == b"\xff\x00bin\r\n" and err.getvalue() == b"\xfeerr"  # bytes unmangled, no note


def test_agent_cells() -> None:
    assert agent_cell(True, None).plain == "agent"
    assert agent_cell(False, None).plain == "console"
    assert agent_cell(False, "no agent over serve").plain == "console (serve)"
    assert agent_cell(None, None).plain == "-"
    assert agent_cell(True, "no agent over serve").plain == "agent, not over serve"


def test_cp_names_the_serve_gap() -> None:
    res = _run("cp", "vm-1:/etc/hostname", ".", timeout=60)
    assert res.returncode == 2
    assert CP_GAP.encode() in res.stderr and b"issue 17" in res.stderr


def test_bad_copy_specs_fail_before_any_boot(tmp_path: Path) -> None:
    res = _run("sandbox", "run", "--in", f"{tmp_path / 'nope'}:/work", "--", "true", timeout=60)
    assert res.returncode == 2 and str(tmp_path / "nope").encode() in res.stderr
    res = _run("sandbox", "run", "--out", "relative:./x", "--", "true", timeout=60)
    assert res.returncode == 2 and b"--out 'relative:./x'" in res.stderr
    res = _run("sandbox", "run", timeout=60)
    assert res.returncode == 2 and b"give the command" in res.stderr


def test_vm_run_package_needs_sandbox() -> None:
    res = _run("vm", "run", "-p", "git", "--", "true", timeout=60)
    assert res.returncode == 2 and b"--package needs --sandbox" in res.stderr


def test_help_says_which_path_runs_commands() -> None:
    text = b" ".join(_run("run", "--help", timeout=60).stdout.split())
    assert b"through it" in text and b"warm from 'capsa-tui serve'" in text
    text = b" ".join(_run("vm", "run", "--help", timeout=60).stdout.split())
    assert b"--sandbox" in text and b"agent" in text


# -- real sandboxes -------------------------------------------------------------------------------

JOB = b'''\
import hashlib, pathlib, sys
data = pathlib.Path("input.bin").read_bytes()
out = pathlib.Path("out")
out.mkdir()
(out / "result.bin").write_bytes(hashlib.sha256(data).digest() + data[::-1])
(out / "nested").mkdir()
(out / "nested" / "note.txt").write_text("from the guest")
(out / "stdin.bin").write_bytes(sys.stdin.buffer.read())
sys.stdout.buffer.write(b"stdout \\xff\\x00 bytes\\n")
sys.stderr.buffer.write(b"stderr line\\n")
sys.exit(5)
'''


@pytest.mark.guest
def test_sandbox_run_copies_a_folder_in_runs_python_and_copies_results_out(
    sandbox_boot_config: engine.LinuxDirectBoot, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "job.py").write_bytes(JOB)
    payload = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit, every byte value
    (src / "input.bin").write_bytes(payload)
    results = tmp_path / "results"
    piped = b"piped \x00\xff" * 1000
    res = _run("sandbox", "run", "-i", "--in", f"{src}:/work", "--out", f"/work/out:{results}",
               "--", "cd /work && python3 job.py", stdin=piped)
    assert res.returncode == 5, res.stderr  # the command's own status
    assert res.stdout == b"stdout \xff\x00 bytes\n"  # stdout alone, the bytes as written
    assert res.stderr.endswith(b"stderr line\n"), res.stderr  # stderr alone (after any build notes)
    got = (results / "result.bin").read_bytes()
    assert got == hashlib.sha256(payload).digest() + payload[::-1]
    assert (results / "nested" / "note.txt").read_text() == "from the guest"
    assert (results / "stdin.bin").read_bytes() == piped  # -i: our stdin became the command's


@pytest.mark.guest
def test_vm_run_sandbox_signal_death_is_128_plus_n(sandbox_boot_config: engine.LinuxDirectBoot) -> None:
    res = _run("vm", "run", "--sandbox", "--", "echo before >&2; kill -9 $$")
    assert res.returncode == 128 + 9, res.stderr
    assert b"before\n" in res.stderr and b"killed by signal 9" in res.stderr and res.stdout == b""


@pytest.mark.guest
def test_vm_run_sandbox_timeout_is_124_with_the_output_so_far(sandbox_boot_config: engine.LinuxDirectBoot) -> None:
    res = _run("vm", "run", "--sandbox", "--timeout", "3", "--", "echo started; sleep 120")
    assert res.returncode == 124, res.stderr
    assert res.stdout == b"started\n"
    assert b"ran past its 3 s timeout" in res.stderr


@pytest.mark.guest
async def test_run_on_vm_takes_the_agent_when_the_guest_has_one(
    sandbox_boot_config: engine.LinuxDirectBoot, boot: engine.LinuxDirectBoot,
) -> None:
    """``capsa-tui run``'s choice, on real VMs: a sandbox answers through its agent (streams
    apart), the busybox guest through its console (streams mixed)."""
    line = "echo to-out; echo to-err >&2; (exit 6)"  # a subshell: the console's own shell lives on
    async with running_sandbox(sandbox_boot_config) as vm:
        outcome = await run_on_vm(vm, line, 60)
    assert isinstance(outcome, Outcome)
    assert (outcome.stdout, outcome.stderr, outcome.status) == (b"to-out\n", b"to-err\n", 6)
    async with await engine.vm(boot).memory_mb(192).console_enabled().build() as plain:
        result = await run_on_vm(plain, line, 60)
    assert isinstance(result, engine.CommandResult)
    assert result.exit_code == 6 and result.output.splitlines() == ["to-out", "to-err"]


@pytest.mark.guest
def test_run_sandbox_profile_cold_goes_through_the_agent(
    sandbox_boot_config: engine.LinuxDirectBoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``capsa-tui run sandbox -- CMD`` with no serve running: a cold VM of the bundled sandbox
    profile, the command through its agent."""
    monkeypatch.setenv("CAPSA_SOCKET", str(tmp_path / "no-serve.sock"))  # never a serve of someone else
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path / "config"))  # the bundled profiles only
    res = _run("run", "sandbox", "-v", "--", "echo to-out; python3 -c 'import sys; sys.stderr.write(\"to-err\\n\")'; exit 7")
    assert res.returncode == 7, res.stderr
    assert res.stdout == b"to-out\n"
    assert res.stderr.endswith(b"to-err\n") and b"through its agent" in res.stderr


def test_share_and_disk_arguments() -> None:
    import argparse

    from capsatui.commands.devices import disk_arg, share_arg

    assert share_arg("/src:/mnt/src:ro") == ("/src", "/mnt/src", engine.MountMode.ReadOnly)
    assert share_arg("./out:out") == ("./out", "out", engine.MountMode.ReadWrite)
    for bad in ("/src", "/src:", ":/mnt", "/src:/mnt:rx"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected|mode"):
            share_arg(bad)
    disk = disk_arg("data.qcow2:cow")
    assert disk.format == "qcow2" and disk.copy_on_write and disk_arg("d.img:ro").read_only
    assert not disk_arg("d.img").read_only and not disk_arg("d.img").copy_on_write


@pytest.mark.guest
def test_sandbox_run_shares_a_folder_read_only(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("from the host")
    res = _run("sandbox", "run", "--share", f"{tmp_path}:/mnt/in:ro", "--",
               "cat /mnt/in/hello.txt && ! touch /mnt/in/new 2>/dev/null")
    assert res.returncode == 0, res.stderr
    assert res.stdout == b"from the host"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hello.txt"]
