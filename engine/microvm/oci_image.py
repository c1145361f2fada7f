"""An OCI image as a VM spec's workload: :func:`with_oci_image` resolves the image in the
cache (pulling it on first use), adds its layers as the first read-only disks and records its
run config as the spec's :class:`OciWorkload` (``engine/microvm/workload.py``)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from engine.image.build import ProgressCallback
from engine.microvm.disk import DiskImage
from engine.microvm.spec import VmSpec
from engine.microvm.workload import OciWorkload
from engine.oci.pull import resolve_image


def with_oci_image(spec: VmSpec, image: str, args: Sequence[str] | None = None, *, tls_verify: bool | None = None,
                   pull: bool = True, progress: ProgressCallback | None = None) -> VmSpec:
    """``spec`` running in the OCI ``image`` (pulled first if not cached and ``pull``): its
    layers become the first disks, read-only, and its config the workload."""
    report = (lambda line: progress(f"image {image}: {line}", 0.5)) if progress is not None else None
    found = resolve_image(image, pull=pull, tls_verify=tls_verify, progress=report)
    layers = tuple(DiskImage(path, read_only=True, format="raw") for path in found.layer_files)
    config = found.config
    workload = OciWorkload(image=image, image_id=found.id, layers=len(layers), env=tuple(config.environment().items()),
                           working_dir=config.working_dir, user=config.user, command=tuple(config.command(args)))
    return replace(spec, disks=layers + spec.disks, workload=workload)
