"""capsa-tui engine: Linux microVMs run by QEMU and their consoles (the public API).

    boot = engine.default_boot()
    async with await engine.vm(boot).cpus(2).memory_mb(256).console_enabled().build() as vm:
        console = await vm.console()
        print(await console.exec("uname -r"))

``capsatui`` and other callers import only the names listed in ``__all__``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_attributes

# Names load on first use (see engine.lazy): the app draws its first frame before the rest.
_EXPORTS: dict[str, str] = {
    "AccelChoice": "engine.kvm.accel",
    "BootChoice": "engine.profiles",
    "BootTimeout": "engine.errors",
    "CommandResult": "engine.console",
    "ConfigError": "engine.errors",
    "Console": "engine.console",
    "ConsoleClosed": "engine.errors",
    "ConsoleError": "engine.errors",
    "ConsoleReader": "engine.console",
    "ConsoleTimeout": "engine.errors",
    "ConsoleWriter": "engine.console",
    "Created": "engine.status",
    "Decision": "engine.netstack.policy",
    "DomainPattern": "engine.netstack.policy",
    "EngineError": "engine.errors",
    "Failed": "engine.status",
    "Flow": "engine.netstack.policy",
    "FlowEvent": "engine.netstack.flowlog",
    "GuestImage": "engine.images",
    "ImageError": "engine.errors",
    "LinuxDirectBoot": "engine.boot",
    "LoginSpec": "engine.vmspec",
    "MachineError": "engine.errors",
    "MatchCriteria": "engine.netstack.policy",
    "NetworkMode": "engine.netstack.config",
    "NetworkPolicy": "engine.netstack.policy",
    "NoNetwork": "engine.netstack.config",
    "PolicyAction": "engine.netstack.policy",
    "PolicyError": "engine.netstack.policy",
    "PoolBootError": "engine.errors",
    "PoolBuilder": "engine.pool_builder",
    "PoolClosed": "engine.errors",
    "PoolEmpty": "engine.errors",
    "PoolError": "engine.errors",
    "PoolMember": "engine.pool_stats",
    "PoolServer": "engine.service.server",
    "PoolSettings": "engine.pool_stats",
    "PoolStats": "engine.pool_stats",
    "PoolTimeout": "engine.errors",
    "PooledVm": "engine.pooled_vm",
    "PortForward": "engine.netstack.config",
    "Profile": "engine.profiles",
    "ProfileError": "engine.profile_schema",
    "ProfileIssue": "engine.profile_schema",
    "Protocol": "engine.netstack.policy",
    "QemuNotFound": "engine.errors",
    "Rule": "engine.netstack.policy",
    "Running": "engine.status",
    "ServiceClient": "engine.service.client",
    "ServiceError": "engine.service.errors",
    "ServiceUnavailable": "engine.service.errors",
    "ServiceVersionError": "engine.service.errors",
    "Snapshot": "engine.snapshot",
    "SnapshotError": "engine.errors",
    "Starting": "engine.status",
    "Stopped": "engine.status",
    "Stopping": "engine.status",
    "UserNatConfig": "engine.netstack.config",
    "VmBuilder": "engine.vmspec",
    "VmHandle": "engine.vm_handle",
    "VmNotRunning": "engine.errors",
    "VmPool": "engine.pool",
    "VmSpec": "engine.vmspec",
    "VmStatus": "engine.status",
    "build_image": "engine.images",
    "choose_accelerator": "engine.kvm.accel",
    "default_boot": "engine.boot",
    "default_image": "engine.images",
    "find_profile": "engine.profile_store",
    "image_info": "engine.images",
    "live_vms": "engine.vm_handle",
    "load_profile": "engine.profile_store",
    "load_profiles": "engine.profile_store",
    "parse_profile": "engine.profiles",
    "profile_dirs": "engine.profile_store",
    "prune_templates": "engine.snapshot_store",
    "save_profile": "engine.profile_store",
    "service_socket_path": "engine.service.paths",
    "vm": "engine.vmspec",
    "vm_from_snapshot": "engine.snapshot",
    "vm_pool": "engine.pool_builder",
}

if TYPE_CHECKING:
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
    from engine.vm_handle import VmHandle, live_vms
    from engine.vmspec import LoginSpec, VmBuilder, VmSpec, vm


__getattr__, __dir__ = lazy_attributes(__name__, globals(), _EXPORTS)

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
