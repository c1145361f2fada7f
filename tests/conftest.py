"""Shared fixtures: the default guest, VMs shared across tests, and leak checks.

Booting costs seconds of both cores under software emulation, so tests that only run commands
share one guest per session. Every test is followed by a check that it left no machine
process, socket folder or VM behind.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import engine
from tests.procs import qemu_children
from tests.sandboxes import sandbox_boot_config  # noqa: F401  (a session fixture for every test folder)

REQUIRE_GUESTS_ENV = "CAPSA_REQUIRE_GUESTS"

# A temporary folder of this run's own, also for the commands tests start, so the leak check
# sees only what this run created (other runs on the machine may be booting VMs too).
_RUN_TMP = tempfile.mkdtemp(prefix="capsa-test-")
os.environ["TMPDIR"] = _RUN_TMP
tempfile.tempdir = None


@pytest.hookimpl(trylast=True)  # after plugins (the snapshot report) are done with the folder
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_RUN_TMP, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """Where guests are required (CI), a skipped guest test is a failure, not a pass."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("guest") and os.environ.get(REQUIRE_GUESTS_ENV) == "1":
        report.outcome = "failed"
        report.longrepr = f"guest test skipped while {REQUIRE_GUESTS_ENV}=1: {report.longrepr}"


def _qemu_children() -> set[int]:
    """Pids of qemu processes whose parent is this test process."""
    return qemu_children(os.getpid())


def _socket_dirs() -> set[str]:
    tmp = Path(tempfile.gettempdir())
    return {p.name for pattern in ("capsa-vm-*", "capsa-scratch-*") for p in tmp.glob(pattern)}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After each test: only VMs the engine still tracks run, and no socket folder is left."""
    dirs_before = _socket_dirs()
    yield
    live = {vm.pid for vm in engine.live_vms()}
    orphans = _qemu_children() - live
    assert not orphans, f"machine processes left behind: {orphans}"
    assert _socket_dirs() - dirs_before == set(), "socket folders left behind"


def guests_available() -> str | None:
    """Why guests cannot boot here, or None when they can."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed"
    try:
        engine.default_image(build=False)
    except engine.EngineError as err:
        return f"no guest image ({err}); run 'capsa-tui image build'"
    return None


@pytest.fixture(scope="session")
def boot() -> engine.LinuxDirectBoot:
    reason = guests_available()
    if reason:
        # A guest test that cannot boot proves nothing: fail and say how to set the host up.
        pytest.fail(f"cannot boot guests here: {reason}; run ./scripts/install.sh first")
    return engine.default_boot()


@pytest.fixture(scope="session")
async def shared_vm(boot: engine.LinuxDirectBoot) -> AsyncIterator[engine.VmHandle]:
    """One running guest (2 vCPUs, 320 MiB) for tests that only run commands in it."""
    vm = await engine.vm(boot).cpus(2).memory_mb(320).console_enabled().build()
    try:
        await vm.wait_ready(60)
        yield vm
    finally:
        await vm.kill()


@pytest.fixture
async def console(shared_vm: engine.VmHandle) -> engine.Console:
    con = await shared_vm.console()
    # A test that left a command running must not break the next one.
    assert (await con.run("true", timeout=30)).exit_code == 0
    return con


@pytest.fixture
def fake_guest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> engine.LinuxDirectBoot:
    """A stand-in for the default guest, so profile builders work without the built image."""
    import engine.profile.parse

    kernel, initrd = tmp_path / "guest-vmlinuz", tmp_path / "guest-initrd"
    kernel.write_bytes(b"k")
    initrd.write_bytes(b"i")
    boot = engine.LinuxDirectBoot(kernel, initrd, capsa_guest=True)
    monkeypatch.setattr(engine.profile.parse, "default_boot", lambda: boot)
    return boot


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty user profile folder in place of the real one (tests never touch the home)."""
    monkeypatch.setenv("CAPSA_CONFIG_DIR", str(tmp_path / "config"))
    folder = tmp_path / "config" / "profiles"
    folder.mkdir(parents=True)
    return folder
