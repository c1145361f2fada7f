"""capsa-tui engine: Linux microVMs run by QEMU and their consoles (the public API).

    boot = engine.default_boot()
    async with await engine.vm(boot).cpus(2).memory_mb(256).console_enabled().build() as vm:
        console = await vm.console()
        print(await console.exec("uname -r"))

``capsatui`` and other callers import only the names listed in ``__all__``.
"""
from __future__ import annotations

from engine.boot import LinuxDirectBoot, default_boot
from engine.console import CommandResult, Console, ConsoleReader, ConsoleWriter
from engine.errors import (
    BootTimeout,
    ConfigError,
    ConsoleClosed,
    ConsoleError,
    ConsoleTimeout,
    EngineError,
    ImageError,
    MachineError,
    QemuNotFound,
    VmNotRunning,
)
from engine.images import GuestImage, build_image, default_image, image_info
from engine.kvm.accel import AccelChoice, choose_accelerator
from engine.status import Created, Failed, Running, Starting, Stopped, Stopping, VmStatus
from engine.vm import VmHandle, live_vms
from engine.vmspec import LoginSpec, VmBuilder, VmSpec, vm

__all__ = [
    "AccelChoice",
    "BootTimeout",
    "CommandResult",
    "ConfigError",
    "Console",
    "ConsoleClosed",
    "ConsoleError",
    "ConsoleReader",
    "ConsoleTimeout",
    "ConsoleWriter",
    "Created",
    "EngineError",
    "Failed",
    "GuestImage",
    "ImageError",
    "LinuxDirectBoot",
    "LoginSpec",
    "MachineError",
    "QemuNotFound",
    "Running",
    "Starting",
    "Stopped",
    "Stopping",
    "VmBuilder",
    "VmHandle",
    "VmNotRunning",
    "VmSpec",
    "VmStatus",
    "build_image",
    "choose_accelerator",
    "default_boot",
    "default_image",
    "image_info",
    "live_vms",
    "vm",
]
