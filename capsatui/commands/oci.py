"""``capsa-tui image pull|import|list|rm|prune|export``: OCI images in the layer cache.

Registered on the ``image`` parser that ``vm.py`` makes. Pulls and imports go through
``engine.pull_image`` / ``engine.import_image`` (skopeo, then one read-only erofs file per
layer, shared between images); ``export`` turns our own Debian sandbox tree into an OCI image
that ``skopeo copy`` can push.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import engine


def register(image_sub: argparse._SubParsersAction) -> None:
    """Add the OCI actions (and ``prune``) to ``capsa-tui image``'s sub-parsers."""
    pull = image_sub.add_parser("pull", help="pull an OCI image from a registry into the layer cache")
    pull.add_argument("reference", metavar="REF",
                      help="python:3.11, HOST:PORT/REPO:TAG, REPO@sha256:..., or docker-archive:/oci:/oci-archive:PATH")
    pull.add_argument("--tls-verify", type=_boolean, default=None, metavar="true|false",
                      help="false: allow a plain-HTTP or self-signed registry (default: registries.conf decides)")
    pull.add_argument("--authfile", type=Path, default=None, metavar="FILE",
                      help="registry credentials (default: skopeo's: $REGISTRY_AUTH_FILE, containers/auth.json, "
                           "~/.docker/config.json)")
    pull.set_defaults(handler=_pull)

    imp = image_sub.add_parser("import", help="import a `docker save` tarball, an OCI layout folder or an OCI archive")
    imp.add_argument("file", type=Path, metavar="FILE", help="the tarball, archive or layout folder")
    imp.add_argument("--tag", default=None, metavar="NAME", help="name the imported image (e.g. myapp:1)")
    imp.set_defaults(handler=_import)

    listing = image_sub.add_parser("list", help="the OCI images in the layer cache, and the disk they take")
    listing.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    listing.set_defaults(handler=_list)

    rm = image_sub.add_parser("rm", help="untag OCI images; an image goes (with its unshared layers) at its last name")
    rm.add_argument("names", nargs="+", metavar="NAME", help="a name as listed, or an image id (12+ hex digits)")
    rm.set_defaults(handler=_rm)

    prune = image_sub.add_parser(
        "prune", help="remove untagged OCI images and unused layers; with --templates, every snapshot template too",
    )
    prune.add_argument("--templates", action="store_true",
                       help="also remove every snapshot template (and its RAM image): pools build new ones")
    prune.set_defaults(handler=_prune)

    export = image_sub.add_parser(
        "export", help="export the Debian sandbox tree (python3 + --package names) as an OCI image",
        description="Write our Debian sandbox tree (mmdebstrap minbase with python3 and the --package names; "
                    "built first if it is not cached) as a one-layer OCI image. Push it with skopeo: "
                    "skopeo copy oci:DIR:TAG docker://REGISTRY/NAME:TAG",
    )
    export.add_argument("dest", metavar="DEST", help="oci:DIR[:TAG] (a new folder) or docker-archive:FILE")
    export.add_argument("-p", "--package", action="append", default=[], metavar="NAME",
                        help="a Debian package to add to the tree (repeatable)")
    export.add_argument("--cmd", default=None, metavar="CMD",
                        help="the image's Cmd, split like a shell would (default: /bin/sh)")
    export.add_argument("--entrypoint", default=None, metavar="CMD", help="the image's Entrypoint (default: none)")
    export.add_argument("-e", "--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an Env entry of the image (repeatable; PATH has Docker's default unless set)")
    export.set_defaults(handler=_export)


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def _names(image: engine.OciImage) -> str:
    return ", ".join(image.names) if image.names else "<none>"


