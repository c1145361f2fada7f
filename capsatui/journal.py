"""Logs of ``capsa-tui serve`` in the journal's style: one event per line, in logfmt.

    engine.log_event(log, logging.INFO, "pool_started", pool="default", size=4)
    # 2024-05-01T12:00:00.123+00:00 level=info event=pool_started pool=default size=4 logger=capsatui.serve

Under systemd (``$JOURNAL_STREAM`` is set when stderr is connected to the journal) each line
starts with the sd-daemon priority instead (``<6>event=...``, see ``man sd-daemon``) and has no
timestamp, since the journal records its own and reads the priority from that prefix. Values
with spaces, quotes, ``=`` or control characters are quoted with backslash escapes, so one event
is always one line and a ``grep``/``journalctl -g`` of ``key=value`` finds it.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from datetime import datetime, timezone
from typing import Any

JOURNAL_ENV = "JOURNAL_STREAM"
# where engine.log_event puts the event and its fields in the record (engine/logevent.py)
_EVENT_ATTR = "capsa_event"
_FIELDS_ATTR = "capsa_fields"
_PLAIN = re.compile(r"[^\s\"'=\\\x00-\x1f\x7f]+")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_.-]")
# sd-daemon(3): the kernel's syslog levels, which the journal reads from the line's prefix.
_PRIORITY = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def priority(levelno: int) -> int:
    """The sd-daemon priority of a logging level: 3 error (and critical), 4 warning, 6 info, 7 debug."""
    for level, prio in _PRIORITY:
        if levelno >= level:
            return prio
    return 7


def format_value(value: object) -> str:
    """One logfmt value: bare when it is plain, else in double quotes with escapes (never a newline)."""
    text = "" if value is None else str(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    if text and _PLAIN.fullmatch(text):
        return text
    escaped = "".join(_ESCAPES.get(ch, ch if ch.isprintable() else _escape_unprintable(ch)) for ch in text)
    return f'"{escaped}"'


def _escape_unprintable(ch: str) -> str:
    # Line and paragraph separators too: a reader splitting on them must still see one line.
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def format_key(key: str) -> str:
    """A logfmt key: characters that would break ``key=value`` parsing become ``_``."""
    return _KEY_BAD.sub("_", key) or "_"


class LogfmtFormatter(logging.Formatter):
    """``TIME level=... event=... key=value ... logger=... [error="..."]``; for the journal ``<N>`` and no time or level."""

    def __init__(self, journal: bool | None = None) -> None:
        super().__init__()
        # Decided once: whether stderr is the journal does not change while we run.
        self.journal = bool(os.environ.get(JOURNAL_ENV)) if journal is None else journal

    def format(self, record: logging.LogRecord) -> str:
        pairs: list[tuple[str, object]] = []
        if not self.journal:
            pairs.append(("level", record.levelname.lower()))  # the journal has the priority instead
        event = getattr(record, _EVENT_ATTR, None)
        if event is not None:
            pairs.append(("event", event))
        else:
            pairs.append(("msg", record.getMessage()))  # a plain logging call from any library
        fields: dict[str, Any] = getattr(record, _FIELDS_ATTR, None) or {}
        pairs.extend(fields.items())
        pairs.append(("logger", record.name))  # after the fields: the event is what a reader scans for
        if record.exc_info:
            pairs.append(("error", self.formatException(record.exc_info)))  # escaped: still one line
        elif record.exc_text:
            pairs.append(("error", record.exc_text))
        if record.stack_info:
            pairs.append(("stack", record.stack_info))
        line = " ".join(f"{format_key(key)}={format_value(value)}" for key, value in pairs)
        if self.journal:
            return f"<{priority(record.levelno)}>{line}"
        stamp = datetime.fromtimestamp(record.created, timezone.utc).astimezone().isoformat(timespec="milliseconds")
        return f"{stamp} {line}"


def setup_logging(verbose: bool = False) -> None:
    """Send the root logger's records to stderr as logfmt lines (INFO, or DEBUG when ``verbose``).

    Handlers set before (an earlier call, a test's) are replaced, so calling it twice does not
    print every line twice.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
