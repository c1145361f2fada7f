"""Pool profiles: YAML files that describe one pool of VMs, validated into frozen dataclasses.

    profile = engine.find_profile("default")          # bundled or user folder, by name
    pool = await profile.pool_builder().build(profile.size)

A profile is ``kind: vm`` (the default: a raw VM of the default guest or of a kernel/initrd of
your own) or ``kind: sandbox`` (a Debian image with ``image: {base, packages}`` running the
guest agent, resolved by ``engine.sandbox_boot``). It names its boot (the default guest or a kernel/initrd of your own), the VM shape
(cpus, memory, console, hostname, kernel arguments, login), the pool's size and max_size, and
the guest's network (none, or user-mode NAT with forwards, static hosts and a policy: parsed in
``engine.profile.network``).
Profiles come from the bundled ``profiles/`` folder and from the user's config folder
(``platformdirs`` ``user_config_path("capsa-tui")/profiles``, or ``$CAPSA_CONFIG_DIR/profiles``);
a user profile overrides a bundled one of the same name.

:func:`parse_profile` is the pure parser (text in, Profile or :class:`ProfileError` out, with
every issue of the file at once as ``file:line: field: expected X, found Y``); loading from disk
and saving back (comments and key order kept: see ``engine.profile.schema`` for why ruamel.yaml)
are thin wrappers around it, in ``engine.profile.store``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from engine.errors import ImageError
from engine.image.sandbox import BASES, check_packages
from engine.oci.reference import parse_source
from engine.microvm.boot import LinuxDirectBoot, default_boot, sandbox_boot
from engine.netstack.config import NetworkConfig, NoNetwork
from engine.pool.size import PROFILE_MAX_SIZE, PROFILE_SIZE, pool_sizes_fit
from engine.profile.network import network_summary, parse_network
# engine.names: the rules VmSpec.validate applies, checked here too so errors name file and line.
from engine.names import HOSTNAME_RE, USER_RE
from engine.profile.schema import NAME_RE, Fields, ProfileError, describe, parse_document
from engine.snapshot.snapshot import snapshot_unsupported
from engine.microvm.builder import ShapeBuilder, VmBuilder, vm
from engine.microvm.disk import DiskImage
from engine.microvm.share import Share
from engine.microvm.spec import LoginSpec
from engine.profile.folders import Source
from engine.profile.devices import disk_mode, parse_disks, parse_root_disk, parse_shares

if TYPE_CHECKING:
    from engine.pool.builder import PoolBuilder

B = TypeVar("B", bound=ShapeBuilder)
Kind = Literal["vm", "sandbox"]
KINDS: tuple[Kind, ...] = ("vm", "sandbox")
TOP_KEYS = (
    "name", "description", "kind", "boot", "image", "cpus", "memory_mb", "console", "hostname",
    "kernel_args", "login", "scratch_disk_mb", "timeout", "pool", "network", "shares", "disks",
)  # fmt: skip
IMAGE_KEYS = ("base", "packages", "oci", "tls_verify")
SCRATCH_DISK_MB = (16, 1 << 22)  # VmSpec.validate's range
TIMEOUT_S = (0.1, 86400.0)
SANDBOX_MEMORY_MB = 512  # python3 and a workload want more than a raw VM's 256
BOOT_KEYS = ("kernel", "initrd", "cmdline", "root_disk")
LOGIN_KEYS = ("user", "password")
POOL_KEYS = ("size", "max_size", "snapshot")
CPUS = (1, 64)
MEMORY_MB = (64, 65536)


@dataclass(frozen=True)
class BootChoice:
    """What a profile's VMs boot: the default guest, or a kernel and initrd of the user's own;
    either may switch into a ``root_disk`` (capsa's ``with_root_disk``)."""

    kind: Literal["default", "custom"] = "default"
    kernel: Path | None = None
    initrd: Path | None = None
    cmdline: str | None = None  # replaces the whole kernel command line (custom boots only)
    root_disk: DiskImage | None = None

    def resolve(self) -> LinuxDirectBoot:
        """The engine boot object; the default guest is looked up (and built) only now."""
        if self.kind == "default":
            boot = default_boot()
        else:
            assert self.kernel is not None
            boot = LinuxDirectBoot(self.kernel, self.initrd)
        return boot.with_root_disk(self.root_disk) if self.root_disk is not None else boot

    def describe(self) -> str:
        text = "default guest" if self.kind == "default" else f"{self.kernel} + {self.initrd}"
        if self.root_disk is not None:
            text += f", root disk {self.root_disk.path} ({disk_mode(self.root_disk)})"
        return text


@dataclass(frozen=True)
class ImageChoice:
    """What a sandbox profile's VMs boot: the Debian image ``base`` with ``packages``."""

    base: str = "debian"
    packages: tuple[str, ...] = ()
    oci: str | None = None  # an OCI image the sandbox's commands run in (pulled on first use)
    tls_verify: bool | None = None  # False: its registry may be plain HTTP

    def resolve(self, build: bool = True) -> LinuxDirectBoot:
        """The sandbox boot of this image; built now (minutes) if ``build`` and not cached."""
        return sandbox_boot(self.base, self.packages, build=build)

    def describe(self) -> str:
        if self.oci is not None:
            return f"OCI image {self.oci}"
        return f"{self.base} image" + (f" + {', '.join(self.packages)}" if self.packages else "")


@dataclass(frozen=True)
class Profile:
    """One validated pool profile; ``vm_builder()`` / ``pool_builder()`` turn it into VMs."""

    name: str
    description: str = ""
    path: Path | None = None
    boot: BootChoice = field(default_factory=BootChoice)
    cpus: int = 1
    memory_mb: int = 256
    console: bool = True
    hostname: str = "capsa"
    kernel_args: tuple[tuple[str, str], ...] = ()
    login: LoginSpec | None = None
    size: int = 2
    max_size: int = 4
    snapshot: bool | None = None  # None: clones wherever the shape can be cloned
    network: NetworkConfig = field(default_factory=NoNetwork)  # NoNetwork or a built UserNatConfig
    source: Source = "file"
    kind: Kind = "vm"
    image: ImageChoice | None = None  # set for kind sandbox only
    scratch_disk_mb: int | None = None  # a sandbox's writes: tmpfs (None) or a disk of this size
    timeout_s: float | None = None  # capsa's operation timeout
    shares: tuple[Share, ...] = ()  # shared folders (engine/profile/devices.py)
    disks: tuple[DiskImage, ...] = ()

    def resolve_boot(self, build: bool = True) -> LinuxDirectBoot:
        """The engine boot: the sandbox image (built if ``build``) or the profile's boot."""
        if self.kind == "sandbox":
            return (self.image or ImageChoice()).resolve(build)
        return self.boot.resolve()

    def describe_boot(self) -> str:
        return (self.image or ImageChoice()).describe() if self.kind == "sandbox" else self.boot.describe()

    def _shape(self, builder: B) -> B:
        """Apply the VM shape to a VmBuilder or PoolBuilder (they share these methods)."""
        builder = builder.cpus(self.cpus).memory_mb(self.memory_mb).console_enabled(self.console)
        builder = builder.hostname(self.hostname).network(self.network)
        for key, value in self.kernel_args:
            builder = builder.cmdline_arg(key, value)
        if self.login is not None:
            builder = builder.login_user(self.login.user, self.login.password)
        if self.boot.cmdline is not None:
            builder = builder.cmdline_override(self.boot.cmdline)
        if self.scratch_disk_mb is not None:
            builder = builder.scratch_disk(self.scratch_disk_mb)
        if self.timeout_s is not None:
            builder = builder.timeout(self.timeout_s)
        for share in self.shares:
            builder = builder.share(share.host_path, share.guest_path or share.tag, share.mode)
        if self.image is not None and self.image.oci is not None:
            builder = builder.oci_image(self.image.oci, tls_verify=self.image.tls_verify)  # its layers come first
        for disk in self.disks:
            builder = builder.disk(disk)
        return builder

    def vm_builder(self, build: bool = True) -> VmBuilder:
        """A builder for one VM of this shape (raises ImageError if the default guest is missing;
        a sandbox image is built if ``build``, else ImageError says how)."""
        return self._shape(vm(self.resolve_boot(build)))

    def pool_builder(self, build: bool = True) -> PoolBuilder:
        """A pool builder of this shape, max_size and name; pass ``size`` to ``build()``."""
        # Imported here: reading profiles (the app's first frame, `profiles list`) needs no pool
        # machinery, which pulls in the VM handle, snapshots and the gateway (~40 ms).
        from engine.pool.builder import vm_pool

        builder = self._shape(vm_pool(self.resolve_boot(build))).max_size(self.max_size).name(self.name)
        snapshot = self.snapshot
        if snapshot is None:
            snapshot = snapshot_unsupported(builder.spec()) is None
        return builder.snapshot(snapshot)

    def to_dict(self) -> dict[str, object]:
        """A JSON-able summary (the login password is left out)."""
        boot: dict[str, object] = {}
        if self.boot.kind == "custom":
            boot = {"kernel": str(self.boot.kernel), "initrd": str(self.boot.initrd), "cmdline": self.boot.cmdline}
        if (root := self.boot.root_disk) is not None:
            boot["root_disk"] = {"path": str(root.path), "format": root.format, "mode": disk_mode(root)}
        return {
            "name": self.name,
            "description": self.description,
            "kind": self.kind,
            "source": self.source,
            "path": str(self.path) if self.path else None,
            "boot": boot or "default",
            "cpus": self.cpus,
            "memory_mb": self.memory_mb,
            "console": self.console,
            "hostname": self.hostname,
            "kernel_args": dict(self.kernel_args),
            "login": {"user": self.login.user} if self.login else None,
            "size": self.size,
            "max_size": self.max_size,
            "snapshot": self.snapshot,
            "network": network_summary(self.network),
            "image": ({"oci": self.image.oci} if self.image and self.image.oci else
                      {"base": self.image.base, "packages": list(self.image.packages)} if self.image else None),
            "scratch_disk_mb": self.scratch_disk_mb,
            "timeout": self.timeout_s,
            "shares": [{"host": str(s.host_path), "guest" if s.guest_path else "tag": s.guest_path or s.tag,
                        "mode": s.mode.value} for s in self.shares],
            "disks": [{"path": str(d.path), "format": d.format, "mode": disk_mode(d)} for d in self.disks],
        }


def parse_profile(
    text: str,
    file: str = "<profile>",
    *,
    base_dir: Path | None = None,
    source: Source = "file",
    path: Path | None = None,
    is_file: Callable[[Path], bool] | None = None,
) -> Profile:
    """Validate profile ``text``; raise ProfileError with every issue found in it.

    ``file`` only names the text in messages. Relative kernel/initrd paths resolve against
    ``base_dir``; ``is_file`` (when given) checks they exist, the one question that needs a
    disk, so the parser itself stays pure.
    """
    document, issues = parse_document(text, file)
    if document is None:
        raise ProfileError(issues)
    f = Fields(file)
    f.unknown_keys(document, "", TOP_KEYS)
    name = None
    if f.require(document, "name", "", "a profile name, e.g. 'name: default'"):
        name = f.matching(document, "name", "", NAME_RE, "a name of lowercase letters, digits, '-' and '_' (at most 32)")
    kind = parse_kind(f, document)
    boot = parse_boot(f, document, base_dir, is_file)
    image = parse_image(f, document, kind)
    if kind == "sandbox":
        for key, why in (("boot", "it boots the image's kernel"), ("login", "its console is a root shell")):
            if key in document:
                f.error(document, key, key, f"expected no {key} in a kind: sandbox profile ({why})")
    login = parse_login(f, document, boot)
    size, max_size, snapshot = parse_pool(f, document, boot, login)
    scratch = None
    if "scratch_disk_mb" in document:
        if kind != "sandbox":
            f.error(document, "scratch_disk_mb", "scratch_disk_mb",
                    "expected no scratch_disk_mb in a kind: vm profile (only a sandbox has an overlay to put on it)")
        else:
            scratch = f.integer(document, "scratch_disk_mb", "", *SCRATCH_DISK_MB, default=0) or None
    default_host = name if name and HOSTNAME_RE.match(name) else "capsa"
    profile = Profile(
        name=name or "",
        description=f.string(document, "description", "", "") or "",
        path=path,
        boot=boot or BootChoice(),
        cpus=f.integer(document, "cpus", "", *CPUS, default=1),
        memory_mb=f.integer(document, "memory_mb", "", *MEMORY_MB, default=SANDBOX_MEMORY_MB if kind == "sandbox" else 256),
        console=f.boolean(document, "console", "", default=True),
        hostname=f.matching(document, "hostname", "", HOSTNAME_RE, "a host name (letters, digits, '-')", default_host) or "capsa",
        kernel_args=parse_kernel_args(f, document, boot),
        login=login,
        size=size,
        max_size=max_size,
        snapshot=snapshot,
        network=parse_network(f, document, max_size),
        source=source,
        kind=kind,
        image=image,
        scratch_disk_mb=scratch,
        timeout_s=parse_timeout(f, document),
        shares=parse_shares(f, document, kind == "sandbox", base_dir),
        disks=parse_disks(f, document, base_dir),
    )
    if f.issues:
        raise ProfileError(sorted(f.issues, key=lambda issue: issue.line or 0))
    return profile


def parse_kind(f: Fields, document: CommentedMap) -> Kind:
    """``kind: vm`` (the default) or ``kind: sandbox``."""
    if "kind" not in document:
        return "vm"
    value = document["kind"]
    for kind in KINDS:
        if value == kind:
            return kind
    f.expected(document, "kind", "", "'vm' or 'sandbox'")
    return "vm"


def parse_image(f: Fields, document: CommentedMap, kind: Kind) -> ImageChoice | None:
    """``image: {base: debian, packages: [..]}``, a sandbox's image (absent: python3 only)."""
    if "image" not in document:
        return ImageChoice() if kind == "sandbox" else None
    if kind != "sandbox":
        f.error(document, "image", "image", "expected no image in a kind: vm profile (add 'kind: sandbox')")
        return None
    image = f.mapping(document, "image", "")
    if image is None:
        return ImageChoice()
    f.unknown_keys(image, "image", IMAGE_KEYS)
    base = f.string(image, "base", "image", "debian")
    if base is not None and base not in BASES:
        f.expected(image, "base", "image", " or ".join(repr(b) for b in BASES))
    packages: list[str] = []
    if "packages" in image:
        names = image["packages"]
        if not isinstance(names, CommentedSeq):
            f.expected(image, "packages", "image", "a list of Debian package names")
        else:
            for index, name in enumerate(names):
                where = f"image.packages[{index}]"
                if not isinstance(name, str):
                    f.error(names, index, where, f"expected a Debian package name, found {describe(name)}")
                    continue
                try:
                    check_packages([name])
                except ImageError:
                    f.error(names, index, where,
                            f"expected a Debian package name (lowercase letters, digits, '+', '-', '.'), found {name!r}")
                    continue
                packages.append(name)
    oci = f.string(image, "oci", "image")
    if oci is not None:
        try:
            parse_source(oci)
        except ImageError as err:
            f.error(image, "oci", "image.oci", f"expected an image reference: {err}")
            oci = None
        if packages:
            f.error(image, "packages", "image.packages",
                    "expected no packages with oci (the image brings its own software; packages would go to our system image)")
    tls_verify = f.boolean(image, "tls_verify", "image", True) if "tls_verify" in image else None
    return ImageChoice(base if base in BASES else "debian", tuple(packages), oci, tls_verify)


def parse_timeout(f: Fields, document: CommentedMap) -> float | None:
    """``timeout: SECONDS``: capsa's operation timeout (readiness and agent calls)."""
    if "timeout" not in document:
        return None
    value = document["timeout"]
    low, high = TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        f.expected(document, "timeout", "", f"a number of seconds from {low:g} to {high:g}")
        return None
    return float(value)


def parse_boot(
    f: Fields, document: CommentedMap, base_dir: Path | None, is_file: Callable[[Path], bool] | None
) -> BootChoice | None:
    """``boot: default``, ``boot: {kernel, initrd, cmdline, root_disk}``, or ``boot: {root_disk}``
    (the default guest switching into the disk); None when invalid."""
    if "boot" not in document:
        return BootChoice()
    value = document["boot"]
    if isinstance(value, str) and value == "default":
        return BootChoice()
    if not isinstance(value, CommentedMap):
        f.expected(document, "boot", "", "'default' or a mapping with kernel and initrd (or root_disk)")
        return None
    f.unknown_keys(value, "boot", BOOT_KEYS)
    root_disk = parse_root_disk(f, value, base_dir)
    if "root_disk" in value and root_disk is None:
        return None
    if "root_disk" in value and not {"kernel", "initrd", "cmdline"} & set(value):
        return BootChoice(root_disk=root_disk)
    kernel = _boot_file(f, value, "kernel", base_dir, is_file)
    initrd = _boot_file(f, value, "initrd", base_dir, is_file)
    cmdline = f.string(value, "cmdline", "boot")
    if kernel is None or initrd is None or ("cmdline" in value and cmdline is None):
        return None
    return BootChoice("custom", kernel, initrd, cmdline, root_disk)


def _boot_file(
    f: Fields, boot: CommentedMap, key: str, base_dir: Path | None, is_file: Callable[[Path], bool] | None
) -> Path | None:
    if not f.require(boot, key, "boot", f"the path of the {key} file"):
        return None
    text = f.string(boot, key, "boot")
    if not text:
        if text == "":
            f.expected(boot, key, "boot", f"the path of the {key} file")
        return None
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path  # relative to the profile's folder, not to wherever we run from
    if is_file is not None and not is_file(path):
        f.error(boot, key, f"boot.{key}", f"expected an existing {key} file, found {str(path)!r} (no such file)")
        return None
    return path


def parse_login(f: Fields, document: CommentedMap, boot: BootChoice | None) -> LoginSpec | None:
    login = f.mapping(document, "login", "")
    if login is None:
        return None
    f.unknown_keys(login, "login", LOGIN_KEYS)
    if boot is not None and boot.kind != "default":
        # Only our initramfs understands capsa.login; a custom initrd brings its own getty.
        f.error(document, "login", "login", "expected 'boot: default' with login (a custom initrd brings its own getty)")
    elif boot is not None and boot.root_disk is not None:
        f.error(document, "login", "login", "expected no login with boot.root_disk (the disk's own init runs the console)")
    user = None
    if f.require(login, "user", "login", "the user name to log in as"):
        user = f.matching(login, "user", "login", USER_RE, "a user name (lowercase letters, digits, '_', '-')")
    password = f.string(login, "password", "login")
    return LoginSpec(user, password) if user else None


def parse_pool(
    f: Fields, document: CommentedMap, boot: BootChoice | None, login: LoginSpec | None
) -> tuple[int, int, bool | None]:
    """``pool: {size, max_size, snapshot}``: VMs kept warm, the most that may exist at once, and
    whether refills are snapshot clones (absent: wherever the VM's shape can be cloned)."""
    pool = f.mapping(document, "pool", "")
    if pool is None:
        return 2, 4, None
    f.unknown_keys(pool, "pool", POOL_KEYS)
    size = f.integer(pool, "size", "pool", *PROFILE_SIZE, default=2)
    max_size = f.integer(pool, "max_size", "pool", *PROFILE_MAX_SIZE, default=max(4, size))
    if not pool_sizes_fit(size, max_size):
        f.error(pool, "max_size", "pool.max_size", f"expected at least pool.size ({size}), found {max_size}")
        max_size = size
    snapshot: bool | None = None
    if "snapshot" in pool:
        snapshot = f.boolean(pool, "snapshot", "pool", default=True)
        custom = boot is not None and boot.kind == "custom"
        root = boot.root_disk if boot is not None else None
        if snapshot and root is not None and not root.read_only:
            f.error(pool, "snapshot", "pool.snapshot",
                    "expected false or no key: clones share their root disk, which must be mode: ro to be cloned")
        elif snapshot and (custom or login is not None):
            why = "a custom boot" if custom else "a login profile"
            f.error(pool, "snapshot", "pool.snapshot",
                    f"expected false or no key: {why} cannot be cloned from a snapshot (a clone's identity is fixed by the default guest's shell)")
    return size, max_size, snapshot


def parse_kernel_args(f: Fields, document: CommentedMap, boot: BootChoice | None) -> tuple[tuple[str, str], ...]:
    """``kernel_args: {key: value}``: extra ``key=value`` words on the kernel command line."""
    args = f.mapping(document, "kernel_args", "")
    if args is None:
        return ()
    if boot is not None and boot.cmdline is not None and len(args):
        f.error(document, "kernel_args", "kernel_args", "expected no kernel_args with boot.cmdline (it replaces the whole command line)")
    pairs = []
    for key, value in args.items():
        where = f"kernel_args.{key}"
        if not isinstance(key, str) or not key or any(c.isspace() or c in '="' for c in key):
            f.error(args, key, where, "expected an argument name without spaces, '=' or quotes")
        elif key.startswith("capsa."):
            f.error(args, key, where, "expected no capsa.* argument (set hostname and login in the profile)")
        elif isinstance(value, bool) or not isinstance(value, (str, int, float)):
            f.expected(args, key, "kernel_args", "a string or a number")
        elif '"' in str(value):
            f.expected(args, key, "kernel_args", "a value without double quotes")
        else:
            pairs.append((key, str(value)))
    return tuple(pairs)
