"""``capsa-tui sandbox run`` and ``capsa-tui cp``: a throwaway sandbox with files in and out.

``sandbox run --in LOCAL:GUEST --out GUEST:LOCAL -- CMD`` boots a cold sandbox (a Debian
userland with the agent), copies the local files in, runs CMD through the agent, copies the
results out and exits with CMD's status: the one command a CI job or an AI agent needs.
``cp`` exists to say what it cannot do yet: the VMs of ``capsa-tui serve`` are reachable only
through their console until the service protocol carries the agent (issue 17).
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import engine
from capsatui.commands.agent_exec import Outcome, emit, run_through_agent
from capsatui.commands.devices import add_device_args, apply_devices
from capsatui.commands.words import command_words

_AGENT_TIMEOUT = 120.0  # a cold boot under emulation on a busy host, with room to spare
SANDBOX_MEMORY_MB = 512  # python3 and a workload want more than the busybox guest's 256


@dataclass(frozen=True)
class CopyIn:
    """``--in LOCAL:GUEST``: a local folder's contents (or a file, by its name) go into the guest folder."""

    local: Path
    guest: str


@dataclass(frozen=True)
class CopyOut:
    """``--out GUEST:LOCAL``: the guest folder's contents go into the local folder."""

    guest: str
    local: Path


def parse_in(spec: str) -> CopyIn:
    """``LOCAL:GUEST``, split at the last colon (the guest side is an absolute path)."""
    local, sep, guest = spec.rpartition(":")
    if not sep or not local or not guest.startswith("/"):
        raise engine.ConfigError(f"--in {spec!r}: expected LOCAL:GUEST with an absolute guest folder, e.g. ./src:/work")
    path = Path(local)
    if not path.exists():
        raise engine.ConfigError(f"--in {spec!r}: no local file or folder {path}")
    return CopyIn(path, guest)


def parse_out(spec: str) -> CopyOut:
    """``GUEST:LOCAL``, split at the first colon (the guest side is an absolute path)."""
    guest, sep, local = spec.partition(":")
    if not sep or not local or not guest.startswith("/"):
        raise engine.ConfigError(f"--out {spec!r}: expected GUEST:LOCAL with an absolute guest folder, e.g. /work/out:./out")
    return CopyOut(guest, Path(local))


def register(sub: argparse._SubParsersAction) -> None:
    sandbox = sub.add_parser("sandbox", help="a throwaway sandbox (Debian + python3, the agent): files in, CMD, files out")
    sandbox_sub = sandbox.add_subparsers(dest="sandbox_command", metavar="ACTION", required=True)
    run = sandbox_sub.add_parser(
        "run", help="boot a cold sandbox, copy --in files, run CMD through the agent, copy --out files, exit with CMD's status",
        description="CMD's stdout and stderr come back apart, as bytes; the status is CMD's own, 128+N after "
                    "signal N, 124 after --timeout. --out copies run even when CMD failed.",
    )
    run.add_argument("--in", dest="copy_in", action="append", default=[], metavar="LOCAL:GUEST",
                     help="first copy a local folder's contents (or a file, as GUEST/NAME) into guest folder GUEST, "
                          "made if missing (repeatable)")
    run.add_argument("--out", dest="copy_out", action="append", default=[], metavar="GUEST:LOCAL",
                     help="copy guest folder GUEST's contents into local folder LOCAL after CMD (repeatable)")
    add_sandbox_shape(run)
    add_device_args(run, "/GUEST")
    run.add_argument("--timeout", type=float, default=300.0, help="seconds CMD may run (default 300)")
    run.add_argument("-i", "--stdin", action="store_true",
                     help="read this command's stdin to its end and give it to CMD as its stdin")
    run.add_argument("-v", "--verbose", action="store_true", help="say how long each step took")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command to run in the guest")
    run.set_defaults(handler=_sandbox_run)

    cp = sub.add_parser("cp", help="copy files to or from a VM of 'capsa-tui serve' (not yet: see 'sandbox run --in/--out')")
    cp.add_argument("paths", nargs="*", metavar="SRC DST", help="VM_ID:PATH or a local path")
    cp.set_defaults(handler=_cp)


def add_sandbox_shape(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--package", action="append", default=[], metavar="NAME",
                        help="a Debian package the sandbox image adds to python3 (repeatable; built once, cached)")
    parser.add_argument("--oci", metavar="IMAGE",
                        help="run in this OCI image's root (python:3.11, REGISTRY/NAME@sha256:..., docker-archive:FILE, "
                             "oci:DIR:TAG; pulled on first use); CMD words replace its Cmd, as with docker run")
    parser.add_argument("--tls-verify", choices=("true", "false"), default=None,
                        help="with --oci: false allows a plain-HTTP or self-signed registry")
    parser.add_argument("--cpus", type=int, default=1, help="virtual CPUs (default 1)")
    parser.add_argument("--memory", type=int, default=SANDBOX_MEMORY_MB, metavar="MB",
                        help=f"guest memory in MiB (default {SANDBOX_MEMORY_MB})")


