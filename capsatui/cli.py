"""The ``capsa-tui`` command line: dispatch to the sub-commands in ``capsatui.commands``.

Every sub-command is a thin shell around ``engine``'s public API; errors the engine raises on
purpose are printed as one clear message with exit status 2, never as a traceback.
"""
from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from collections.abc import Sequence

import engine
from capsatui.commands import context, pool, profiles, sandbox, serve, vm

COMMAND_MODULES = [vm, profiles, serve, pool, sandbox, context]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsa-tui",
        description="A terminal workstation for running untrusted or throwaway code in Linux microVMs.",
    )
    parser.add_argument("--host", action="append", metavar="HOST", default=None,
                        help="a context name or ssh://user@host, unix:///path, local; repeat for several hosts "
                             "(default: $CAPSA_HOST, else the current context)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    app = sub.add_parser("app", help="the interactive dashboard (the default when no command is given)")
    app.add_argument("--start", metavar="PROFILE[,PROFILE]", default=None,
                     help="profiles whose pools start at launch (default: default; '' starts none)")
    app.set_defaults(handler=_run_app)
    return parser


def _run_app(args: argparse.Namespace | None = None) -> int:
    # Imported here so the plain sub-commands never pay for loading Textual.
    from capsatui.app import run_app

    from capsatui.contexts import resolve_host

    hosts = resolve_host(getattr(args, "host", None))
    start = getattr(args, "start", None)
    if start is None:
        return run_app(hosts=hosts)
    return run_app([name.strip() for name in start.split(",") if name.strip()], hosts=hosts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            parser.print_help()  # no terminal to draw on (a pipe, a script): say what there is
            return 0
        handler = _run_app  # no command in a terminal: the app
    try:
        outcome = handler(args)
        if inspect.iscoroutine(outcome):
            outcome = asyncio.run(outcome)
        return int(outcome)
    except engine.EngineError as err:
        print(f"capsa-tui: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
