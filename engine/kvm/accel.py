"""Choose the accelerator: hardware KVM where /dev/kvm really virtualizes, TCG elsewhere.

The probe only reads files, so it answers in well under a millisecond. It must not trust the
mere presence of ``/dev/kvm``: on our development machines that node belongs to ``kvm_pvm``, a
software hypervisor on which stock kernels hang, and there the answer has to be TCG.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError

ACCEL_ENV = "CAPSA_ACCEL"
_VALID = ("kvm", "tcg")


@dataclass(frozen=True)
class AccelChoice:
    """The accelerator a machine runs with and why it was chosen (shown to the user)."""

    name: str  # "kvm" or "tcg"
    reason: str

    @property
    def is_hardware(self) -> bool:
        return self.name == "kvm"

    def describe(self) -> str:
        label = "hardware KVM" if self.is_hardware else "software emulation (TCG)"
        return f"{label}: {self.reason}"


def _cpu_flags(cpuinfo: str) -> set[str]:
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def probe_kvm(
    dev: Path = Path("/dev/kvm"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    sys_module: Path = Path("/sys/module"),
) -> tuple[bool, str]:
    """Return (usable, reason) for hardware KVM on this host."""
    if not dev.exists():
        return False, f"{dev} does not exist"
    if not os.access(dev, os.R_OK | os.W_OK):
        return False, f"{dev} is not readable and writable by this user (add yourself to the 'kvm' group)"
    if (sys_module / "kvm_pvm").exists():
        return False, f"{dev} is kvm_pvm, a software hypervisor on which stock kernels do not boot"
    try:
        flags = _cpu_flags(cpuinfo.read_text())
    except OSError as err:
        return False, f"cannot read {cpuinfo}: {err}"
    if not flags & {"vmx", "svm"}:
        return False, f"the CPU exposes no vmx/svm flag, so {dev} cannot be hardware virtualization"
    if not ((sys_module / "kvm_intel").exists() or (sys_module / "kvm_amd").exists()):
        return False, "neither kvm_intel nor kvm_amd is loaded"
    return True, f"{dev} is usable and the CPU has {'vmx' if 'vmx' in flags else 'svm'}"


def choose_accelerator(override: str | None = None) -> AccelChoice:
    """Pick the accelerator: ``override``, else ``$CAPSA_ACCEL``, else the probe's answer."""
    wanted = override if override is not None else os.environ.get(ACCEL_ENV, "").strip().lower()
    if wanted:
        if wanted not in _VALID:
            raise ConfigError(f"{ACCEL_ENV}={wanted!r} is not valid: use one of {', '.join(_VALID)}")
        source = "chosen by the caller" if override is not None else f"forced by {ACCEL_ENV}={wanted}"
        return AccelChoice(wanted, source)
    return _probed_choice()


@functools.cache
def _probed_choice() -> AccelChoice:
    usable, reason = probe_kvm()
    return AccelChoice("kvm" if usable else "tcg", reason)
