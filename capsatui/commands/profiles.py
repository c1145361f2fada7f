"""``capsa-tui profiles ...``: list the pool profiles and check profile files.

Both report every error of every bad file at once (``file:line: field: expected X, found Y``)
and exit with status 1 when there is one, so they fit in scripts and CI.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import engine


def register(sub: argparse._SubParsersAction) -> None:
    profiles = sub.add_parser("profiles", help="list and check pool profiles (YAML files)")
    profiles_sub = profiles.add_subparsers(dest="profiles_command", metavar="ACTION", required=True)
    show = profiles_sub.add_parser(
        "list", help="list the bundled and your own profiles (yours override bundled ones of the same name)"
    )
    show.add_argument("--json", action="store_true", help="print the profiles as JSON")
    show.set_defaults(handler=_list)
    check = profiles_sub.add_parser("check", help="validate profile files and print every error (exit 1 if any)")
    check.add_argument("files", nargs="+", metavar="FILE", help="profile YAML files")
    check.set_defaults(handler=_check)


def _list(args: argparse.Namespace) -> int:
    try:
        profiles, errors = engine.load_profiles(), []
    except engine.ProfileError as err:
        # Show what did load: one bad file must not hide the good profiles.
        profiles, errors = err.profiles, err.errors
    if args.json:
        print(json.dumps([profile.to_dict() for profile in profiles], indent=2))
    else:
        _print_table(profiles)
    if errors:
        print(f"capsa-tui: some profile files have errors ({len(errors)}):", file=sys.stderr)
        for issue in errors:
            print(issue, file=sys.stderr)
        return 1
    return 0


def _print_table(profiles: list[engine.Profile]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("name", "kind", "source", "cpus", "memory", "pool", "boot", "description"):
        table.add_column(column, no_wrap=column != "description")
    for p in profiles:
        if p.kind == "sandbox":
            boot = p.describe_boot()
        else:
            boot = "default" if p.boot.kind == "default" else Path(str(p.boot.kernel)).name
        boot += f", login {p.login.user}" if p.login else ""
        pool = f"{p.size} (max {p.max_size})"
        table.add_row(p.name, p.kind, p.source, str(p.cpus), f"{p.memory_mb} MB", pool, boot, p.description)
    Console().print(table)
    for source, folder in engine.profile_dirs():
        print(f"{source} profiles: {folder}")  # plain print: a path must never be wrapped


def _check(args: argparse.Namespace) -> int:
    bad = 0
    for file in args.files:
        try:
            engine.load_profile(file)
        except engine.ProfileError as err:
            bad += 1
            for issue in err.errors:
                print(issue)
        else:
            print(f"{file}: ok")
    return 1 if bad else 0
