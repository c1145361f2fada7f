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
    PoolBootError,
    PoolClosed,
    PoolEmpty,
    PoolError,
    PoolTimeout,
    QemuNotFound,
    SnapshotError,
    VmNotRunning,
)
from engine.images import GuestImage, build_image, default_image, image_info
from engine.kvm.accel import AccelChoice, choose_accelerator
from engine.netstack.config import NetworkMode, NoNetwork, PortForward, UserNatConfig
from engine.netstack.flowlog import FlowEvent
from engine.netstack.policy import (
    Decision,
    DomainPattern,
    Flow,
    MatchCriteria,
    NetworkPolicy,
    PolicyAction,
    PolicyError,
    Protocol,
    Rule,
)
from engine.pool import VmPool
from engine.pool_builder import PoolBuilder, vm_pool
from engine.pool_stats import PoolMember, PoolSettings, PoolStats
from engine.pooled_vm import PooledVm
from engine.profile_schema import ProfileError, ProfileIssue
from engine.profile_store import find_profile, load_profile, load_profiles, profile_dirs, save_profile
from engine.profiles import BootChoice, Profile, parse_profile
from engine.service import (
    PoolServer,
    ServiceClient,
    ServiceError,
    ServiceUnavailable,
    ServiceVersionError,
    service_socket_path,
)
from engine.snapshot import Snapshot, vm_from_snapshot
from engine.snapshot_store import prune_templates
from engine.status import Created, Failed, Running, Starting, Stopped, Stopping, VmStatus
from engine.vm import VmHandle, live_vms
from engine.vmspec import LoginSpec, VmBuilder, VmSpec, vm

__all__ = [
    "AccelChoice",
    "BootChoice",
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
    "Decision",
    "DomainPattern",
    "EngineError",
    "Failed",
    "Flow",
    "FlowEvent",
    "GuestImage",
    "ImageError",
    "LinuxDirectBoot",
    "LoginSpec",
    "MachineError",
    "MatchCriteria",
    "NetworkMode",
    "NetworkPolicy",
    "NoNetwork",
    "PolicyAction",
    "PolicyError",
    "PoolBootError",
    "PoolBuilder",
    "PoolClosed",
    "PoolEmpty",
    "PoolError",
    "PoolMember",
    "PoolServer",
    "PoolSettings",
    "PoolStats",
    "PoolTimeout",
    "PooledVm",
    "PortForward",
    "Profile",
    "ProfileError",
    "ProfileIssue",
    "Protocol",
    "QemuNotFound",
    "Snapshot",
    "SnapshotError",
    "Rule",
    "Running",
    "ServiceClient",
    "ServiceError",
    "ServiceUnavailable",
    "ServiceVersionError",
    "Starting",
    "Stopped",
    "Stopping",
    "UserNatConfig",
    "VmBuilder",
    "VmHandle",
    "VmNotRunning",
    "VmPool",
    "VmSpec",
    "VmStatus",
    "build_image",
    "choose_accelerator",
    "default_boot",
    "default_image",
    "find_profile",
    "image_info",
    "live_vms",
    "load_profile",
    "load_profiles",
    "parse_profile",
    "profile_dirs",
    "prune_templates",
    "save_profile",
    "service_socket_path",
    "vm",
    "vm_from_snapshot",
    "vm_pool",
]
