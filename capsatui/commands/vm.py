"""``capsa-tui image ...`` and ``capsa-tui vm ...``: the guest image and one-off VMs."""
from __future__ import annotations

import argparse
import sys

import engine
from capsatui.attach import attach_terminal
from capsatui.commands import oci
from capsatui.commands.agent_exec import emit
from capsatui.commands.devices import add_device_args, apply_devices
from capsatui.commands.sandbox import SANDBOX_MEMORY_MB, run_in_cold_sandbox
from capsatui.commands.words import command_words


def register(sub: argparse._SubParsersAction) -> None:
    image = sub.add_parser("image", help="build and inspect the guest and sandbox images; pull, import, list "
                                         "and export OCI images; prune caches")
    image_sub = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    build = image_sub.add_parser(
        "build", help="build the default guest image (Debian's kernel + busybox); with BASE, also a sandbox image",
    )
    build.add_argument("base", nargs="?", choices=("debian",), metavar="BASE",
                       help="also build the sandbox image of BASE (debian): python3 plus --package names")
    build.add_argument("-p", "--package", action="append", default=[], metavar="NAME",
                       help="a Debian package to add to the sandbox image (repeatable)")
    build.add_argument("--force", action="store_true", help="rebuild the default image even if a current one is cached")
    build.add_argument("--shares", action="store_true",
                       help="also build the image VMs with shared folders boot (Debian's generic kernel, which has 9p)")
    build.set_defaults(handler=lambda args: _image_build(args.force, args.base, args.package, shares=args.shares))
    info = image_sub.add_parser("info", help="show the cached images' paths, sizes and versions, and the accelerator")
    info.set_defaults(handler=lambda args: _image_info())
    oci.register(image_sub)  # pull, import, list, rm, prune (and --templates), export

    vm = sub.add_parser("vm", help="run a one-off VM of the default guest")
    vm_sub = vm.add_subparsers(dest="vm_command", metavar="ACTION", required=True)
    run = vm_sub.add_parser(
        "run", help="boot a VM, run CMD in it, print its output, exit with its status",
        description="Without --sandbox CMD runs in the busybox guest's shell on the serial console (stdout and "
                    "stderr arrive mixed). With --sandbox it runs in a Debian sandbox through the agent: "
                    "stdout and stderr apart, as bytes; status 128+N after signal N, 124 after --timeout. "
                    "A --share's TARGET is a 9p tag the busybox guest mounts itself (mount -t 9p -o trans=virtio "
                    "TAG /mnt) or, with --sandbox, the absolute guest path it is mounted at.",
    )
    _add_shape(run, memory=None)
    run.add_argument("--sandbox", action="store_true",
                     help="a Debian sandbox (python3 and --package names) run through the agent")
    run.add_argument("-p", "--package", action="append", default=[], metavar="NAME",
                     help="with --sandbox: a Debian package to add to the sandbox image (repeatable)")
    add_device_args(run, "TARGET")
    run.add_argument("--timeout", type=float, default=300.0, help="seconds CMD may run (default 300)")
    run.add_argument("-v", "--verbose", action="store_true", help="say which accelerator runs the VM")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command to run in the guest")
    run.set_defaults(handler=_vm_run)
    console = vm_sub.add_parser("console", help="attach this terminal to a fresh VM's console (Ctrl-] detaches)")
    _add_shape(console)
    add_device_args(console, "TAG")
    console.set_defaults(handler=_vm_console)


def _add_shape(parser: argparse.ArgumentParser, memory: int | None = 256) -> None:
    parser.add_argument("--cpus", type=int, default=1, help="virtual CPUs (default 1)")
    default = f"{memory}" if memory is not None else f"256, a sandbox {SANDBOX_MEMORY_MB}"
    parser.add_argument("--memory", type=int, default=memory, metavar="MB", help=f"guest memory in MiB (default {default})")


def _image_build(force: bool, base: str | None = None, packages: list[str] | None = None, *, shares: bool = False) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    if packages and base is None:
        raise engine.ConfigError("--package needs a sandbox base: capsa-tui image build debian -p NAME")
    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("guest image", total=1.0)

        def report(step: str, fraction: float) -> None:
            bar.update(task, description=step, completed=fraction)

        image = engine.build_image(force=force, progress=report)
        shares_image = None
        if shares:
            task = bar.add_task("guest image for shared folders", total=1.0)
            shares_image = engine.build_image(force=force, progress=report, flavour="generic")
        sandbox = None
        if base is not None:
            task = bar.add_task("sandbox image", total=1.0)
            sandbox = engine.sandbox_image(base, packages or (), progress=report)
    print(f"kernel {image.kernel}\ninitrd {image.initrd}")
    if shares_image is not None:
        print(f"kernel for shares {shares_image.kernel}\ninitrd for shares {shares_image.initrd}")
    if sandbox is not None:
        print(f"sandbox {sandbox.rootfs} ({', '.join(sandbox.packages)})")
    return 0


def _image_info() -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in engine.image_info().items():
        table.add_row(f"[bold]{key}[/]", value)
    for sandbox in engine.sandbox_images():
        table.add_row(f"[bold]sandbox {sandbox['base']}[/]",
                      f"{sandbox['packages']}: {sandbox['rootfs']} ({sandbox['size']}, built {sandbox['built_at']})")
    table.add_row("[bold]accelerator[/]", engine.choose_accelerator().describe())
    Console().print(table)
    return 0


def _builder(args: argparse.Namespace) -> engine.VmBuilder:
    builder = engine.vm(engine.default_boot()).cpus(args.cpus).memory_mb(args.memory).console_enabled()
    return apply_devices(builder, args)


async def _vm_run(args: argparse.Namespace) -> int:
    command = command_words(list(args.cmd))
    if command is None:
        print("capsa-tui vm run: give the command after --, e.g. capsa-tui vm run -- uname -a", file=sys.stderr)
        return 2
    if args.sandbox:
        args.memory = args.memory if args.memory is not None else SANDBOX_MEMORY_MB
        return emit(await run_in_cold_sandbox(args, command))
    if args.package:
        raise engine.ConfigError("--package needs --sandbox: capsa-tui vm run --sandbox -p NAME -- CMD")
    args.memory = args.memory if args.memory is not None else 256
    async with await _builder(args).build() as vm:
        if args.verbose:
            print(f"capsa-tui: {vm.accel.describe()}", file=sys.stderr)
        console = await vm.console()
        result = await console.run(command, timeout=args.timeout)
        sys.stdout.write(result.output)
        sys.stdout.flush()
        return result.exit_code


async def _vm_console(args: argparse.Namespace) -> int:
    async with await _builder(args).build() as vm:
        print(
            f"capsa-tui: VM {vm.pid} on {vm.accel.describe()}\r\n"
            "capsa-tui: Ctrl-] detaches and stops the VM\r",
            file=sys.stderr,
        )
        await attach_terminal(await vm.console(), resize=vm.set_console_size)
    print(f"\r\ncapsa-tui: VM stopped ({vm.status()})", file=sys.stderr)
    return 0
