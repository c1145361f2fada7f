"""Serve's logs (``capsatui.journal``): one logfmt line per event, with sd-daemon priorities and no
timestamp when ``$JOURNAL_STREAM`` says stderr is the journal, an ISO timestamp otherwise."""
from __future__ import annotations

import io
import logging
import re
import sys
from collections.abc import Iterator
from datetime import datetime

import pytest

from capsatui import journal
from capsatui.journal import LogfmtFormatter, format_value, setup_logging
from engine import log_event


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, _Capture]]:
    logger = logging.getLogger("capsatui.test_journal")
    handler = _Capture()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, handler
    logger.removeHandler(handler)


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def _line(captured: tuple[logging.Logger, _Capture], formatter: LogfmtFormatter, level: int,
          event: str, **fields: object) -> str:
    logger, handler = captured
    log_event(logger, level, event, **fields)
    return formatter.format(handler.records[-1])


def test_an_event_outside_the_journal_starts_with_a_timestamp(captured: tuple[logging.Logger, _Capture]) -> None:
    line = _line(captured, LogfmtFormatter(journal=False), logging.INFO, "pool_started", pool="default", size=4)
    stamp, rest = line.split(" ", 1)
    assert datetime.fromisoformat(stamp).tzinfo is not None  # ISO 8601 with the offset
    assert rest == "level=info event=pool_started pool=default size=4 logger=capsatui.test_journal"


@pytest.mark.parametrize("level, prefix", [
    (logging.CRITICAL, "<3>"), (logging.ERROR, "<3>"), (logging.WARNING, "<4>"),
    (logging.INFO, "<6>"), (logging.DEBUG, "<7>"),
])
def test_in_the_journal_the_priority_comes_first_and_no_timestamp(
        captured: tuple[logging.Logger, _Capture], level: int, prefix: str) -> None:
    line = _line(captured, LogfmtFormatter(journal=True), level, "vm_failed", vm="vm-3")
    assert line == f"{prefix}event=vm_failed vm=vm-3 logger=capsatui.test_journal"


def test_journal_stream_decides_the_default(monkeypatch: pytest.MonkeyPatch,
                                             captured: tuple[logging.Logger, _Capture]) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert _line(captured, LogfmtFormatter(), logging.WARNING, "slow").startswith("<4>event=slow ")
    monkeypatch.delenv("JOURNAL_STREAM")
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d level=warning ",
                    _line(captured, LogfmtFormatter(), logging.WARNING, "slow"))


@pytest.mark.parametrize("value, spelled", [
    ("plain", "plain"),
    (4, "4"),
    (True, "true"),
    (None, '""'),
    ("", '""'),
    ("two words", '"two words"'),
    ('say "hi"', r'"say \"hi\""'),
    ("it's", '"it\'s"'),
    ("a=b", '"a=b"'),
    (r"C:\dir", r'"C:\\dir"'),
    ("one\ntwo\r\n", r'"one\ntwo\r\n"'),
    ("tab\there", r'"tab\there"'),
    ("bell\x07", r'"bell\x07"'),
    ("para\u2029graph", r'"para\u2029graph"'),
    ("ünïcode", "ünïcode"),
])
def test_values_are_quoted_and_escaped(value: object, spelled: str) -> None:
    assert format_value(value) == spelled


def test_a_multi_line_message_and_traceback_stay_one_line(captured: tuple[logging.Logger, _Capture]) -> None:
    logger, handler = captured
    formatter = LogfmtFormatter(journal=True)
    logger.warning("first line\nsecond line")
    assert formatter.format(handler.records[-1]) == r'<4>msg="first line\nsecond line" logger=capsatui.test_journal'
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logger.exception("boom")
    line = formatter.format(handler.records[-1])
    assert "\n" not in line and line.startswith('<3>msg=boom logger=capsatui.test_journal error="Traceback')
    assert r"ValueError: bad\nthing" in line


def test_field_keys_cannot_break_the_line(captured: tuple[logging.Logger, _Capture]) -> None:
    line = _line(captured, LogfmtFormatter(journal=True), logging.INFO, "e", **{"a b=c": 1})
    assert line.startswith("<6>event=e a_b_c=1 logger=")


def test_fields_travel_in_the_record(captured: tuple[logging.Logger, _Capture]) -> None:
    logger, handler = captured
    log_event(logger, logging.INFO, "client_connected", uid=1000)
    record = handler.records[-1]
    assert record.getMessage() == "client_connected"
    assert record.capsa_fields == {"uid": 1000}  # type: ignore[attr-defined]  # set through extra
    assert record.funcName == "test_fields_travel_in_the_record"  # the caller, not log_event


def test_setup_logging_levels_and_replaces_handlers(restore_root: None, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setenv("JOURNAL_STREAM", "8:1")
    setup_logging()
    setup_logging()  # twice: still one handler, one line per event
    log = logging.getLogger("capsatui.serve")
    log_event(log, logging.DEBUG, "hidden")
    log_event(log, logging.INFO, "pool_started", pool="default", size=4)
    assert stream.getvalue() == "<6>event=pool_started pool=default size=4 logger=capsatui.serve\n"
    setup_logging(verbose=True)
    log_event(log, logging.DEBUG, "shown")
    assert stream.getvalue().splitlines()[-1] == "<7>event=shown logger=capsatui.serve"
    assert logging.getLogger().level == logging.DEBUG


def test_priorities_follow_sd_daemon() -> None:
    assert [journal.priority(n) for n in (50, 40, 30, 20, 10, 5)] == [3, 3, 4, 6, 7, 7]
