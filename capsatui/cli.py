"""The ``capsa-tui`` command line: guest images and one-off VMs (the app comes later).

Every sub-command is a thin shell around ``engine``'s public API; errors the engine raises on
purpose are printed as one clear message with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
from collections.abc import Sequence

import engine
from capsatui.attach import attach_terminal


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsa-tui",
        description="A terminal workstation for running untrusted or throwaway code in Linux microVMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    image = sub.add_parser("image", help="build and inspect the default guest image")
    image_sub = image.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    build = image_sub.add_parser("build", help="download Debian's cloud kernel and busybox, build the initramfs")
    build.add_argument("--force", action="store_true", help="rebuild even if a current image is cached")
    image_sub.add_parser("info", help="show the cached image's paths, sizes and versions, and the accelerator")

    vm = sub.add_parser("vm", help="run a one-off VM of the default guest")
    vm_sub = vm.add_subparsers(dest="vm_command", metavar="ACTION", required=True)
    run = vm_sub.add_parser("run", help="boot a VM, run CMD in it, print its output, exit with its status")
    _add_shape(run)
    run.add_argument("--timeout", type=float, default=300.0, help="seconds CMD may run (default 300)")
    run.add_argument("-v", "--verbose", action="store_true", help="say which accelerator runs the VM")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command to run in the guest")
    console = vm_sub.add_parser("console", help="attach this terminal to a fresh VM's console (Ctrl-] detaches)")
    _add_shape(console)
    return parser


def _add_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpus", type=int, default=1, help="virtual CPUs (default 1)")
    parser.add_argument("--memory", type=int, default=256, metavar="MB", help="guest memory in MiB (default 256)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        if args.command == "image":
            return _image_build(args.force) if args.image_command == "build" else _image_info()
        if args.vm_command == "run":
            return asyncio.run(_vm_run(args))
        return asyncio.run(_vm_console(args))
    except engine.EngineError as err:
        print(f"capsa-tui: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _image_build(force: bool) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("guest image", total=1.0)

        def report(step: str, fraction: float) -> None:
            bar.update(task, description=step, completed=fraction)

        image = engine.build_image(force=force, progress=report)
    print(f"kernel {image.kernel}\ninitrd {image.initrd}")
    return 0


def _image_info() -> int:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in engine.image_info().items():
        table.add_row(f"[bold]{key}[/]", value)
    table.add_row("[bold]accelerator[/]", engine.choose_accelerator().describe())
    Console().print(table)
    return 0


def _builder(args: argparse.Namespace) -> engine.VmBuilder:
    return engine.vm(engine.default_boot()).cpus(args.cpus).memory_mb(args.memory).console_enabled()


async def _vm_run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("capsa-tui vm run: give the command after --, e.g. capsa-tui vm run -- uname -a", file=sys.stderr)
        return 2
    async with await _builder(args).build() as vm:
        if args.verbose:
            print(f"capsa-tui: {vm.accel.describe()}", file=sys.stderr)
        console = await vm.console()
        # One argument is passed through as a shell command line; several are quoted as words.
        command = cmd[0] if len(cmd) == 1 else shlex.join(cmd)
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
        await attach_terminal(await vm.console())
    print(f"\r\ncapsa-tui: VM stopped ({vm.status()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
