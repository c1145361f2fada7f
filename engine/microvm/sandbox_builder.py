"""SandboxBuilder: ``engine.sandbox()``, a VM of a Debian sandbox image running the guest agent.

The image (base and packages) is a builder setting like cpus: ``spec()`` and ``build()``
resolve it through ``sandbox_boot()``, which builds it on first use (minutes) and reuses the
cached one after (milliseconds). Package names are checked when ``image()`` is called, so a bad
name fails before anything is built.
"""
from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace

from engine.image.build import ProgressCallback
from engine.image.sandbox import BASES, check_packages
from engine.errors import ImageError
from engine.microvm.boot import LinuxDirectBoot, sandbox_boot
from engine.microvm.builder import ShapeBuilder
from engine.microvm.created import CreatedVm
from engine.microvm.disk import DiskImage
from engine.microvm.handle import VmHandle
from engine.microvm.spec import VmSpec
from engine.microvm.oci_image import with_oci_image
from engine.oci.reference import parse_source

# Stands in for the sandbox's boot until the image is resolved (shaped like the real one, so the
# shape can be validated before a build that may take minutes); spec() never returns it.
_UNRESOLVED = LinuxDirectBoot(
    "/nonexistent/capsa-sandbox-unresolved", capsa_guest=True, has_agent=True,
    root_disk=DiskImage("/nonexistent/capsa-sandbox-unresolved.erofs", read_only=True),
)
SANDBOX_MEMORY_MB = 512  # python3 and a workload want more than the raw VM's 256


@dataclass
class SandboxBuilder(ShapeBuilder):
    """Fluent builder: ``await engine.sandbox().cpus(1).memory_mb(512).image("debian",
    packages=["python3"]).build()``; the console (a root shell on the serial line) is on."""

    _base: str = "debian"
    _packages: tuple[str, ...] = ()
    _progress: ProgressCallback | None = None
    _oci: str | None = None
    _oci_args: tuple[str, ...] | None = None
    _oci_tls_verify: bool | None = None

    def oci(self, image: str, args: Sequence[str] | None = None, *, tls_verify: bool | None = None) -> SandboxBuilder:
        """Run in an OCI image's root (capsa's ``.oci("python:3.11", ["python", "script.py"])``):
        every exec and file call sees the image's files, Env, WorkingDir and User; ``args``
        replace its Cmd in :attr:`OciWorkload.command` (``docker run IMAGE ARGS``). The image is
        pulled into the cache on first use; ``tls_verify=False`` allows a plain-HTTP registry."""
        if isinstance(args, str):
            raise ImageError(f"args must be a list of words, got the string {args!r}")
        parse_source(image)  # ImageError for a reference that does not parse, before any boot
        self._oci = image
        self._oci_args = tuple(args) if args is not None else None
        self._oci_tls_verify = tls_verify
        return self

    def image(self, base: str = "debian", packages: Sequence[str] = ()) -> SandboxBuilder:
        """The Debian image to boot: ``base`` with ``packages`` (python3 is always in)."""
        if isinstance(packages, str):
            raise ImageError(f"packages must be a list of names, got the string {packages!r}")
        if base not in BASES:
            raise ImageError(f"sandbox base {base!r} is not supported: use one of {', '.join(BASES)}")
        check_packages(packages)  # ImageError naming a bad name, before any build
        self._base = base
        self._packages = tuple(packages)
        return self

    def progress(self, callback: ProgressCallback | None) -> SandboxBuilder:
        """Called with (stage, fraction) while the image builds (only when it is not cached)."""
        self._progress = callback
        return self

    @property
    def base(self) -> str:
        return self._base

    @property
    def packages(self) -> tuple[str, ...]:
        return self._packages

    def boot(self, build: bool = True) -> LinuxDirectBoot:
        """The sandbox boot of this image; builds the image if ``build`` and it is missing."""
        return sandbox_boot(self._base, self._packages, build=build, progress=self._progress)

    def spec(self, build: bool = True) -> VmSpec:
        """The VM spec with the image resolved (built first if ``build`` and not cached)."""
        self._spec.validate()  # a bad shape fails before the image is built
        boot = self.boot(build)
        spec = replace(self._spec, boot=boot.for_shares(build) if self._spec.shares else boot)
        if self._oci is not None:
            spec = with_oci_image(spec, self._oci, self._oci_args, tls_verify=self._oci_tls_verify, pull=build,
                                  progress=self._progress)
        spec.validate()
        return spec

    async def create(self) -> CreatedVm:
        """Resolve (maybe build) the image in a thread; the sandbox, checked but not started."""
        return CreatedVm(await asyncio.to_thread(self.spec))

    async def build(self) -> VmHandle:
        """Resolve (maybe build) the image in a thread, start the VM and return its handle."""
        return await (await self.create()).start()


def sandbox() -> SandboxBuilder:
    """Start describing a sandbox: 1 CPU, 512 MiB, console on, the python3 Debian image."""
    return SandboxBuilder(VmSpec(boot=_UNRESOLVED, memory_mb=SANDBOX_MEMORY_MB, console=True))
