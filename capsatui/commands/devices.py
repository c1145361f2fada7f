"""``--share HOST:TARGET[:ro|:rw]`` and ``--disk PATH[:ro|:rw|:cow]``: shared folders and disks on
the command line. TARGET is an absolute guest path for a sandbox (mounted there), a 9p tag for a
raw VM (the guest mounts it). Bad values are argparse errors that name the value."""
from __future__ import annotations

import argparse
from typing import TypeVar

import engine

B = TypeVar("B", "engine.VmBuilder", "engine.SandboxBuilder")  # strings: importing this module loads no builder


def share_arg(text: str) -> tuple[str, str, engine.MountMode]:
    """``HOST:TARGET[:ro|:rw]`` -> (host, target, mode)."""
    parts = text.rsplit(":", 2) if text.count(":") >= 2 else text.split(":")
    mode = engine.MountMode.ReadWrite
    if len(parts) == 3:
        if parts[2] not in ("ro", "rw"):
            raise argparse.ArgumentTypeError(f"{text!r}: the mode after the second ':' must be ro or rw")
        mode = engine.MountMode.parse(parts[2])
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:TARGET[:ro|:rw] (TARGET a guest path or a tag)")
    return parts[0], parts[1], mode


def disk_arg(text: str) -> engine.DiskImage:
    """``PATH[:ro|:rw|:cow]`` -> a DiskImage (format by extension)."""
    path, _, mode = text.rpartition(":") if text.rsplit(":", 1)[-1] in ("ro", "rw", "cow") else (text, "", "rw")
    if not path:
        raise argparse.ArgumentTypeError(f"{text!r}: expected PATH[:ro|:rw|:cow]")
    return engine.DiskImage(path, read_only=mode == "ro", copy_on_write=mode == "cow")


def add_device_args(parser: argparse.ArgumentParser, target: str) -> None:
    parser.add_argument("--share", action="append", default=[], type=share_arg, metavar=f"HOST:{target}[:ro]",
                        help=f"share the host folder HOST at {target} (repeatable; read-write unless :ro)")
    parser.add_argument("--disk", action="append", default=[], type=disk_arg, metavar="PATH[:ro|:cow]",
                        help="attach a disk image (vdb, vdc, ... in order; :cow writes to a throwaway overlay)")


def apply_devices(builder: B, args: argparse.Namespace) -> B:
    """The --share and --disk values (from :func:`add_device_args`) on ``builder``."""
    for host, target, mode in args.share:
        builder = builder.share(host, target, mode)
    for disk in args.disk:
        builder = builder.disk(disk)
    return builder
