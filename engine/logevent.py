"""log_event: a log record that is an event with fields, for logs read by machines and people.

    log_event(log, logging.INFO, "pool_started", pool="default", size=4)

The record's message is the event's name; the event and its fields travel as record attributes
(:data:`EVENT_ATTR`, :data:`FIELDS_ATTR`) through the standard ``extra``, so any formatter gets
them and ``capsa-tui serve``'s (``capsatui.journal``) writes ``event=pool_started pool=default
size=4`` on one line. The engine logs its service events this way; it configures no handler.
"""
from __future__ import annotations

import logging

EVENT_ATTR = "capsa_event"
FIELDS_ATTR = "capsa_fields"


def log_event(logger: logging.Logger, level: int, event: str, **fields: object) -> None:
    """Log ``event`` with ``fields`` (the caller's line is the record's: ``stacklevel=2``)."""
    if logger.isEnabledFor(level):
        logger.log(level, "%s", event, extra={EVENT_ATTR: event, FIELDS_ATTR: fields}, stacklevel=2)


__all__ = ["EVENT_ATTR", "FIELDS_ATTR", "log_event"]
