"""Unit tests of the QEMU and kernel command lines built from a VM spec."""
from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine.kvm.cmdline import MachineSockets, MachineSpec, kernel_flags, qemu_argv
from engine.microvm.machine_spec import kernel_cmdline


def _boot(tmp_path: Path, capsa: bool = True) -> engine.LinuxDirectBoot:
    (tmp_path / "k").write_bytes(b"k")
    return engine.LinuxDirectBoot(tmp_path / "k", tmp_path / "k", capsa_guest=capsa)


def test_kernel_flags_carry_tsc_and_fail_fast() -> None:
    flags = kernel_flags("microvm", 2445428)
    assert "tsc_early_khz=2445428" in flags and "panic=-1" in flags and "pci=off" in flags
    assert "pci=off" not in kernel_flags("pc", None)
    assert not any(f.startswith("tsc_early_khz") for f in kernel_flags("pc", None))


def test_user_args_and_login_reach_the_kernel(tmp_path: Path) -> None:
    spec = (
        engine.vm(_boot(tmp_path)).cmdline_arg("key", "a value").cmdline_flag("nosmp")
        .login_user("alice", "pä ss").hostname("box1").spec()
    )
    line = kernel_cmdline(spec)
    assert 'key="a value"' in line and " nosmp" in line
    assert "capsa.login=1" in line and "capsa.user=alice" in line and "capsa.hostname=box1" in line
    assert f"capsa.pass={'pä ss'.encode().hex()}" in line
    assert "pä ss" not in line


def test_override_replaces_everything(tmp_path: Path) -> None:
    spec = engine.vm(_boot(tmp_path)).cmdline_override("console=hvc0").spec()
    assert kernel_cmdline(spec) == "console=hvc0"


def test_custom_boot_gets_no_capsa_args(tmp_path: Path) -> None:
    spec = engine.vm(_boot(tmp_path, capsa=False)).spec()
    assert "capsa." not in kernel_cmdline(spec)


def test_qemu_argv_connects_to_our_sockets(tmp_path: Path) -> None:
    spec = MachineSpec(kernel=Path("/k"), initrd=Path("/i"), append="quiet", cpus=2, memory_mb=300)
    argv = qemu_argv("qemu", spec, MachineSockets(qmp=tmp_path / "q", serial=tmp_path / "s"))
    joined = " ".join(argv)
    assert f"path={tmp_path / 'q'},server=off" in joined and f"path={tmp_path / 's'},server=off" in joined
    assert argv[argv.index("-smp") + 1] == "2" and argv[argv.index("-m") + 1] == "300M"
    assert argv[argv.index("-accel") + 1] == "tcg" and "-no-reboot" in argv
    assert argv[argv.index("-machine") + 1].startswith("microvm")


def test_machine_spec_validation() -> None:
    with pytest.raises(engine.ConfigError, match="machine type"):
        MachineSpec(kernel=Path("/k"), initrd=None, append="", machine="isapc").validate()
