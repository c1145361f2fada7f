"""Test images: OCI layouts built in the test from our Debian sandbox tree (python3 on
bookworm minbase), plus small layers of our own, with our own layout writer
(``engine.oci.export``)."""
from __future__ import annotations

import io
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path

from engine.image.sandbox import sandbox_tree
from engine.oci.export import RunConfig, write_layout

APP_UID = 1000
MAIN_PY = b"import os, sys\nprint('main', os.getcwd(), os.getuid(), os.environ.get('GREETING'), *sys.argv[1:])\n"


def base_tree() -> Path:
    """The Debian tree (the sandbox image's own mmdebstrap tar, cached across runs)."""
    return sandbox_tree("debian", ())


def layer_tar(path: Path, entries: Iterable[tuple[str, bytes | None, int, int]], *,
              whiteouts: Iterable[str] = (), symlinks: Iterable[tuple[str, str]] = ()) -> Path:
    """A layer tar at ``path``: (name, data or None for a folder, mode, uid) entries,
    ``whiteouts`` (names hidden from the layers below) and (name, target) symlinks."""
    now = int(time.time())
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode, uid in entries:
            info = tarfile.TarInfo(name)
            info.mtime, info.mode, info.uid, info.gid = now, mode, uid, uid
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        for name, target in symlinks:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, now
            tar.addfile(info)
        for name in whiteouts:
            head, _, tail = name.rpartition("/")
            info = tarfile.TarInfo(f"{head}/.wh.{tail}" if head else f".wh.{tail}")
            info.mtime = now
            tar.addfile(info, io.BytesIO(b""))
    return path


def passwd_with_app(tree: Path) -> bytes:
    """The base tree's /etc/passwd plus the image's own user ``app`` (uid 1000)."""
    with tarfile.open(tree) as tar:
        for name in ("./etc/passwd", "etc/passwd"):
            try:
                member = tar.getmember(name)
            except KeyError:
                continue
            source = tar.extractfile(member)
            assert source is not None
            return source.read() + f"app:x:{APP_UID}:{APP_UID}:app:/home/app:/bin/sh\n".encode()
    raise AssertionError(f"{tree} has no etc/passwd")


def app_image(work: Path, *, tag: str = "1", compresslevel: int = 1) -> Path:
    """An image of the Debian tree plus an app layer: /app/main.py, a user ``app`` (uid 1000,
    also the image's User), Env, WorkingDir /app, Entrypoint python3 and Cmd /app/main.py, and
    /etc/issue whited out. Returns its OCI layout folder."""
    tree = base_tree()
    app = layer_tar(work / "app.tar", [
        ("etc/passwd", passwd_with_app(tree), 0o644, 0),
        ("app", None, 0o755, APP_UID),
        ("app/main.py", MAIN_PY, 0o644, APP_UID),
        ("home/app", None, 0o750, APP_UID),
        ("usr/local/bin/setuid-marker", b"#!/bin/sh\n", 0o4755, 0),
    ], whiteouts=["etc/issue"])
    layout = work / f"layout-app-{tag}"
    write_layout(layout, [tree, app], RunConfig(
        entrypoint=("python3",), cmd=("/app/main.py",),
        env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GREETING=hello from the image"),
        working_dir="/app", user="app"), tag=tag, compresslevel=compresslevel)
    return layout


def noshell_image(work: Path, *, compresslevel: int = 1) -> Path:
    """The Debian tree with /bin/sh and dash whited out: argv execs work, shell strings cannot."""
    tree = base_tree()
    top = layer_tar(work / "noshell.tar", [("srv/marker", b"no shell here\n", 0o644, 0)],
                    whiteouts=["usr/bin/sh", "usr/bin/dash"])
    layout = work / "layout-noshell"
    write_layout(layout, [tree, top], RunConfig(cmd=("python3", "-c", "print('noshell')")), tag="1",
                 compresslevel=compresslevel)
    return layout
