"""``capsa-tui context ...``: name the hosts whose pool services the app and the CLI talk to.

``add NAME HOST`` saves one (``ssh://user@box[:port]``, ``unix:///path`` or ``local``), ``use NAME``
makes it the one used when no ``--host`` is given (``use local``: this host again), ``list`` shows
them with the current one starred, ``rm NAME`` forgets one. They live in ``contexts.yaml`` beside
the user profiles folder (:mod:`capsatui.contexts`).
"""
from __future__ import annotations

import argparse
import json
import os

from capsatui import contexts


def register(sub: argparse._SubParsersAction) -> None:
    context = sub.add_parser("context", help="name remote hosts running `capsa-tui serve` and choose one")
    actions = context.add_subparsers(dest="context_command", metavar="ACTION", required=True)
    add = actions.add_parser("add", help="save a host under a name")
    add.add_argument("name", metavar="NAME", help="lower-case letters, digits, '-' and '_' (at most 32)")
    add.add_argument("host", metavar="HOST", help="ssh://user@host[:port], unix:///path/to/pool.sock or local")
    add.add_argument("--command", metavar="CMD", default=None,
                     help="the program to run on an ssh host (default: capsa-tui on its PATH)")
    add.add_argument("--socket", metavar="PATH", default=None, help="the service's socket on that host")
    add.add_argument("--use", action="store_true", help="make it the current context too")
    add.set_defaults(handler=_add)
    use = actions.add_parser("use", help="use this context when no --host is given ('local': this host)")
    use.add_argument("name", metavar="NAME")
    use.set_defaults(handler=_use)
    show = actions.add_parser("list", help="list the contexts; the current one is marked *")
    show.add_argument("--json", action="store_true", help="print them as JSON")
    show.set_defaults(handler=_list)
    rm = actions.add_parser("rm", help="forget a context")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(handler=_rm)


def _add(args: argparse.Namespace) -> int:
    context = contexts.Context(args.name, args.host, args.command, args.socket)
    file = contexts.add_context(context, use=args.use)
    print(f"added context {context.name!r} ({context.host}) to {file.path}")
    if args.use:
        print(f"current context: {context.name}")
    return 0


def _use(args: argparse.Namespace) -> int:
    contexts.use_context(args.name)
    print(f"current context: {args.name}" + (" (this host)" if args.name == contexts.LOCAL else ""))
    _warn_env_override()
    return 0


def _rm(args: argparse.Namespace) -> int:
    was_current = contexts.remove_context(args.name)
    print(f"removed context {args.name!r}")
    if was_current:
        print(f"it was the current context; the current context is now {contexts.LOCAL} (this host)")
    return 0


def _warn_env_override() -> None:
    env = os.environ.get(contexts.HOST_ENV, "").strip()
    if env:
        print(f"note: ${contexts.HOST_ENV}={env} is set and overrides the current context")


def _list(args: argparse.Namespace) -> int:
    file = contexts.load_contexts()
    env = os.environ.get(contexts.HOST_ENV, "").strip() or None
    current = file.current or contexts.LOCAL
    rows = [contexts.LOCAL_CONTEXT, *(file.contexts[name] for name in sorted(file.contexts))]
    if args.json:
        listing = {
            "file": str(file.path),
            "current": current,
            "env_override": env,
            "contexts": [{**c.to_dict(), "current": c.name == current} for c in rows],
        }
        print(json.dumps(listing, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    # The optional columns only when some context sets them: most lists are names and hosts.
    optional = [key for key in ("command", "socket") if any(getattr(c, key) for c in rows)]
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("", "name", "host", *optional):
        table.add_column(column, no_wrap=True)
    for context in rows:
        host = "this host" if context.is_local else context.host
        table.add_row("*" if context.name == current else "", context.name, host,
                      *(getattr(context, key) or "" for key in optional))
    Console().print(table)
    if env:
        print(f"${contexts.HOST_ENV}={env} is set: it overrides the current context ({current})")
    print(f"contexts file: {file.path}")  # plain print: a path must never be wrapped
    return 0
