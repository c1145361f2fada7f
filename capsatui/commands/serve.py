"""``capsa-tui serve``: keep pools warm and serve them on a private Unix socket (or relay to it).

    capsa-tui serve                          # the default profile's pool, at its size
    capsa-tui serve --warm default=4,sandbox=2
    capsa-tui serve --stdio                  # what `--host ssh://...` runs on the other host
    capsa-tui serve --install-unit           # a systemd user unit that runs this serve

The serve's pools are a registry of every profile (``engine.PoolRegistry``): the ``--warm`` ones
(or the PROFILEs named, at their profile's size) boot at start; any other profile's pool starts
when a client first reserves from it or starts it (``--no-lazy`` turns that off). A client whose
link drops keeps its VMs for ``--grace`` seconds to reconnect. The serve logs one line an event
(``capsatui.journal``: logfmt, with sd-daemon priorities under systemd) and runs until SIGINT or
SIGTERM, closing every pool it started.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import engine
from capsatui.journal import setup_logging

log = logging.getLogger("capsatui.serve")

DEFAULT_GRACE = 60.0
UNIT_ENVIRONMENT = ("CAPSA_CONFIG_DIR", "CAPSA_SOCKET", "CAPSA_ACCEL", "CAPSA_OCI_CACHE")


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve", help="keep pools of VMs warm and serve them on a Unix socket",
        description="Serve every profile's pool on a private Unix socket: the --warm ones (or the PROFILEs "
                    "named) boot now, the others when a client first asks for them.")
    serve.add_argument("profiles", nargs="*", metavar="PROFILE",
                       help="profiles whose pools boot now, at their profile's size (default: default)")
    serve.add_argument("--warm", metavar="NAME=N[,NAME=N]", type=warm_counts, default=None,
                       help="pools to boot now with N VMs warm each, e.g. default=4,sandbox=2")
    serve.add_argument("--grace", type=float, default=DEFAULT_GRACE, metavar="SECONDS",
                       help=f"how long a client whose link dropped keeps its VMs (default {DEFAULT_GRACE:g})")
    serve.add_argument("--no-lazy", dest="lazy", action="store_false",
                       help="serve only the pools started here: no pool starts on a client's first request")
    serve.add_argument("--socket", type=Path, default=None, metavar="PATH",
                       help="the socket to listen on (or, with --stdio, to relay to); default: $CAPSA_SOCKET or "
                            "the user runtime folder's")
    serve.add_argument("--stdio", action="store_true",
                       help="relay stdin and stdout to the serve running on this host (what --host ssh://... runs)")
    serve.add_argument("--install-unit", action="store_true",
                       help="write a systemd user unit that runs this serve (with these options), then exit")
    serve.add_argument("--force", action="store_true", help="with --install-unit: replace a unit we did not write")
    serve.add_argument("-v", "--verbose", action="store_true", help="log debug events too")
    serve.set_defaults(handler=_serve)


def warm_counts(text: str) -> dict[str, int]:
    """``default=4,sandbox=2`` -> {"default": 4, "sandbox": 2}; argparse shows the error."""
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.partition("=")
        if not sep or not name.strip():
            raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=N, e.g. default=4")
        try:
            value = int(count)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: the count must be a whole number, not {count!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{item!r}: the count must be 0 or more")
        if name.strip() in counts:
            raise argparse.ArgumentTypeError(f"{name.strip()!r} is named twice")
        counts[name.strip()] = value
    if not counts:
        raise argparse.ArgumentTypeError("expected NAME=N[,NAME=N], e.g. default=4,sandbox=2")
    return counts


def _warm_plan(args: argparse.Namespace) -> dict[str, int | None]:
    """Which pools boot now, and how many VMs each (None: the profile's size)."""
    plan: dict[str, int | None] = {name: None for name in args.profiles}
    for name, count in (args.warm or {}).items():
        plan[name] = count
    return plan or {"default": None}


def _unit_argv(args: argparse.Namespace) -> list[str]:
    """This serve's own arguments, for the unit to run it again the same way."""
    argv = ["serve", *args.profiles]
    if args.warm:
        argv += ["--warm", ",".join(f"{name}={count}" for name, count in args.warm.items())]
    if args.grace != DEFAULT_GRACE:
        argv += ["--grace", f"{args.grace:g}"]
    if not args.lazy:
        argv.append("--no-lazy")
    if args.socket is not None:
        argv += ["--socket", str(args.socket.absolute())]
    if args.verbose:
        argv.append("--verbose")
    return argv


async def _serve(args: argparse.Namespace) -> int:
    if args.install_unit:
        return _install_unit(args)
    if args.stdio:
        return await engine.relay_stdio(args.socket)
    setup_logging(args.verbose)
    plan = _warm_plan(args)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    registry = engine.PoolRegistry(profiles=engine.load_profiles, lazy=args.lazy)
    try:
        await registry.reload()
        for issue in registry.broken:
            engine.log_event(log, logging.WARNING, "profile_invalid", file=issue.file, line=issue.line,
                      field=issue.field, message=issue.message)
        missing = [name for name in plan if name not in registry.names()]
        if missing:
            engine.find_profile(missing[0])  # the ConfigError that names the profile and the folders
        async with engine.PoolServer(path=args.socket, registry=registry, grace=args.grace) as server:
            engine.log_event(log, logging.INFO, "listening", socket=server.path, grace_s=args.grace, lazy=args.lazy,
                      accel=_accel())
            if await _until_stopped(_warm_pools(registry, plan), stop):
                engine.log_event(log, logging.INFO, "all_warm", pools=",".join(sorted(plan)))
                await stop.wait()
            engine.log_event(log, logging.INFO, "stopping")
    finally:
        await registry.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    engine.log_event(log, logging.INFO, "stopped")
    return 0


def _accel() -> str:
    try:
        return engine.choose_accelerator().describe()
    except engine.EngineError as err:
        return f"unusable: {err}"


def _install_unit(args: argparse.Namespace) -> int:
    from capsatui.service_unit import NEXT_STEPS, install_unit, running_command

    # the settings this shell gives capsa-tui go into the unit: systemd starts it without them
    environment = {key: os.environ[key] for key in UNIT_ENVIRONMENT if os.environ.get(key)}
    path = install_unit([*running_command(), *_unit_argv(args)], environment=environment, force=args.force)
    print(f"capsa-tui: wrote {path}; start it and follow its log with:")
    for step in NEXT_STEPS:
        print(f"  {step}")
    return 0


async def _until_stopped(work: Any, stop: asyncio.Event) -> bool:
    """Run ``work`` unless ``stop`` is set first (then cancel it); True if it finished."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
    if task.cancelled():
        return False
    task.result()  # a failed warm-up is the command's error
    return True


async def _warm_pools(registry: engine.PoolRegistry, plan: dict[str, int | None]) -> None:
    async def warm(name: str, size: int | None) -> None:
        entry = await registry.start(name, size)
        assert entry.pool is not None
        await entry.pool.wait_filled()
        if entry.error is not None:
            raise engine.PoolError(f"pool {name!r} did not start: {entry.error}")
        engine.log_event(log, logging.INFO, "pool_warm", pool=name, size=entry.pool.size, max_size=entry.pool.max_size)

    try:
        async with asyncio.TaskGroup() as group:  # one failure cancels the other warm-ups
            for name, size in plan.items():
                group.create_task(warm(name, size))
    except BaseExceptionGroup as group:
        errors = [err for err in group.exceptions if isinstance(err, engine.EngineError)]
        if errors:
            raise errors[0] from None
        raise


__all__ = ["DEFAULT_GRACE", "register", "warm_counts"]
