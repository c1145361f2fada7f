"""The default guest image: a Debian kernel plus an initramfs we build ourselves.

Two kernel *flavours*, each its own image: ``cloud`` (``linux-image-cloud-amd64``), the default,
and ``generic`` (``linux-image-amd64``), used only by VMs with shared folders: the cloud kernel
has no 9p (see engine/microvm/share.py for why 9p), and the generic one reaches the shell about
0.4-0.9 s later under emulation (2.9-4.3 s against 2.5-3.5 s, measured side by side), too much
to pay on every VM. Each is resolved to the real ``linux-image-<ver>`` package. busybox from ``busybox-static``; both are downloaded with apt and unpacked, never
installed. The initramfs is an uncompressed newc cpio (unpacking is faster than decompressing
under software emulation) holding busybox, our ``/init`` and the few virtio modules a guest needs.

Images are cached under the user cache directory, one directory per key: a short hash of every
input (package versions, guest scripts, module lists, builder version), so any change rebuilds.
Builds happen in a scratch directory that is renamed into place, so a reader never sees half an
image.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import platformdirs

from engine.image import apt, cpio, elf, vmlinux
from engine.image.apt import PackageRef
from engine.errors import ImageError
from engine.image.kmods import KernelModule, ModuleTree
from engine.snapshot.agent import agent_program

# Bump when the build procedure changes in a way the other inputs do not capture.
BUILDER_VERSION = 1

CLOUD = "cloud"  # the default kernel: the fastest to boot
GENERIC = "generic"  # the kernel with 9p: VMs with shared folders
KERNEL_METAPACKAGES = {CLOUD: "linux-image-cloud-amd64", GENERIC: "linux-image-amd64"}
KERNEL_METAPACKAGE = KERNEL_METAPACKAGES[CLOUD]
KERNEL_PREFIX = "linux-image-"
BUSYBOX_PACKAGE = "busybox-static"


# Module lists written to /etc/capsa/modules.<name>; each is closed under dependencies, so
# /init loads one list per feature. Roots that are built into the kernel are skipped.
MODULE_LISTS: dict[str, tuple[str, ...]] = {
    "net": ("virtio_mmio", "virtio_net"),
    "pci": ("virtio_pci", "virtio_net"),
    "rng": ("virtio_mmio", "virtio_rng"),
    "rng-pci": ("virtio_pci", "virtio_rng"),
    "acpi": ("button", "evdev"),
    # The agent's virtio-serial port, and a sandbox's root image + overlay (+ its scratch disk).
    "console": ("virtio_mmio", "virtio_console"),
    "console-pci": ("virtio_pci", "virtio_console"),
    "sandbox": ("virtio_mmio", "virtio_blk", "erofs", "overlay", "ext4"),
    "sandbox-pci": ("virtio_pci", "virtio_blk", "erofs", "overlay", "ext4"),
    # Extra disks and root disks (ext4 the file system a guest is likeliest to find on one).
    "disk": ("virtio_mmio", "virtio_blk", "ext4"),
    "disk-pci": ("virtio_pci", "virtio_blk", "ext4"),
    # Shared folders: 9p over virtio (the generic flavour only: see FLAVOUR_ONLY_LISTS).
    # crc32c_generic too: the generic kernel has CRYPTO_CRC32C as a module and libcrc32c (which
    # erofs and ext4 need) fails its init without it (no modprobe in the initramfs to fetch it);
    # this list loads before the sandbox's, so a sandbox with shares mounts its erofs root.
    "9p": ("virtio_mmio", "9pnet_virtio", "9p", "crc32c_generic"),
    "9p-pci": ("virtio_pci", "9pnet_virtio", "9p", "crc32c_generic"),
}
# Lists only one flavour's kernel can satisfy.
FLAVOUR_ONLY_LISTS: dict[str, frozenset[str]] = {"9p": frozenset({GENERIC}), "9p-pci": frozenset({GENERIC})}


def module_lists(flavour: str) -> dict[str, tuple[str, ...]]:
    """The module lists of ``flavour``'s initramfs."""
    return {name: roots for name, roots in MODULE_LISTS.items() if flavour in FLAVOUR_ONLY_LISTS.get(name, {flavour})}