def _say(text: str) -> None:
    print(f"capsa-tui: {text}", file=sys.stderr, flush=True)


def sandbox_builder(packages: Sequence[str], cpus: int, memory_mb: int) -> engine.SandboxBuilder:
    """A cold sandbox of the Debian image with ``packages`` (the image is built on first use)."""
    steps: list[str] = []

    def progress(step: str, fraction: float) -> None:
        # A build reports its steps: without a word here a first run looks hung for minutes. A
        # cached image reports only that it is ready, which is not news.
        if not steps and fraction >= 1.0:
            return
        if not steps or steps[-1] != step:
            steps.append(step)
            _say(f"building the sandbox image: {step}")

    return engine.sandbox().image("debian", packages).cpus(cpus).memory_mb(memory_mb).progress(progress)


def _words(args: argparse.Namespace, usage: str) -> str | None:
    command = command_words(list(args.cmd))
    if command is None:
        print(f"{usage}: give the command after --", file=sys.stderr)
    return command


def _oci_args(args: argparse.Namespace) -> list[str] | None:
    """With --oci, the CMD words (argv, no shell: the image may have none), or None for its Cmd."""
    words = list(args.cmd)
    if words and words[0] == "--":
        words = words[1:]
    return words or None


async def _sandbox_run(args: argparse.Namespace) -> int:
    command: str | list[str] | None
    oci = getattr(args, "oci", None)
    command = "" if oci else _words(args, "capsa-tui sandbox run")
    if command is None:
        return 2
    copies_in = [parse_in(spec) for spec in args.copy_in]  # bad specs fail before any boot
    copies_out = [parse_out(spec) for spec in args.copy_out]
    # Read before the boot: a producer on the pipe need not wait for the guest.
    stdin = sys.stdin.buffer.read() if args.stdin else b""
    started = time.monotonic()
    builder = apply_devices(sandbox_builder(args.package, args.cpus, args.memory), args)
    if oci:
        builder = builder.oci(oci, _oci_args(args), tls_verify=None if args.tls_verify is None else args.tls_verify == "true")
    async with await builder.build() as vm:
        agent = await vm.agent(_AGENT_TIMEOUT)
        if vm.spec.workload is not None:
            command = list(vm.spec.workload.command)
            if not command:
                raise engine.ConfigError(f"the image {oci} has no Entrypoint or Cmd: give the command after --")
        if args.verbose:
            _say(f"sandbox agent ready after {time.monotonic() - started:.2f} s on {vm.accel.describe()}")
        for copy in copies_in:
            mark = time.monotonic()
            await agent.copy_in(copy.local, copy.guest)
            if args.verbose:
                _say(f"copied {copy.local} into {copy.guest} in {time.monotonic() - mark:.2f} s")
        mark = time.monotonic()
        outcome = await run_through_agent(agent, command, args.timeout, stdin)
        if args.verbose:
            _say(f"the command ended with status {outcome.status} after {time.monotonic() - mark:.2f} s")
        failed_out = await _copy_out(agent, copies_out, args.verbose)
    status = emit(outcome)
    if failed_out:
        return status or 2  # CMD's own failure says more than the missing results
    return status


async def _copy_out(agent: engine.Agent, copies: Sequence[CopyOut], verbose: bool) -> bool:
    """Copy every --out (even after CMD failed: its logs are what the user wants); True if one failed."""
    failed = False
    for copy in copies:
        mark = time.monotonic()
        try:
            await agent.copy_out(copy.guest, copy.local)
        except engine.GuestFileError as err:
            _say(f"error: --out {copy.guest}:{copy.local}: {err}")
            failed = True
        else:
            if verbose:
                _say(f"copied {copy.guest} out to {copy.local} in {time.monotonic() - mark:.2f} s")
    return failed


async def run_in_cold_sandbox(args: argparse.Namespace, command: str) -> Outcome:
    """``vm run --sandbox``: boot, run ``command`` through the agent, stop."""
    builder = apply_devices(sandbox_builder(args.package, args.cpus, args.memory), args)
    async with await builder.build() as vm:
        agent = await vm.agent(_AGENT_TIMEOUT)
        if args.verbose:
            _say(f"a cold sandbox on {vm.accel.describe()}")
        return await run_through_agent(agent, command, args.timeout)


CP_GAP = ("copying files to or from a VM of 'capsa-tui serve' is not possible yet: the service protocol "
          "reaches a served VM's console only, not its agent (issue 17). For files in and out of a fresh "
          "sandbox use: capsa-tui sandbox run --in LOCAL:GUEST --out GUEST:LOCAL -- CMD")


def _cp(args: argparse.Namespace) -> int:
    raise engine.AgentUnavailable(CP_GAP)


__all__ = ["CP_GAP", "CopyIn", "CopyOut", "add_sandbox_shape", "parse_in", "parse_out", "register",
           "run_in_cold_sandbox", "sandbox_builder"]
