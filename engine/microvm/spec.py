"""VmSpec: the plain data that describes one VM (its shape, boot, console, login and network)."""
from __future__ import annotations

from dataclasses import dataclass

from engine.console.stream import DEFAULT_SCROLLBACK
from engine.microvm.boot import LinuxDirectBoot
from engine.microvm.disk import DiskImage
from engine.microvm.share import Share, check_shares
from engine.microvm.workload import OciWorkload
from engine.errors import ConfigError
from engine.names import HOSTNAME_RE, USER_RE
from engine.netstack.config import NetworkConfig, NoNetwork, UserNatConfig


@dataclass(frozen=True)
class LoginSpec:
    """A getty/login on the console instead of a root shell; root logs in without password."""

    user: str
    password: str | None = None


@dataclass(frozen=True)
class VmSpec:
    """Everything that shapes a VM; immutable, so pools can share one."""

    boot: LinuxDirectBoot
    cpus: int = 1
    memory_mb: int = 256
    console: bool = False
    cmdline_args: tuple[tuple[str, str], ...] = ()
    cmdline_flags: tuple[str, ...] = ()
    cmdline_override: str | None = None
    login: LoginSpec | None = None
    hostname: str = "capsa"
    machine: str = "microvm"
    accel: str | None = None  # None: probe (or $CAPSA_ACCEL)
    scrollback_bytes: int = DEFAULT_SCROLLBACK
    extra_qemu_args: tuple[str, ...] = ()
    network: NetworkConfig = NoNetwork()
    # A sandbox's writes go to tmpfs (None) or to a per-VM scratch disk of this many MiB.
    scratch_disk_mb: int | None = None
    # capsa's operation timeout: the default wait, in seconds, for readiness and agent calls.
    timeout_s: float | None = None
    # Shared folders (9p) and extra disks (vdb, vdc, ... after the root disk, in this order).
    shares: tuple[Share, ...] = ()
    disks: tuple[DiskImage, ...] = ()
    # An OCI sandbox: the image whose layers are the first disks, and its run config.
    workload: OciWorkload | None = None

    def check(self) -> None:
        """ConfigError unless QEMU can be started for this spec: the
        fields are valid and the boot's files are there. Every path that launches a VM calls it."""
        self.validate()
        self.boot.check()
        for share in self.shares:
            share.check()
        for disk in self.disks:
            disk.check()

    def validate(self) -> None:
        """ConfigError unless every field is in range (checks no files: builders call it too)."""
        if isinstance(self.network, UserNatConfig):
            self.network.validate()
        elif not isinstance(self.network, NoNetwork):
            raise ConfigError(f"network must be NetworkMode.none() or NetworkMode.user_nat()...build(), got {self.network!r}")
        if not 1 <= self.cpus <= 64:
            raise ConfigError(f"cpus must be between 1 and 64, got {self.cpus}")
        if not 32 <= self.memory_mb <= 1 << 20:
            raise ConfigError(f"memory_mb must be between 32 and 1048576, got {self.memory_mb}")
        if not HOSTNAME_RE.match(self.hostname):
            raise ConfigError(f"hostname {self.hostname!r} is not a valid host name")
        if self.scratch_disk_mb is not None and not 16 <= self.scratch_disk_mb <= 1 << 22:
            raise ConfigError(f"scratch_disk_mb must be between 16 and 4194304, got {self.scratch_disk_mb}")
        if self.scratch_disk_mb is not None and self.boot.root_disk is None:
            raise ConfigError("scratch_disk_mb needs a sandbox (a boot with a root disk): its overlay lives there")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"timeout must be a positive number of seconds, got {self.timeout_s}")
        self.validate_devices()
        if self.scrollback_bytes < 4096:
            raise ConfigError(f"scrollback_bytes must be at least 4096, got {self.scrollback_bytes}")
        if self.login is not None:
            if not self.boot.capsa_guest:
                raise ConfigError("login_user() needs the default guest (a custom initrd must provide its own getty)")
            if self.login.user != "root" and not USER_RE.match(self.login.user):
                raise ConfigError(f"login user {self.login.user!r} is not a valid user name")
        for key, _value in self.cmdline_args:
            if not key or any(c.isspace() for c in key) or "=" in key:
                raise ConfigError(f"kernel argument name {key!r} is empty or has spaces or '='")
        for flag in self.cmdline_flags:
            if not flag or any(c.isspace() for c in flag):
                raise ConfigError(f"kernel flag {flag!r} is empty or has spaces")

    def validate_devices(self) -> None:
        """ConfigError for shares and disks this VM cannot have (checks no files)."""
        check_shares(self.shares)
        sandbox = self.boot.has_agent
        for share in self.shares:
            if share.guest_path is not None and not sandbox:
                raise ConfigError(
                    f"share {share.host_path}: a raw VM cannot mount at a guest path ({share.guest_path}); "
                    f"give it a tag and mount it in the guest: {share.mount_line('/mnt/' + share.tag)}")
            if share.guest_path is None and sandbox:
                raise ConfigError(
                    f"share {share.host_path} (tag {share.tag}): a sandbox mounts its shares itself; "
                    "give an absolute guest path instead of a tag")
        if self.workload is not None:
            if not sandbox or self.boot.root_disk is None:
                raise ConfigError(f"the OCI image {self.workload.image} runs only in a sandbox (engine.sandbox().oci(...))")
            self.workload.check(self.disks)
            if any(not disk.read_only for disk in self.disks[:self.workload.layers]):
                raise ConfigError(f"the layers of the OCI image {self.workload.image} must be read-only disks")
        seen: dict[str, DiskImage] = {}
        root = self.boot.root_disk
        for disk in self.disks:
            key = str(disk.path)
            if root is not None and disk.path == root.path:
                raise ConfigError(f"disk {disk.path} is the root disk too")
            if key in seen and (disk.shared_write or seen[key].shared_write):
                raise ConfigError(f"disk {disk.path} is attached twice, writable: the guest would corrupt it")
            seen[key] = disk