def check_flavour(flavour: str) -> str:
    if flavour not in KERNEL_METAPACKAGES:
        raise ImageError(f"kernel flavour {flavour!r} is not one of {', '.join(KERNEL_METAPACKAGES)}")
    return flavour

# Guest files that come from package data (engine/image/guest/), by their path in the initramfs.
_PACKAGED_FILES: dict[str, tuple[str, int]] = {
    "init": ("init.sh", 0o755),
    "etc/profile": ("profile.sh", 0o644),
    "etc/udhcpc/default.script": ("udhcpc.sh", 0o755),
    "etc/acpid.conf": ("acpid.conf", 0o644),
    "etc/acpi/power": ("acpi-power.sh", 0o755),
    "bin/capsa-shell": ("shell.sh", 0o755),
}

# Small static files. Root's password is empty in /etc/shadow, so busybox login lets root in
# without a prompt; busybox's passwd parser rejects an empty field in /etc/passwd itself.
_STATIC_FILES: dict[str, tuple[str, int]] = {
    "etc/passwd": ("root:x:0:0:root:/root:/bin/capsa-shell\n", 0o644),
    "etc/shadow": ("root::1:0:99999:7:::\n", 0o600),
    "etc/group": ("root:x:0:\ntty:x:5:\n", 0o644),
    "etc/hosts": ("127.0.0.1\tlocalhost\n::1\tlocalhost\n", 0o644),
    "etc/issue": ("", 0o644),
}

_DIRECTORIES: dict[str, int] = {
    "bin": 0o755, "sbin": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755, "dev": 0o755,
    "proc": 0o555, "sys": 0o555, "tmp": 0o1777, "run": 0o755, "root": 0o700, "home": 0o755,
    "etc": 0o755, "mnt": 0o755, "var": 0o755, "var/log": 0o755,
}

_KERNEL_FILE = "vmlinuz"
_VMLINUX_FILE = "vmlinux"
_INITRD_FILE = "initrd.img"
_INFO_FILE = "image.json"
_KEEP_IMAGES = 2

ProgressCallback = Callable[[str, float], None]


@dataclass(frozen=True)
class GuestImage:
    """A built guest: what QEMU boots (``kernel`` + ``initrd``) and where it came from."""

    kernel: Path
    initrd: Path
    bzimage: Path
    kernel_version: str
    kernel_package: str
    busybox_version: str
    key: str
    directory: Path
    pvh: bool
    flavour: str = CLOUD


@dataclass(frozen=True)
class ImageInputs:
    """Everything a build depends on; its hash is the cache key."""

    kernel: PackageRef
    busybox: PackageRef
    files: tuple[tuple[str, str], ...]
    module_lists: tuple[tuple[str, tuple[str, ...]], ...]
    builder_version: int = BUILDER_VERSION
    flavour: str = CLOUD


