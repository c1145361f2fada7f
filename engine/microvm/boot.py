"""Boot configurations: which kernel and initramfs a VM starts from."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from engine.errors import ConfigError
from engine.console.match import READY_MARKER
from engine.image.build import CLOUD, GENERIC, ProgressCallback, default_image
from engine.image.sandbox import sandbox_image
from engine.microvm.disk import DiskImage


@dataclass(frozen=True)
class LinuxDirectBoot:
    """Boot a Linux kernel directly (no firmware, no bootloader) with an optional initramfs.

    ``ready_marker`` is the byte string the guest prints each time a shell starts and is ready
    for input; the default guest prints one, so ``exec`` right after ``build()`` waits for the shell instead
    of typing into a guest that is still booting. ``capsa_guest`` says the initramfs is ours and
    understands the ``capsa.*`` kernel arguments (hostname, login, network). ``root_disk`` is the
    guest's root filesystem (a sandbox's read-only image), ``has_agent`` says the guest runs the
    capsa agent on its agent port (a sandbox). ``flavour`` is the default image's kernel flavour
    this boot's kernel and initramfs come from (None: files of your own): a VM with shared
    folders swaps ``cloud`` for ``generic`` (:meth:`for_shares`).
    """

    kernel: Path
    initrd: Path | None = None
    ready_marker: bytes | None = None
    capsa_guest: bool = False
    root_disk: DiskImage | None = None
    has_agent: bool = False
    flavour: str | None = None

    def __init__(
        self,
        kernel: str | Path,
        initrd: str | Path | None = None,
        *,
        ready_marker: bytes | None = None,
        capsa_guest: bool = False,
        root_disk: DiskImage | None = None,
        has_agent: bool = False,
        flavour: str | None = None,
    ) -> None:
        object.__setattr__(self, "kernel", Path(kernel).expanduser())
        object.__setattr__(self, "initrd", Path(initrd).expanduser() if initrd is not None else None)
        object.__setattr__(self, "ready_marker", ready_marker)
        object.__setattr__(self, "capsa_guest", capsa_guest)
        object.__setattr__(self, "root_disk", root_disk)
        object.__setattr__(self, "has_agent", has_agent)
        object.__setattr__(self, "flavour", flavour)

    def with_root_disk(self, disk: DiskImage | str | Path) -> LinuxDirectBoot:
        """This boot with ``disk`` as the root disk (capsa's ``with_root_disk``): the guest's vda.
        Our initramfs mounts it (read-only if the disk is) and runs its ``/sbin/init``
        (``cmdline_arg("init", ...)`` names another); a sandbox's is its image."""
        image = disk if isinstance(disk, DiskImage) else DiskImage(disk)
        return replace(self, root_disk=image)

    def for_shares(self, build: bool = True) -> LinuxDirectBoot:
        """This boot with a kernel that has 9p: the default image's ``generic`` flavour in place
        of ``cloud`` (built first if ``build``); a boot of your own files is returned as it is."""
        if self.flavour != CLOUD:
            return self
        image = default_image(build=build, flavour=GENERIC)
        return replace(self, kernel=image.kernel, initrd=image.initrd, flavour=GENERIC)

    def check(self) -> None:
        """Raise ConfigError naming the first path that is missing or unreadable."""
        for label, path in (("kernel", self.kernel), ("initrd", self.initrd)):
            if path is None:
                continue
            if not path.exists():
                raise ConfigError(f"{label} not found: {path}")
            if not path.is_file():
                raise ConfigError(f"{label} is not a file: {path}")
        if self.root_disk is not None:
            self.root_disk.check()


def _flavour() -> str | None:
    """The default image's flavour, or None when CAPSA_KERNEL/CAPSA_INITRD swap in files of
    your own (whose kernel and modules no flavour describes)."""
    return None if os.environ.get("CAPSA_KERNEL") or os.environ.get("CAPSA_INITRD") else CLOUD


def default_boot() -> LinuxDirectBoot:
    """The cached default guest (Debian cloud kernel + our busybox initramfs), built if absent."""
    image = default_image()
    # With CAPSA_INITRD the userland is someone else's: it prints no marker, knows no capsa.* args.
    ours = not os.environ.get("CAPSA_INITRD")
    return LinuxDirectBoot(
        image.kernel, image.initrd, ready_marker=READY_MARKER if ours else None, capsa_guest=ours,
        flavour=_flavour(),
    )


def sandbox_boot(
    base: str = "debian",
    packages: Sequence[str] = (),
    *,
    build: bool = True,
    progress: ProgressCallback | None = None,
) -> LinuxDirectBoot:
    """A sandbox: the default kernel and initramfs, switching into the Debian image ``base`` with
    ``packages`` (read-only, shared by every sandbox of it; writes go to an overlay) and running
    the capsa agent. The console is a root shell that prints the ready marker."""
    image = sandbox_image(base, packages, build=build, progress=progress)
    return LinuxDirectBoot(
        image.kernel, image.initrd, ready_marker=READY_MARKER, capsa_guest=True,
        root_disk=DiskImage(image.rootfs, read_only=True), has_agent=True,
        flavour=_flavour(),
    )
