"""capsa-tui engine: Linux microVMs run by QEMU and their consoles (the public API).

    boot = engine.default_boot()
    async with await engine.vm(boot).cpus(2).memory_mb(256).console_enabled().build() as vm:
        console = await vm.console()
        print(await console.exec("uname -r"))

``capsatui`` and other callers use only these names. Each is written once, as an import in the
``TYPE_CHECKING`` block below: type checkers read it there, and at run time :mod:`engine.lazy`
reads the same block to load each name from its module on first use (the app draws its first
frame before the rest of the engine loads); ``__all__`` follows from it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from engine.lazy import lazy_package

if TYPE_CHECKING:
    from engine.microvm.boot import LinuxDirectBoot, default_boot
    from engine.agent.client import Agent
    from engine.agent.like import AgentLike
    from engine.agent.process import AgentProcess
    from engine.agent.results import AgentInfo, DirEntry, ExecResult, FileStat
    from engine.console.console import CommandResult, Console, ConsoleReader, ConsoleWriter
    from engine.console.like import ConsoleLike, ConsoleReaderLike, ConsoleWriterLike
    from engine.errors import (
        AgentDied,
        AgentError,
        AgentProtocolError,
        AgentUnavailable,
        BootTimeout,
        ConfigError,
        ConsoleClosed,
        ConsoleError,
        ConsoleTimeout,
        EngineError,
        ExecTimeout,
        GuestFileError,
        GuestFileNotFound,
        GuestPathError,
        GuestPermissionError,
        IdentityError,
        ImageError,
        MachineError,
        PoolBootError,
        PoolClosed,
        PoolEmpty,
        PoolError,
        PoolTimeout,
        QemuNotFound,
        SnapshotError,
        TransferTooLarge,
        VmNotRunning,
    )
    from engine.image.build import GuestImage, build_image, default_image, image_info
    from engine.kvm.accel import AccelChoice, choose_accelerator
    from engine.netstack.config import NetworkMode, NoNetwork, PortForward, UserNatConfig
    from engine.netstack.flowlog import FlowEvent
    from engine.netstack.policy.policy import (
        Decision,
        PolicyWarning,
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
    from engine.pool.size import check_pool_size, fit_max_size
    from engine.pool.pooled import PooledVm
    from engine.pool.reserved import ReservedVm
    from engine.profile.schema import ProfileError, ProfileIssue
    from engine.profile.folders import profile_dirs
    from engine.profile.store import find_profile, load_profile, load_profiles, save_profile
    from engine.profile.parse import BootChoice, Profile, parse_profile
    from engine.service.address import ServiceAddress, address_from_env
    from engine.service.client import ServiceClient
    from engine.service.errors import ServiceError, ServiceUnavailable, ServiceVersionError
    from engine.atomic_file import replace_file
    from engine.logevent import log_event
    from engine.service.flows import FlowFilter
    from engine.service.remote_agent import RemoteAgent
    from engine.service.registry import PoolRegistry
    from engine.service.watches import FlowWatch, PoolWatch
    from engine.service.paths import service_socket_path
    from engine.service.remote import remote_console
    from engine.service.server import PoolServer
    from engine.service.stdio import relay_stdio
    from engine.service.transport import Link, open_link
    from engine.snapshot.snapshot import Snapshot
    from engine.snapshot.clone import vm_from_snapshot
    from engine.snapshot.store import prune_templates
    from engine.microvm.status import Created, Failed, Running, Starting, Stopped, Stopping, VmStatus
    from engine.microvm.handle import VmHandle, live_vms
    from engine.microvm.spec import LoginSpec, VmSpec
    from engine.microvm.disk import DiskImage, ImageFormat
    from engine.microvm.share import MountMode, Share
    from engine.microvm.agent_port import AgentPort
    from engine.microvm.boot import sandbox_boot
    from engine.image.sandbox import SandboxImage, sandbox_image, sandbox_images
    from engine.microvm.builder import VmBuilder, vm
    from engine.microvm.sandbox_builder import SandboxBuilder, sandbox
    from engine.microvm.created import CreatedVm
    from engine.microvm.resources import GuestOs, ResourceConfig
    from engine.microvm.workload import OciWorkload, WorkloadError
    from engine.oci.config import ImageConfig
    from engine.oci.export import RunConfig, export_layers, write_layout
    from engine.oci.image import OciImage
    from engine.oci.pull import import_image, pull_image, resolve_image
    from engine.oci.reference import ImageReference, LocalSource, parse_reference, parse_source
    from engine.oci.store import OciStore
    from engine.image.sandbox import sandbox_tree
else:
    # Hidden from type checkers: a module __getattr__ would make every misspelt name type-check.
    __getattr__, __dir__, __all__ = lazy_package(globals())
