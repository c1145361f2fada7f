"""The search syntax the console's prompts take: ``/regex/`` is a regular expression, anything else
plain text; and finding a pattern in numbered lines of text."""
from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["Match", "as_pattern", "find", "parse_search"]

Match = tuple[int, int, int]  # (line number, start column, end column)


def parse_search(text: str) -> str | re.Pattern[str]:
    """``/x/`` (with something between the slashes) as the compiled regex ``x``, else ``text``.

    Raises ``re.error`` for a bad regex."""
    if len(text) > 2 and text.startswith("/") and text.endswith("/"):
        return re.compile(text[1:-1])
    return text


def as_pattern(what: str | re.Pattern[str]) -> re.Pattern[str]:
    """A pattern that finds ``what``: a regex as it is, text literally."""
    return what if isinstance(what, re.Pattern) else re.compile(re.escape(what))


def find(pattern: re.Pattern[str], lines: Iterable[tuple[int, str]]) -> list[Match]:
    """Every non-empty match of ``pattern`` in ``(number, text)`` lines, in order."""
    return [(n, m.start(), m.end()) for n, text in lines for m in pattern.finditer(text) if m.end() > m.start()]