def image_key(inputs: ImageInputs) -> str:
    """A short, stable hash of the inputs (16 hex digits)."""
    blob = json.dumps(asdict(inputs), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def images_dir() -> Path:
    """Where built images live (one subdirectory per key) next to the ``downloads/`` cache."""
    return platformdirs.user_cache_path("capsa-tui") / "images"


def downloads_dir() -> Path:
    """Where downloaded .deb files are kept, by file name, so rebuilds do not refetch them."""
    return images_dir() / "downloads"


def guest_binaries() -> dict[str, tuple[bytes, int]]:
    """Contents and mode of every generated program in the initramfs, by path."""
    return {"bin/capsa-agent": (agent_program(), 0o755)}


def guest_files() -> dict[str, tuple[str, int]]:
    """Text and mode of every hand-written file in the initramfs, by path."""
    package = resources.files("engine.image") / "guest"
    files = {path: (package.joinpath(source).read_text(), mode) for path, (source, mode) in _PACKAGED_FILES.items()}
    files.update(_STATIC_FILES)
    return files


_resolve_lock = threading.Lock()
_resolved: dict[str, tuple[PackageRef, PackageRef]] = {}


def resolve_packages(flavour: str = CLOUD) -> tuple[PackageRef, PackageRef]:
    """The kernel (of ``flavour``) and busybox packages apt would fetch now; asked once per
    process and flavour (apt is slow)."""
    with _resolve_lock:
        if flavour not in _resolved:
            metapackage = KERNEL_METAPACKAGES[check_flavour(flavour)]
            kernel, extra = apt.resolve_metapackage(metapackage, KERNEL_PREFIX, [BUSYBOX_PACKAGE])
            _resolved[flavour] = (kernel, extra[0])
        return _resolved[flavour]


def forget_resolution() -> None:
    """Make the next call ask apt again (e.g. after `apt-get update`)."""
    with _resolve_lock:
        _resolved.clear()


def current_inputs(flavour: str = CLOUD) -> ImageInputs:
    """The inputs of the image of ``flavour`` this host would build now."""
    kernel, busybox = resolve_packages(flavour)
    files = tuple(sorted((path, f"{mode:o}:{text}") for path, (text, mode) in guest_files().items()))
    files += tuple(sorted((path, f"{mode:o}:hex:{data.hex()}") for path, (data, mode) in guest_binaries().items()))
    lists = tuple(sorted(module_lists(flavour).items()))
    return ImageInputs(kernel, busybox, files, lists, flavour=flavour)


def default_image(
    *, build: bool = True, progress: ProgressCallback | None = None, flavour: str = CLOUD
) -> GuestImage:
    """The default guest image (of kernel ``flavour``), built first if needed and ``build`` is true.

    ``CAPSA_KERNEL``/``CAPSA_INITRD`` replace the kernel and/or initrd with files of your own
    (for every flavour: the files are yours). If apt cannot say what is current but some image
    of the flavour was built before, the newest is used.
    """
    check_flavour(flavour)
    kernel_env = os.environ.get("CAPSA_KERNEL") or None
    initrd_env = os.environ.get("CAPSA_INITRD") or None
    if kernel_env or initrd_env:
        return _env_image(kernel_env, initrd_env, build=build, progress=progress, flavour=flavour)
    return _cached_image(build=build, progress=progress, flavour=flavour)


def build_image(
    *, force: bool = False, progress: ProgressCallback | None = None, flavour: str = CLOUD
) -> GuestImage:
    """Build the default image of ``flavour`` (a no-op if it is cached, unless ``force``).

    A forced build asks apt again, so it picks up a kernel that arrived since the process started.
    """
    if force:
        forget_resolution()
    return _build(current_inputs(check_flavour(flavour)), force=force, progress=progress)


def load_image(directory: Path) -> GuestImage | None:
    """The image stored in ``directory``, or None if there is no complete image there."""
    try:
        info = json.loads((directory / _INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    pvh = bool(info.get("pvh"))
    image = GuestImage(
        kernel=directory / (_VMLINUX_FILE if pvh else _KERNEL_FILE),
        initrd=directory / _INITRD_FILE,
        bzimage=directory / _KERNEL_FILE,
        kernel_version=str(info.get("kernel_version", "")),
        kernel_package=str(info.get("kernel_package", "")),
        busybox_version=str(info.get("busybox_version", "")),
        key=directory.name,
        directory=directory,
        pvh=pvh,
        flavour=str(info.get("flavour", CLOUD)),
    )
    if not (image.kernel.is_file() and image.initrd.is_file() and image.bzimage.is_file()):
        return None
    return image


def newest_image(flavour: str = CLOUD) -> GuestImage | None:
    """The most recently built complete image of ``flavour`` in the cache, if any."""
    images = (image for image in _cached_images() if image.flavour == flavour)
    return max(images, key=lambda image: (image.directory / _INFO_FILE).stat().st_mtime, default=None)


def image_info() -> dict[str, str]:
    """Human-readable facts about the default image, for ``capsa-tui image info``."""
    info = {"cache_dir": str(images_dir()), "downloads_dir": str(downloads_dir())}
    try:
        image = default_image(build=False)
    except ImageError as err:
        info["status"] = "not built"
        info["problem"] = str(err)
        return info
    info.update(
        status="built" if image.directory.parent == images_dir() else "custom (CAPSA_KERNEL/CAPSA_INITRD)",
        key=image.key,
        kernel=str(image.kernel),
        kernel_size=_human_size(image.kernel),
        initrd=str(image.initrd),
        initrd_size=_human_size(image.initrd),
        bzimage=str(image.bzimage),
        bzimage_size=_human_size(image.bzimage),
        kernel_version=image.kernel_version,
        kernel_package=image.kernel_package,
        busybox_version=image.busybox_version,
        pvh="yes" if image.pvh else "no (booting the bzImage)",
    )
    try:
        shares = default_image(build=False, flavour=GENERIC)
        info["shares_kernel"] = f"{shares.kernel} ({shares.kernel_version}: VMs with shared folders boot it)"
    except ImageError:
        info["shares_kernel"] = "not built (capsa-tui image build --shares; VMs with shared folders build it)"
    return info


# --- building -------------------------------------------------------------------------------


def _build(inputs: ImageInputs, *, force: bool, progress: ProgressCallback | None) -> GuestImage:
    report = progress or (lambda step, fraction: None)
    key = image_key(inputs)
    target = images_dir() / key
    images_dir().mkdir(parents=True, exist_ok=True)
    # One builder at a time per cache: a second one waits, then finds the image ready.
    with _build_lock():
        if not force:
            existing = load_image(target)
            if existing is not None:
                report("Guest image ready", 1.0)
                return existing
        _sweep_leftovers()
        with tempfile.TemporaryDirectory(prefix=f".build-{key}-", dir=images_dir()) as scratch:
            staging = Path(scratch) / "image"
            staging.mkdir()
            _build_into(staging, Path(scratch) / "work", inputs, key, report)
            install_atomically(staging, target)
        _prune(keep=target)
    image = load_image(target)
    if image is None:
        raise ImageError(f"built the guest image but {target} is incomplete; delete it and retry")
    report("Guest image ready", 1.0)
    return image


def _build_into(staging: Path, work: Path, inputs: ImageInputs, key: str, report: ProgressCallback) -> None:
    report(f"Downloading {inputs.kernel}", 0.05)
    kernel_deb = apt.download(inputs.kernel, downloads_dir())
    report(f"Downloading {inputs.busybox}", 0.25)
    busybox_deb = apt.download(inputs.busybox, downloads_dir())
    report("Unpacking packages", 0.35)
    apt.unpack(kernel_deb, work / "kernel")
    apt.unpack(busybox_deb, work / "busybox")

    report("Extracting vmlinux", 0.55)
    modules_root = _modules_root(work / "kernel")
    bzimage_path = _find_bzimage(work / "kernel", modules_root.name)
    bzimage = bzimage_path.read_bytes()
    (staging / _KERNEL_FILE).write_bytes(bzimage)
    pvh = _write_vmlinux(bzimage, staging / _VMLINUX_FILE)

    report("Selecting kernel modules", 0.7)
    tree = ModuleTree(modules_root)
    lists = {name: tree.load_order(list(roots)) for name, roots in inputs.module_lists}

    report("Writing initramfs", 0.8)
    busybox = work / "busybox" / "bin" / "busybox"
    if not busybox.is_file():
        raise ImageError(f"{inputs.busybox} has no bin/busybox; is it really busybox-static?")
    entries = _initramfs_entries(busybox, modules_root, lists, key)
    with open(staging / _INITRD_FILE, "wb") as out:
        for chunk in cpio.iter_newc(entries):
            out.write(chunk)

    info = {
        "key": key,
        "kernel_version": modules_root.name,
        "kernel_package": str(inputs.kernel),
        "busybox_version": inputs.busybox.version,
        "pvh": pvh,
        "flavour": inputs.flavour,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "modules": {name: [module.name for module in modules] for name, modules in lists.items()},
    }
    # Written last: its presence marks a complete image.
    (staging / _INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _modules_root(unpacked: Path) -> Path:
    candidates = sorted(path for path in (unpacked / "lib" / "modules").glob("*") if path.is_dir())
    if len(candidates) != 1:
        raise ImageError(f"expected one lib/modules/<version> in the kernel package, found {len(candidates)}")
    return candidates[0]


def _find_bzimage(unpacked: Path, version: str) -> Path:
    path = unpacked / "boot" / f"vmlinuz-{version}"
    if not path.is_file():
        raise ImageError(f"the kernel package has no boot/vmlinuz-{version}")
    return path


def _write_vmlinux(bzimage: bytes, path: Path) -> bool:
    """Write the PVH-bootable vmlinux; False (boot the bzImage) if that is not possible."""
    try:
        kernel = vmlinux.extract_vmlinux(bzimage)
    except ImageError:
        return False
    if not vmlinux.has_pvh_entry(kernel):
        return False
    path.write_bytes(kernel)
    return True


def _initramfs_entries(
    busybox: Path, modules_root: Path, lists: dict[str, list[KernelModule]], key: str
) -> list[cpio.CpioEntry]:
    entries = [cpio.directory(path, mode) for path, mode in _DIRECTORIES.items()]
    entries.append(cpio.char_device("dev/console", 5, 1))
    entries.append(cpio.symlink("var/run", "../run"))
    entries.append(cpio.file("bin/busybox", busybox.read_bytes(), 0o755))
    entries.extend(cpio.symlink(link, "/bin/busybox") for link in _applet_links(busybox))
    for path, (text, mode) in sorted(guest_files().items()):
        entries.append(cpio.file(path, text.encode(), mode))
    for path, (data, mode) in sorted(guest_binaries().items()):
        entries.append(cpio.file(path, data, mode))
    entries.extend(_module_entries(modules_root, lists))
    entries.append(cpio.file("etc/capsa/image", f"{key}\n".encode()))
    return cpio.with_parents(entries)


def _module_entries(modules_root: Path, lists: dict[str, list[KernelModule]]) -> list[cpio.CpioEntry]:
    base = f"lib/modules/{modules_root.name}"
    entries = []
    needed = {module.path: module for modules in lists.values() for module in modules}
    for rel in sorted(needed):
        entries.append(cpio.file(f"{base}/{rel}", (modules_root / rel).read_bytes()))
    for name, modules in sorted(lists.items()):
        text = "".join(f"{module.name} /{base}/{module.path}\n" for module in modules)
        entries.append(cpio.file(f"etc/capsa/modules.{name}", text.encode()))
    return entries


def _applet_links(busybox: Path) -> list[str]:
    """Applet paths (``bin/ls``...) from the binary itself; empty if it cannot run here.

    Links made at build time cost nothing at boot; /init falls back to ``--install -s``.
    """
    try:
        done = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    skip = {"bin/busybox", "init", "linuxrc"}
    return sorted(line.strip("/") for line in done.stdout.split() if line.strip("/") not in skip)


def install_atomically(staging: Path, target: Path) -> None:
    """Move a finished build into place atomically, replacing an older build of the same key."""
    old: Path | None = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.rename(target, old)
    os.rename(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _prune(keep: Path) -> None:
    """Delete all but the newest few images of each flavour (plus ``keep``) so the cache does
    not grow forever."""
    stale: list[GuestImage] = []
    for flavour in KERNEL_METAPACKAGES:
        images = sorted((image for image in _cached_images() if image.flavour == flavour),
                        key=lambda image: (image.directory / _INFO_FILE).stat().st_mtime)
        stale += [image for image in images[:-_KEEP_IMAGES] if image.directory != keep]
    for image in stale:
        shutil.rmtree(image.directory, ignore_errors=True)


def _sweep_leftovers() -> None:
    """Remove scratch directories of builds that died; only call while holding the build lock."""
    pattern_dirs = [(images_dir(), (".build-", ".old-")), (downloads_dir(), (".dl-",))]
    for parent, prefixes in pattern_dirs:
        if not parent.is_dir():
            continue
        for path in parent.iterdir():
            if path.is_dir() and path.name.startswith(prefixes):
                shutil.rmtree(path, ignore_errors=True)


def _cached_images() -> Iterator[GuestImage]:
    root = images_dir()
    if not root.is_dir():
        return
    for directory in root.iterdir():
        if directory.name.startswith(".") or directory.name == "downloads":
            continue
        image = load_image(directory)
        if image is not None:
            yield image


@contextmanager
def _build_lock() -> Iterator[None]:
    with open(images_dir() / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- CAPSA_KERNEL / CAPSA_INITRD -------------------------------------------------------------


def _cached_image(*, build: bool, progress: ProgressCallback | None, flavour: str = CLOUD) -> GuestImage:
    try:
        inputs = current_inputs(flavour)
    except ImageError:
        newest = newest_image(flavour)
        if newest is not None:
            return newest
        raise
    existing = load_image(images_dir() / image_key(inputs))
    if existing is not None:
        return existing
    if not build:
        raise ImageError(
            f"the default guest image ({inputs.kernel}, {inputs.busybox}) is not built yet: "
            "run `capsa-tui image build` or call default_image(build=True)"
            if flavour == CLOUD else
            f"the guest image for shared folders ({inputs.kernel}, {inputs.busybox}) is not built yet: "
            f"run `capsa-tui image build --flavour {flavour}` or call default_image(build=True, flavour={flavour!r})"
        )
    return _build(inputs, force=False, progress=progress)


def _env_image(
    kernel_env: str | None, initrd_env: str | None, *, build: bool, progress: ProgressCallback | None,
    flavour: str = CLOUD,
) -> GuestImage:
    """The image with CAPSA_KERNEL and/or CAPSA_INITRD swapped in.

    The files named are checked first, so a typo fails fast without touching apt; a piece that
    is not overridden comes from the default image.
    """
    for variable, value in (("CAPSA_KERNEL", kernel_env), ("CAPSA_INITRD", initrd_env)):
        if value and not Path(value).is_file():
            raise ImageError(f"{variable} names {value}, which does not exist or is not a file")
    base = None if kernel_env and initrd_env else _cached_image(build=build, progress=progress, flavour=flavour)
    kernel = Path(kernel_env) if kernel_env else _require(base).kernel
    initrd = Path(initrd_env) if initrd_env else _require(base).initrd
    return GuestImage(
        kernel=kernel,
        initrd=initrd,
        bzimage=kernel if kernel_env else _require(base).bzimage,
        kernel_version="custom" if kernel_env else _require(base).kernel_version,
        kernel_package="CAPSA_KERNEL" if kernel_env else _require(base).kernel_package,
        busybox_version=base.busybox_version if base else "",
        key="env-" + hashlib.sha256(f"{kernel}\0{initrd}".encode()).hexdigest()[:12],
        directory=kernel.parent,
        pvh=_file_has_pvh(kernel) if kernel_env else _require(base).pvh,
        flavour=flavour,
    )


def _require(image: GuestImage | None) -> GuestImage:
    # Only reached when one variable is unset, in which case the default image was loaded.
    assert image is not None
    return image


def _file_has_pvh(path: Path) -> bool:
    with open(path, "rb") as handle:
        if handle.read(4) != elf.ELF_MAGIC:
            return False
    try:
        return vmlinux.has_pvh_entry(path.read_bytes())
    except ImageError:
        return False


def _human_size(path: Path) -> str:
    size = float(path.stat().st_size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
