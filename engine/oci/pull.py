"""Pull and import: an image from a registry or a local archive or layout, into the cache.

A registry or an archive is first copied by skopeo into a scratch OCI layout inside the cache
(skopeo checks registry blobs against their digests); an OCI layout folder is read in place.
Then every layer the cache lacks is unpacked (``layer.py``), checked against the manifest's
digest and the config's ``diff_id``, and made into a read-only erofs file. New layers are
installed only once every layer of the image is good, and the image's record comes last, so a
digest mismatch, a truncated archive or a full disk leaves nothing cached but what was cached
before.
"""
from __future__ import annotations

import errno
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from engine.errors import ImageError
from engine.oci import skopeo
from engine.oci.config import parse_config
from engine.oci.image import OciImage
from engine.oci.layer import unpack_layer
from engine.oci.layout import Layout
from engine.oci.reference import ImageReference, ImageSource, LocalSource, parse_reference, parse_source, source_of_path
from engine.oci.store import OciStore

Progress = Callable[[str], None]


def pull_image(reference: str | ImageSource, *, store: OciStore | None = None, tls_verify: bool | None = None,
               authfile: str | Path | None = None, progress: Progress | None = None,
               name: str | None = None) -> OciImage:
    """Pull ``reference`` (``python:3.11``, ``host:5000/repo@sha256:...``, or a local
    ``docker-archive:``/``oci:``/``oci-archive:`` source) into the cache; the cached image,
    named ``name`` if given, else by the reference (a digest-only one gets no name).
    ``tls_verify=False`` allows a plain-HTTP or self-signed registry."""
    source = parse_source(reference) if isinstance(reference, str) else reference
    store = store or OciStore()
    report = progress or (lambda line: None)
    if isinstance(source, LocalSource):
        # Named by where it came from, so `.oci("oci:DIR:TAG")` finds it next time; importing again refreshes it.
        source = LocalSource(source.transport, source.path.resolve(), source.tag)
    if isinstance(source, LocalSource) and source.transport == "oci":
        if not source.path.is_dir():
            raise ImageError(f"{source.path} is not an OCI layout folder")
        return import_layout(store, source.path, source.tag, where=str(source), names=(name or str(source),),
                             progress=report)
    scratch = store.scratch("pull")
    try:
        layout = scratch / "layout"
        report(f"fetching {source}")
        # dir:, not oci:: the manifest stays as the registry (or archive) has it, Docker format
        # included, so the digests we record are the registry's and the image id is Docker's.
        skopeo.copy(source.skopeo(), f"dir:{layout}", what=source, src_tls_verify=tls_verify,
                    authfile=Path(authfile) if authfile is not None else None, progress=report)
        names = (name,) if name else (str(source),) if isinstance(source, LocalSource) or source.tag is not None else ()
        image = import_layout(store, layout, None, where=str(source), names=names, progress=report,
                              repository=source.name if isinstance(source, ImageReference) else None)
    except OSError as err:
        raise _disk_error(err, store) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return image


def import_image(path: str | Path, *, store: OciStore | None = None, tag: str | None = None,
                 progress: Progress | None = None) -> OciImage:
    """Import a ``docker save`` tarball, an OCI layout folder or an OCI archive; ``tag`` names
    the imported image (as ``image pull`` would)."""
    source = source_of_path(Path(path).expanduser())
    if tag is not None:
        parse_reference(tag)  # ImageError saying what is wrong with the name
    return pull_image(source, store=store, progress=progress, name=tag)


