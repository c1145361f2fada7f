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
    "BootChoice": "engine.profile.parse",
    "BootTimeout": "engine.errors",
    "CommandResult": "engine.console.console",
    "ConfigError": "engine.errors",
    "Console": "engine.console.console",
    "ConsoleClosed": "engine.errors",
    "ConsoleError": "engine.errors",
    "ConsoleLike": "engine.console.like",
    "ConsoleReader": "engine.console.console",
    "ConsoleReaderLike": "engine.console.like",
    "ConsoleTimeout": "engine.errors",
    "ConsoleWriter": "engine.console.console",
    "ConsoleWriterLike": "engine.console.like",
    "Created": "engine.microvm.status",
    "Decision": "engine.netstack.policy",
    "DomainPattern": "engine.netstack.policy",
    "EngineError": "engine.errors",
    "Failed": "engine.microvm.status",
    "Flow": "engine.netstack.policy",
    "FlowEvent": "engine.netstack.flowlog",
    "GuestImage": "engine.image.build",
    "ImageError": "engine.errors",
    "LinuxDirectBoot": "engine.microvm.boot",
    "LoginSpec": "engine.microvm.spec",
    "MachineError": "engine.errors",
    "MatchCriteria": "engine.netstack.policy",
    "NetworkMode": "engine.netstack.config",
    "NetworkPolicy": "engine.netstack.policy",
    "NoNetwork": "engine.netstack.config",
    "PolicyAction": "engine.netstack.policy",
    "PolicyError": "engine.netstack.policy",
    "PoolBootError": "engine.errors",
    "PoolBuilder": "engine.pool.builder",
    "PoolClosed": "engine.errors",
    "PoolEmpty": "engine.errors",
    "PoolError": "engine.errors",
    "PoolMember": "engine.pool.stats",
    "PoolServer": "engine.service.server",
    "PoolSettings": "engine.pool.stats",
    "PoolStats": "engine.pool.stats",
    "PoolTimeout": "engine.errors",
    "PooledVm": "engine.pool.pooled",
    "ReservedVm": "engine.pool.reserved",
    "PortForward": "engine.netstack.config",
    "Profile": "engine.profile.parse",
    "ProfileError": "engine.profile.schema",
    "ProfileIssue": "engine.profile.schema",
    "Protocol": "engine.netstack.policy",
    "QemuNotFound": "engine.errors",
    "Rule": "engine.netstack.policy",
    "Running": "engine.microvm.status",
    "ServiceClient": "engine.service.client",
    "ServiceError": "engine.service.errors",
    "ServiceUnavailable": "engine.service.errors",
    "ServiceVersionError": "engine.service.errors",
    "Snapshot": "engine.snapshot.snapshot",
    "SnapshotError": "engine.errors",
    "Starting": "engine.microvm.status",
    "Stopped": "engine.microvm.status",
    "Stopping": "engine.microvm.status",
    "UserNatConfig": "engine.netstack.config",
    "VmBuilder": "engine.microvm.spec",
    "VmHandle": "engine.microvm.handle",
    "VmNotRunning": "engine.errors",
    "VmPool": "engine.pool.pool",
    "VmSpec": "engine.microvm.spec",
    "VmStatus": "engine.microvm.status",
    "build_image": "engine.image.build",
    "choose_accelerator": "engine.kvm.accel",
    "default_boot": "engine.microvm.boot",
    "default_image": "engine.image.build",
    "find_profile": "engine.profile.store",
    "image_info": "engine.image.build",
    "live_vms": "engine.microvm.handle",
    "load_profile": "engine.profile.store",
    "load_profiles": "engine.profile.store",
    "parse_profile": "engine.profile.parse",
    "profile_dirs": "engine.profile.store",
    "prune_templates": "engine.snapshot.store",
    "save_profile": "engine.profile.store",
    "remote_console": "engine.service.remote",
    "service_socket_path": "engine.service.paths",
    "vm": "engine.microvm.spec",
    "vm_from_snapshot": "engine.snapshot.snapshot",
    "vm_pool": "engine.pool.builder",
}

if TYPE_CHECKING:
    from engine.microvm.boot import LinuxDirectBoot, default_boot
    from engine.console.console import CommandResult, Console, ConsoleReader, ConsoleWriter
    from engine.console.like import ConsoleLike, ConsoleReaderLike, ConsoleWriterLike
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
    from engine.image.build import GuestImage, build_image, default_image, image_info
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
    from engine.pool.pool import VmPool
    from engine.pool.builder import PoolBuilder, vm_pool
    from engine.pool.stats import PoolMember, PoolSettings, PoolStats
    from engine.pool.pooled import PooledVm
    from engine.pool.reserved import ReservedVm
    from engine.profile.schema import ProfileError, ProfileIssue
    from engine.profile.store import find_profile, load_profile, load_profiles, profile_dirs, save_profile
    from engine.profile.parse import BootChoice, Profile, parse_profile
    from engine.service import (
        PoolServer,
        ServiceClient,
        ServiceError,
        ServiceUnavailable,
        ServiceVersionError,
        remote_console,
        service_socket_path,
    )
    from engine.snapshot.snapshot import Snapshot, vm_from_snapshot
    from engine.snapshot.store import prune_templates
    from engine.microvm.status import Created, Failed, Running, Starting, Stopped, Stopping, VmStatus
    from engine.microvm.handle import VmHandle, live_vms
    from engine.microvm.spec import LoginSpec, VmBuilder, VmSpec, vm


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
    "ConsoleLike",
    "ConsoleReader",
    "ConsoleReaderLike",
    "ConsoleTimeout",
    "ConsoleWriter",
    "ConsoleWriterLike",
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
    "ReservedVm",
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
    "remote_console",
    "save_profile",
    "service_socket_path",
    "vm",
    "vm_from_snapshot",
    "vm_pool",
]
