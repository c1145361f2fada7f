"""``capsa-tui pool ...`` and ``capsa-tui run``: the warm pools of a ``capsa-tui serve``.

``pool status`` and ``pool attach`` talk to a serve (``capsatui.commands.serve``); ``run`` takes a
warm VM from it when it holds the profile's pool and boots a cold VM in-process otherwise.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

import engine
from capsatui.attach import attach_terminal
from capsatui.commands.agent_exec import Outcome, emit, outcome_of, run_through_agent, timeout_outcome
from capsatui.commands.target import connect_service
from capsatui.commands.words import command_words

_READY_TIMEOUT = 120.0


def register(sub: argparse._SubParsersAction) -> None:
    pool = sub.add_parser("pool", help="inspect the pools a running 'capsa-tui serve' holds")
    pool_sub = pool.add_subparsers(dest="pool_command", metavar="ACTION", required=True)
    status = pool_sub.add_parser("status", help="each pool's VMs and counters")
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(handler=_status)
    attach = pool_sub.add_parser("attach", help="watch a pool VM's console (Ctrl-] detaches)")
    attach.add_argument("vm", metavar="VM_ID", help="a VM id from 'capsa-tui pool status'")
    attach.add_argument("--write", action="store_true", help="type into the console too")
    attach.add_argument("--from-start", action="store_true", help="show the scrollback first")
    attach.set_defaults(handler=_attach)

    run = sub.add_parser(
        "run", help="run CMD in a VM of PROFILE (warm from 'serve' if it runs), exit with its status",
        description="A VM whose guest runs the agent (a sandbox), cold or warm from 'capsa-tui serve', runs CMD "
                    "through it: stdout and stderr apart, as bytes; status 128+N after signal N, 124 after "
                    "--timeout. Other VMs run CMD in the console's shell, stdout and stderr mixed.",
    )
    run.add_argument("profile", metavar="PROFILE", help="the profile (and pool) to take the VM from")
    _add_run_options(run)
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command to run in the guest")
    run.set_defaults(handler=_run)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds CMD may run (default 300)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say whether the VM came warm from a pool")


def _split_run_words(args: argparse.Namespace) -> list[str] | None:
    """The command words; options written between PROFILE and ``--`` are applied to ``args``.

    argparse's REMAINDER takes everything after PROFILE, options included (and drops a ``--``
    that directly follows PROFILE), so leading options are parsed here again.
    """
    words = list(args.cmd)
    if not words or not words[0].startswith("-") or words[0] == "--":
        return words
    if "--" not in words:
        return None
    cut = words.index("--")
    options = argparse.ArgumentParser(prog="capsa-tui run", add_help=False)
    _add_run_options(options)
    options.set_defaults(timeout=args.timeout, verbose=args.verbose)
    options.parse_args(words[:cut], namespace=args)
    return words[cut:]


def _say(text: str) -> None:
    print(f"capsa-tui: {text}", file=sys.stderr, flush=True)


# -- pool status ---------------------------------------------------------------------------------


async def _connect(args: argparse.Namespace) -> engine.ServiceClient | None:
    try:
        return await connect_service(args)
    except engine.ServiceUnavailable as err:
        _say(f"{err}; start one with 'capsa-tui serve'")
        return None


async def _status(args: argparse.Namespace) -> int:
    client = await _connect(args)
    if client is None:
        return 1
    async with client:
        pools = await client.status()
    if args.json:
        print(json.dumps({"socket": client.where, "host": client.host, "pools": pools}, indent=2))
    else:
        _print_status(f"{client.where} ({client.host})", pools)
    return 0


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def _print_status(socket_path: str, pools: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Console(width=None if sys.stdout.isatty() else 160)
    out.print(f"capsa-tui serve on {socket_path}")
    if not pools:
        out.print("no pools yet (they may still be booting)")
        return
    columns = ["pool", "idle", "booting", "reserved", "max", "created", "released", "evicted",
               "failed", "misses", "boot p50", "boot p95", "snapshot", "fallbacks", "last error"]
    table = Table(*columns)
    for p in pools:
        counts = [str(p[key]) for key in ("idle", "booting", "reserved", "max_size", "created",
                                          "released", "evicted", "failed", "misses")]
        snapshot = p.get("snapshot", "off")
        if p.get("snapshot_error"):
            snapshot += f": {p['snapshot_error']}"
        table.add_row(p["name"], *counts, _seconds(p["boot_p50_s"]), _seconds(p["boot_p95_s"]),
                      snapshot, str(p.get("fallbacks", 0)), p["last_error"] or "-")
    out.print(table)
    members = Table("vm", "pool", "state", "pid", "age")
    for p in pools:
        for m in p.get("members", []):
            members.add_row(m["id"], p["name"], m["state"], str(m["pid"] or "-"), f"{m['age_s']:.0f}s")
    if members.row_count:
        out.print(members)


# -- pool attach ---------------------------------------------------------------------------------


async def _attach(args: argparse.Namespace) -> int:
    client = await _connect(args)
    if client is None:
        return 1
    async with client:
        console = await engine.remote_console(client, args.vm, from_start=args.from_start, write=args.write)
        mode = "typing goes to the VM" if args.write else "read-only (--write to type)"
        _say(f"watching {args.vm}, {mode}; Ctrl-] detaches\r")
        try:
            resize = (lambda cols, rows: client.set_console_size(args.vm, cols, rows)) if args.write else None
            await attach_terminal(console, write=args.write, resize=resize)
        finally:
            reason = console.close_reason or "detached"
            await console.stream.close()  # detaches
    _say(f"\r\ncapsa-tui: {reason}\r")
    return 0


# -- run -----------------------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    words = _split_run_words(args)
    command = command_words(words) if words is not None else None
    if command is None:
        print("capsa-tui run: give the command after --, e.g. capsa-tui run default -v -- uname -a", file=sys.stderr)
        return 2
    result = await _run_warm(args, command)
    if isinstance(result, Outcome):
        return emit(result)
    if result is None:
        cold = await _run_cold(args, command)
        if isinstance(cold, Outcome):
            return emit(cold)
        result = cold
    sys.stdout.write(result.output)
    sys.stdout.flush()
    return result.exit_code


async def _run_warm(args: argparse.Namespace, command: str) -> engine.CommandResult | Outcome | None:
    """The command's result from a serve's pool, or None when no serve holds that pool.

    Through the VM's agent when it has one (stdout and stderr apart), else its console's shell.
    """
    try:
        client = await connect_service(args)
    except engine.ServiceUnavailable:
        return None
    async with client:
        if args.profile not in client.pools:
            if args.verbose:
                _say(f"the serve on {client.where} holds no pool {args.profile!r}; booting a cold VM")
            return None
        vm_id = await client.reserve(args.profile, timeout=args.timeout)
        try:
            try:
                result = await client.agent_exec(vm_id, command, timeout=args.timeout)
            except engine.ExecTimeout as err:
                return timeout_outcome(err, args.timeout)
            except engine.ServiceError as err:
                if err.kind != "AgentUnavailable":
                    raise
            else:
                if args.verbose:
                    _say(f"a warm VM of pool {args.profile!r} from the serve on {client.where}, through its agent")
                return outcome_of(result)
            if args.verbose:
                _say(f"a warm VM of pool {args.profile!r} from the serve on {client.where}, through its console")
            return await client.exec(vm_id, command, timeout=args.timeout)
        finally:
            await client.release(vm_id)


async def _run_cold(args: argparse.Namespace, command: str) -> engine.CommandResult | Outcome:
    profile = engine.find_profile(args.profile)
    async with await profile.vm_builder().console_enabled().build() as vm:
        if args.verbose:
            path = "through its agent" if vm.spec.boot.has_agent else "through its console"
            _say(f"a cold VM of profile {profile.name!r} on {vm.accel.describe()}, {path}")
        return await run_on_vm(vm, command, args.timeout)


async def run_on_vm(vm: engine.VmHandle, command: str, timeout: float) -> engine.CommandResult | Outcome:
    """Run ``command`` the best way ``vm`` offers: the agent's outcome (streams apart) when the
    guest runs the agent, else the console shell's result (streams mixed)."""
    if vm.spec.boot.has_agent:
        agent = await vm.agent(_READY_TIMEOUT)  # the agent is up before the console's marker
        return await run_through_agent(agent, command, timeout)
    await vm.wait_ready(_READY_TIMEOUT)
    console = await vm.shell()
    return await console.run(command, timeout=timeout)
