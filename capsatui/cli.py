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
from capsatui.commands import pool, profiles, vm

COMMAND_MODULES = [vm, profiles, pool]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capsa-tui",
        description="A terminal workstation for running untrusted or throwaway code in Linux microVMs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
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