def import_layout(store: OciStore, root: Path, tag: str | None, *, where: str, names: tuple[str, ...],
                  progress: Progress, repository: str | None = None) -> OciImage:
    """The image of the OCI layout at ``root`` into ``store`` (see the module's docstring)."""
    layout = Layout(root, where)
    manifest = layout.manifest(tag)
    document = layout.read_json(manifest.config)
    config = parse_config(document, where)
    config.check_platform(where)
    rootfs = document.get("rootfs") if isinstance(document, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(manifest.layers) or not all(isinstance(d, str) for d in diff_ids):
        raise ImageError(f"{where}: the config's rootfs.diff_ids do not list one digest per layer "
                         f"({len(manifest.layers)} layers)")
    image_id = manifest.config.digest
    total = len(manifest.layers)
    with store.lock():
        staging = store.scratch("unpack")
        try:
            built: list[tuple[str, Path]] = []
            for number, (descriptor, diff_id) in enumerate(zip(manifest.layers, diff_ids), start=1):
                label = f"layer {number}/{total} {descriptor.digest.removeprefix('sha256:')[:12]}"
                if store.has_layer(diff_id) or any(d == diff_id for d, _ in built):
                    progress(f"{label}: already cached")
                    continue
                progress(f"{label}: unpacking {descriptor.size / 1e6:.1f} MB")
                tree = staging / f"tree-{number}"
                tree.mkdir()
                blob = layout.blob_path(descriptor.digest)
                try:
                    with open(blob, "rb") as stream:
                        unpacked = unpack_layer(stream, descriptor.media_type, tree, where=f"{where} {label}")
                except FileNotFoundError:
                    raise ImageError(f"{where}: {label} is missing from the image (no blob {descriptor.digest})") from None
                if unpacked.blob_digest != descriptor.digest:
                    raise ImageError(f"{where}: {label} does not match its digest: the manifest says {descriptor.digest}, "
                                     f"its content hashes to {unpacked.blob_digest} (refused; nothing was cached)")
                if unpacked.diff_id != diff_id:
                    raise ImageError(f"{where}: {label} unpacks to {unpacked.diff_id}, but the config says {diff_id} "
                                     "(refused; nothing was cached)")
                erofs = staging / f"layer-{number}.erofs"
                _make_erofs(tree, erofs, where=f"{where} {label}")
                shutil.rmtree(tree)
                built.append((diff_id, erofs))
                progress(f"{label}: done")
            for diff_id, erofs in built:
                store.install_layer(diff_id, erofs)
            size = sum(store.layer_file(diff_id).stat().st_size for diff_id in diff_ids)
            digests = (f"{repository}@{manifest.digest}",) if repository else ()
            return store.write_record(image_id, manifest.digest, names, digests, config, diff_ids, size)
        except OSError as err:
            raise _disk_error(err, store) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _make_erofs(tree: Path, dest: Path, *, where: str) -> None:
    mkfs = shutil.which("mkfs.erofs")
    if mkfs is None:
        raise ImageError("mkfs.erofs not found: install the Debian package erofs-utils (scripts/install.sh does)")
    done = subprocess.run([mkfs, "--quiet", str(dest), str(tree)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()[-600:]
        if "No space left" in said or "ENOSPC" in said:
            raise OSError(errno.ENOSPC, f"No space left on device (mkfs.erofs {where})")
        raise ImageError(f"{where}: mkfs.erofs failed: {said}")


def _disk_error(err: OSError, store: OciStore) -> ImageError:
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ImageError(f"no space left in the image cache {store.root} while unpacking: the pull was undone, "
                          "nothing was cached (free space, or set CAPSA_OCI_CACHE to a larger disk)")
    if err.errno in (errno.EPERM, errno.EACCES) and err.filename is None:
        return ImageError(f"unpacking an image needs root (owners, device nodes and overlay xattrs are kept): {err}")
    return ImageError(f"unpacking into the image cache {store.root} failed: {err}")


def resolve_image(reference: str, *, store: OciStore | None = None, pull: bool = True, tls_verify: bool | None = None,
                  progress: Progress | None = None) -> OciImage:
    """The cached image named ``reference``, pulled first if it is not cached and ``pull``."""
    store = store or OciStore()
    found = store.find(reference)
    if found is not None:
        return found
    if not pull:
        raise ImageError(f"the image {reference} is not in the cache {store.root}: run `capsa-tui image pull {reference}`")
    return pull_image(reference, store=store, tls_verify=tls_verify, progress=progress)
