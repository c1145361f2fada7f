"""VmSpec: the plain data that describes one VM, and the builder users fill it with."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Self

from engine.microvm.boot import LinuxDirectBoot
from engine.errors import ConfigError
from engine.names import HOSTNAME_RE, USER_RE
from engine.netstack.config import NetworkConfig, NoNetwork, UserNatConfig

if TYPE_CHECKING:
    from engine.microvm.handle import VmHandle

DEFAULT_SCROLLBACK = 1 << 20


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

    def validate(self) -> None:
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


@dataclass
class ShapeBuilder:
    """The shape methods a VM builder and a pool builder share; each returns the builder."""

    _spec: VmSpec

    def _with(self, **changes: object) -> Self:
        self._spec = replace(self._spec, **changes)  # type: ignore[arg-type]
        return self

    def cpus(self, n: int) -> Self:
        return self._with(cpus=int(n))

    def memory_mb(self, mb: int) -> Self:
        return self._with(memory_mb=int(mb))

    def console_enabled(self, enabled: bool = True) -> Self:
        return self._with(console=enabled)

    def cmdline_arg(self, key: str, value: str) -> Self:
        return self._with(cmdline_args=self._spec.cmdline_args + ((key, str(value)),))

    def cmdline_flag(self, flag: str) -> Self:
        return self._with(cmdline_flags=self._spec.cmdline_flags + (flag,))

    def cmdline_override(self, cmdline: str) -> Self:
        """Replace the whole kernel command line (the engine adds nothing, not even console=)."""
        return self._with(cmdline_override=cmdline)

    def login_user(self, user: str, password: str | None = None) -> Self:
        """Put a getty/login on the console with ``user`` (and root, without password)."""
        return self._with(login=LoginSpec(user, password))

    def hostname(self, name: str) -> Self:
        return self._with(hostname=name)

    def machine_type(self, machine: str) -> Self:
        return self._with(machine=machine)

    def accel(self, accel: str) -> Self:
        return self._with(accel=accel)

    def scrollback_bytes(self, n: int) -> Self:
        return self._with(scrollback_bytes=int(n))

    def qemu_args(self, *args: str) -> Self:
        """Extra QEMU arguments, appended verbatim (an escape hatch, not validated)."""
        return self._with(extra_qemu_args=self._spec.extra_qemu_args + tuple(args))

    def network(self, mode: NetworkConfig) -> Self:
        """``NetworkMode.none()`` (the default) or ``NetworkMode.user_nat()...build()``."""
        return self._with(network=mode)

    def spec(self) -> VmSpec:
        self._spec.validate()
        return self._spec


class VmBuilder(ShapeBuilder):
    """Fluent builder: ``await engine.vm(boot).cpus(2).memory_mb(256).console_enabled().build()``."""

    async def build(self) -> VmHandle:
        """Start the VM and return its handle while the guest boots."""
        from engine.microvm.handle import VmHandle  # vm_handle.py imports this module: no cycle at import time

        return await VmHandle.start(self.spec())


def vm(boot: LinuxDirectBoot) -> VmBuilder:
    """Start describing a VM that boots ``boot``."""
    return VmBuilder(VmSpec(boot=boot))