@contextmanager
def _step_printer(title: str) -> Iterator[Callable[[str], None]]:
    """A progress callback that prints each step on a line of its own (under a live spinner
    on a terminal; plain lines into a pipe or a log)."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console()
    if not console.is_terminal:
        yield lambda line: print(line, flush=True)
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(title, total=None)

        def report(line: str) -> None:
            bar.console.print(line, markup=False, highlight=False)
            bar.update(task, description=f"{title}: {line}")

        yield report


def _summary(verb: str, image: engine.OciImage) -> None:
    print(f"{verb} {image.display_name}  id {image.short_id}  {len(image.diff_ids)} layer(s)  "
          f"{_mb(image.size)}")


def _pull(args: argparse.Namespace) -> int:
    with _step_printer(f"pulling {args.reference}") as report:
        image = engine.pull_image(args.reference, tls_verify=args.tls_verify, authfile=args.authfile, progress=report)
    _summary("pulled", image)
    return 0


def _import(args: argparse.Namespace) -> int:
    if args.tag is not None:
        engine.parse_reference(args.tag)  # an ImageError saying what is wrong with the name
    with _step_printer(f"importing {args.file}") as report:
        image = engine.import_image(args.file, tag=args.tag, progress=report)
    _summary("imported", image)
    return 0


def _created(image: engine.OciImage) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(image.created_at))


def image_row(image: engine.OciImage) -> dict[str, object]:
    """What ``image list --json`` says of one image."""
    return {"names": list(image.names), "id": image.id, "short_id": image.short_id,
            "manifest_digest": image.manifest_digest, "repo_digests": list(image.repo_digests),
            "layers": len(image.diff_ids), "size": image.size,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(image.created_at)),
            "architecture": image.config.architecture, "command": image.config.command()}


def _list(args: argparse.Namespace) -> int:
    store = engine.OciStore()
    images = store.list_images()
    if args.json:
        print(json.dumps([image_row(image) for image in images], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    if not images:
        print(f"no OCI images in {store.root} (`capsa-tui image pull python:3.11` fetches one)")
    else:
        table = Table()
        table.add_column("name")
        table.add_column("id")
        table.add_column("layers", justify="right")
        table.add_column("size", justify="right")  # its layer files in the cache
        table.add_column("created")
        for image in images:
            table.add_row(Text(_names(image)), image.short_id, str(len(image.diff_ids)), _mb(image.size),
                          _created(image))
        Console().print(table)
    print(f"layer cache {store.root}: {_mb(store.disk_usage())} on disk "
          "(a layer shared by several images is stored once)")
    return 0


def _rm(args: argparse.Namespace) -> int:
    store = engine.OciStore()
    failed = 0
    for name in args.names:
        before = store.disk_usage()
        try:
            image = store.remove(name)
        except engine.ImageError as err:
            sys.stdout.flush()
            print(f"capsa-tui: error: {err}", file=sys.stderr)
            failed += 1
            continue
        if any(other.id == image.id for other in store.list_images()):
            print(f"untagged {name} (image {image.short_id} keeps {_names(store.find(image.id) or image)})")
        else:
            freed = max(before - store.disk_usage(), 0)
            print(f"removed image {image.short_id} ({name}); freed {_mb(freed)} of layers")
    return 2 if failed else 0


def _prune(args: argparse.Namespace) -> int:
    store = engine.OciStore()
    removed, freed = store.prune()
    for image in removed:
        print(f"removed untagged image {image.short_id} ({len(image.diff_ids)} layer(s))")
    print(f"{len(removed)} untagged image(s) removed, {_mb(freed)} of unused layers freed ({freed} bytes)")
    if not args.templates:
        print("snapshot templates kept (`capsa-tui image prune --templates` removes them too)")
        return 0
    templates = engine.prune_templates()
    for directory in templates:
        print(f"removed template {directory}")
    print(f"{len(templates)} template(s) removed; pools build a new one when they next start")
    return 0


def _words(text: str | None, what: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    try:
        return tuple(shlex.split(text))
    except ValueError as err:
        raise engine.ConfigError(f"{what} {text!r}: {err}") from None


def run_config(cmd: str | None, entrypoint: str | None, env: list[str]) -> engine.RunConfig:
    """The exported image's run config from ``image export``'s options."""
    default = engine.RunConfig()
    pairs: dict[str, str] = {}
    for item in default.env:
        name, _, value = item.partition("=")
        pairs[name] = value
    for item in env:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise engine.ConfigError(f"--env {item!r} is not NAME=VALUE")
        pairs[name] = value
    cmd_words = _words(cmd, "--cmd")
    return engine.RunConfig(entrypoint=_words(entrypoint, "--entrypoint") or (),
                            cmd=cmd_words if cmd_words is not None else default.cmd,
                            env=tuple(f"{name}={value}" for name, value in pairs.items()))


def _export(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    target = engine.parse_source(args.dest)
    if not isinstance(target, engine.LocalSource) or target.transport not in ("oci", "docker-archive"):
        raise engine.ConfigError(f"export to {args.dest!r}: give oci:DIR[:TAG] or docker-archive:FILE "
                                 "(then push it with `skopeo copy`)")
    if target.path.exists():  # before the tree, which may take minutes to build
        raise engine.ConfigError(f"export to {args.dest!r}: {target.path} already exists (the image is written anew)")
    config = run_config(args.cmd, args.entrypoint, args.env)
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("sandbox tree", total=1.0)

        def report(step: str, fraction: float) -> None:
            bar.update(task, description=step, completed=fraction)

        tree = engine.sandbox_tree("debian", args.package, progress=report)
        bar.update(task, description="sandbox tree ready", completed=1.0)
        writing = bar.add_task(f"writing {args.dest}", total=None)
        with tempfile.TemporaryDirectory(prefix="capsa-export-") as scratch:
            digest = engine.export_layers([tree], config, args.dest, scratch=Path(scratch))
        bar.update(writing, total=1.0, completed=1.0)
    print(f"exported {tree.name} ({_mb(tree.stat().st_size)} tree) to {args.dest}")
    if target.transport == "oci":
        tag = target.tag or "latest"
        source = f"oci:{target.path}:{tag}"
        print(f"manifest {digest}")
    else:  # skopeo rewrote it as a Docker manifest: the digest is the OCI layout's it came from
        tag = "latest"
        source = f"docker-archive:{target.path}"
        print(f"manifest {digest} (of the OCI image the archive was written from)")
    print(f"push it:   skopeo copy {shlex.quote(source)} docker://REGISTRY/NAME:{tag}")
    print(f"import it: capsa-tui image import {shlex.quote(str(target.path))}")
    return 0
