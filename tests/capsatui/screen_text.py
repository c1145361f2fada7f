"""What a Textual app's screen shows, read from its exported screenshot, for tests to wait on.

A ``DataTable`` measures its columns on idle, after rows arrive: a frame drawn before that shows
every column at its label's width. A test about the picture waits on the picture itself.
"""
from __future__ import annotations

import html
import re
import time
from typing import Any

from rich.cells import cell_len
from textual.app import App


def shown(app: App[Any]) -> str:
    """The text on the app's screen as it is drawn now, one line per terminal row.

    Read from the SVG screenshot: each run of text there names its row (``terminal-…-line-N``) and
    starts at ``x``, in cells of ``textLength / cell_len(text)`` pixels; blanks are not drawn.
    """
    svg = app.export_screenshot()
    rows: dict[int, list[str]] = {}
    for x, length, row, body in re.findall(
            r'<text[^>]*\bx="([\d.]+)"[^>]*\btextLength="([\d.]+)"[^>]*terminal-(?:\d+-)?line-(\d+)[^>]*>(.*?)</text>', svg, re.S):
        text = html.unescape(re.sub(r"<[^>]+>", "", body)).replace("\xa0", " ")
        if not cell_len(text) or float(length) == 0:
            continue
        column = round(float(x) / (float(length) / cell_len(text)))
        line = rows.setdefault(int(row), [])
        line.extend(" " * (column - len(line)))
        line[column:column + len(text)] = text
    return "\n".join("".join(rows.get(n, [])).rstrip() for n in range(max(rows, default=-1) + 1))


async def wait_shown(pilot: Any, *patterns: str, timeout: float = 10.0) -> None:
    """Wait until every regular expression in ``patterns`` matches a line of the drawn screen."""
    compiled = [re.compile(p, re.M) for p in patterns]
    deadline = time.monotonic() + timeout
    while True:
        text = shown(pilot.app)
        missing = [p.pattern for p in compiled if not p.search(text)]
        if not missing:
            return
        assert time.monotonic() < deadline, f"never drawn: {missing}\n--- the screen ---\n{text}"
        await pilot.pause(0.05)
