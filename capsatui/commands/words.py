"""The guest command line from argparse's REMAINDER words, shared by every command that runs one."""
from __future__ import annotations

import shlex


def command_words(cmd: list[str]) -> str | None:
    """The guest command line: one word passes through (a shell line), several are quoted."""
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        return None
    return cmd[0] if len(cmd) == 1 else shlex.join(cmd)


__all__ = ["command_words"]
