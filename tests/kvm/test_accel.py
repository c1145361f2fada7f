"""Unit tests of the accelerator probe, on made-up /dev, /proc and /sys trees."""
from __future__ import annotations

from pathlib import Path

import pytest

import engine
from engine.kvm.accel import choose_accelerator, probe_kvm
from engine.kvm.host import parse_tsc_khz


def _host(tmp_path: Path, *, flags: str, modules: list[str], dev: bool = True) -> dict[str, Path]:
    device = tmp_path / "kvm"
    if dev:
        device.write_bytes(b"")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu {flags} sse2\ncpu MHz\t\t: 2445.428\n")
    sys_module = tmp_path / "module"
    for name in modules:
        (sys_module / name).mkdir(parents=True)
    sys_module.mkdir(exist_ok=True)
    return {"dev": device, "cpuinfo": cpuinfo, "sys_module": sys_module}


def test_real_vmx_host_uses_kvm(tmp_path: Path) -> None:
    usable, reason = probe_kvm(**_host(tmp_path, flags="vmx", modules=["kvm", "kvm_intel"]))
    assert usable and "vmx" in reason


def test_pvm_host_uses_tcg(tmp_path: Path) -> None:
    usable, reason = probe_kvm(**_host(tmp_path, flags="hypervisor", modules=["kvm", "kvm_pvm"]))
    assert not usable and "kvm_pvm" in reason


def test_no_virtualization_flag_uses_tcg(tmp_path: Path) -> None:
    usable, reason = probe_kvm(**_host(tmp_path, flags="hypervisor", modules=["kvm", "kvm_intel"]))
    assert not usable and "vmx/svm" in reason


def test_missing_device_uses_tcg(tmp_path: Path) -> None:
    usable, reason = probe_kvm(**_host(tmp_path, flags="svm", modules=["kvm_amd"], dev=False))
    assert not usable and "does not exist" in reason


def test_env_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPSA_ACCEL", "tcg")
    choice = choose_accelerator()
    assert choice.name == "tcg" and "CAPSA_ACCEL" in choice.reason
    monkeypatch.setenv("CAPSA_ACCEL", "warp")
    with pytest.raises(engine.ConfigError, match="CAPSA_ACCEL"):
        choose_accelerator()


def test_this_host_probe_is_consistent() -> None:
    usable, reason = probe_kvm()
    assert reason
    if Path("/sys/module/kvm_pvm").exists():
        assert not usable


def test_tsc_parsing() -> None:
    assert parse_tsc_khz("cpu MHz\t\t: 2445.428\n") == 2445428
    assert parse_tsc_khz("nothing here") is None
