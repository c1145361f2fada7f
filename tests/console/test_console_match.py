"""Unit and property tests of the sans-IO console matcher, command framing and echo skipper."""
from __future__ import annotations

import re
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.console.match import (
    READY_MARKER,
    CommandFraming,
    EchoSkipper,
    MatchResult,
    PatternMatcher,
    compile_pattern,
    shell_quote,
)
from engine.errors import ConsoleError

BUSYBOX = "/usr/bin/busybox"


def feed_chunks(matcher: PatternMatcher, data: bytes, cuts: list[int]) -> MatchResult | None:
    """Feed ``data`` cut at ``cuts``; the first match (later chunks are not fed)."""
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    for lo, hi in zip(bounds, bounds[1:]):
        found = matcher.feed(data[lo:hi])
        if found is not None:
            return found
    return None


def all_matches(matcher: PatternMatcher, chunks: list[bytes]) -> list[tuple[int, int, int, bytes]]:
    found: list[tuple[int, int, int, bytes]] = []
    for chunk in chunks:
        result = matcher.feed(chunk)
        while result is not None:
            found.append((result.index, result.start, result.end, result.matched))
            result = matcher.feed()
    return found


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(data)), len(data)]
    return [data[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


# -- compile_pattern ------------------------------------------------------------------------------


def test_compile_str_is_utf8_literal() -> None:
    assert compile_pattern("é# ") == "é# ".encode()


def test_compile_str_regex_becomes_bytes_regex() -> None:
    compiled = compile_pattern(re.compile(r"exit (\d+)\n", re.IGNORECASE))
    assert isinstance(compiled, re.Pattern) and isinstance(compiled.pattern, bytes)
    assert compiled.flags & re.IGNORECASE
    assert compiled.search(b"EXIT 3\n")


@pytest.mark.parametrize("bad", ["", b""])
def test_empty_literal_is_refused(bad: str | bytes) -> None:
    with pytest.raises(ValueError):
        compile_pattern(bad)


def test_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError):
        compile_pattern(42)  # type: ignore[arg-type]


def test_single_pattern_instead_of_list_is_refused() -> None:
    with pytest.raises(TypeError):
        PatternMatcher("# ")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PatternMatcher([])


def test_window_must_hold_longest_literal() -> None:
    with pytest.raises(ValueError):
        PatternMatcher([b"x" * 100], window=50)


# -- PatternMatcher -------------------------------------------------------------------------------


def test_literal_in_one_chunk() -> None:
    matcher = PatternMatcher(["# "])
    result = matcher.feed(b"hello\r\ncapsa:/# rest")
    assert result is not None
    assert result.index == 0
    assert result.matched == b"# "
    assert result.before == b"hello\r\ncapsa:/"
    assert (result.start, result.end, result.consumed) == (14, 16, 16)
    assert result.text == "hello\r\ncapsa:/# "
    assert matcher.pending == b"rest"


def test_match_straddling_chunks_byte_by_byte() -> None:
    matcher = PatternMatcher([READY_MARKER])
    data = b"boot...\r\n" + READY_MARKER + b"capsa:/# "
    results = [matcher.feed(bytes([b])) for b in data]
    found = [r for r in results if r is not None]
    assert len(found) == 1
    assert found[0].end == len(b"boot...\r\n") + len(READY_MARKER)
    assert found[0].before == b"boot...\r\n"


def test_earliest_start_wins_then_first_listed() -> None:
    matcher = PatternMatcher(["$ ", "# ", "login: "])
    result = matcher.feed(b"x login: y # z")
    assert result is not None and result.index == 2
    matcher = PatternMatcher([b"ab", b"a"])
    result = matcher.feed(b"zab")
    assert result is not None and (result.index, result.matched) == (0, b"ab")
    matcher = PatternMatcher([b"a", b"ab"])
    result = matcher.feed(b"zab")
    assert result is not None and (result.index, result.matched) == (0, b"a")


def test_consecutive_matches_and_consumed_counts() -> None:
    matcher = PatternMatcher(["# "], offset=100)
    first = matcher.feed(b"a# bb# c")
    assert first is not None and (first.start, first.end, first.consumed) == (101, 103, 3)
    second = matcher.feed()
    assert second is not None and (second.start, second.end, second.consumed) == (105, 107, 4)
    assert second.before == b"bb"
    assert matcher.feed() is None
    assert matcher.consumed_to == 107 and matcher.position == 108


def test_overlapping_literal_partly_consumed_is_not_matched() -> None:
    matcher = PatternMatcher([b"abc", b"cde"])
    assert matcher.feed(b"abcde") is not None
    assert matcher.feed() is None


def test_regex_with_groups_across_chunks() -> None:
    matcher = PatternMatcher([re.compile(rb"exit=(\d+)\r?\n")])
    assert matcher.feed(b"output\r\nexit=4") is None
    result = matcher.feed(b"2\r\nmore")
    assert result is not None
    assert result.groups == (b"42",)
    assert result.matched == b"exit=42\r\n"


def test_str_regex_matches_utf8() -> None:
    matcher = PatternMatcher([re.compile(r"héllo (\w+)!")])
    result = matcher.feed("say héllo world!".encode())
    assert result is not None and result.groups == (b"world",)


def test_memory_is_bounded_by_window() -> None:
    matcher = PatternMatcher([b"END"], window=1024)
    for _ in range(1000):
        assert matcher.feed(b"x" * 997 + b"EN") is None
        assert len(matcher.pending) <= 1024
    result = matcher.feed(b"D")
    assert result is not None
    assert len(result.before) <= 1024
    assert result.consumed == 1000 * 999 + 1
    assert result.end == 1000 * 999 + 1


def test_skip_records_a_gap() -> None:
    matcher = PatternMatcher([b"abc"])
    assert matcher.feed(b"xxab") is None
    matcher.skip(10)  # "ab" + gap + "c" must not match
    assert matcher.feed(b"c") is None
    result = matcher.feed(b"abc")
    assert result is not None and result.start == 4 + 10 + 1
    assert result.consumed == 4 + 10 + 4


_alphabet = st.sampled_from([b"a", b"b", b"#", b" ", b"\r", b"\n", b"\x1b", b"x"])
_data = st.lists(_alphabet, max_size=300).map(b"".join)
_literals = st.lists(st.lists(_alphabet, min_size=1, max_size=5).map(b"".join), min_size=1, max_size=4)
_cuts = st.lists(st.integers(min_value=0, max_value=300), max_size=30)


def _infix_free(patterns: list[bytes]) -> bool:
    """No pattern occurs inside another (else the inner one may legitimately win early)."""
    return not any(a in b for i, a in enumerate(patterns) for j, b in enumerate(patterns) if i != j)


@settings(max_examples=300, deadline=None)
@given(patterns=_literals.filter(_infix_free), data=_data, cuts=_cuts)
def test_literal_matches_do_not_depend_on_chunking(
    patterns: list[bytes], data: bytes, cuts: list[int]
) -> None:
    whole = all_matches(PatternMatcher(patterns), [data])
    chunked = all_matches(PatternMatcher(patterns), split_at(data, cuts))
    assert chunked == whole


@settings(max_examples=300, deadline=None)
@given(patterns=_literals.filter(_infix_free), data=_data)
def test_first_match_agrees_with_naive_search(patterns: list[bytes], data: bytes) -> None:
    result = PatternMatcher(patterns).feed(data)
    candidates = [(data.find(p), i) for i, p in enumerate(patterns) if data.find(p) >= 0]
    if not candidates:
        assert result is None
        return
    start, index = min(candidates)
    assert result is not None
    assert (result.index, result.start) == (index, start)
    assert result.before == data[:start]
    assert result.consumed == start + len(patterns[index])


@settings(max_examples=200, deadline=None)
@given(data=_data, cuts=_cuts, window=st.integers(min_value=5, max_value=40))
def test_small_window_still_finds_literals(data: bytes, cuts: list[int], window: int) -> None:
    patterns = [b"ab#", b"\r\n\x1b"]
    whole = all_matches(PatternMatcher(patterns), [data])
    chunked = all_matches(PatternMatcher(patterns, window=window), split_at(data, cuts))
    assert chunked == whole


def test_contained_pattern_is_reported_as_soon_as_complete() -> None:
    """Streaming trade-off: a match is reported at once, not held back for a longer one."""
    matcher = PatternMatcher([b"#", b"a#a"])
    result = matcher.feed(b"a#")
    assert result is not None and result.index == 0
    whole = PatternMatcher([b"#", b"a#a"]).feed(b"a#a")
    assert whole is not None and whole.index == 1


# Regexes whose matches cannot grow or move with more data: a fixed prefix, then a terminator.
_regexes = st.sampled_from(
    [rb"E[ab]+:\d+\n", rb"x[a-z]*\n", rb"\x1b\[[0-9;]*[A-Za-z]", rb"a{2}b"]
)
_regex_data = st.lists(
    st.sampled_from(
        [b"a", b"b", b"E", b":", b"1", b"7", b"\n", b"x", b"\x1b", b"[", b"m", b";", b"#", b" "]
    ),
    max_size=300,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    regex=_regexes,
    literal=st.lists(st.sampled_from([b"#", b" "]), min_size=1, max_size=3).map(b"".join),
    data=_regex_data,
    cuts=_cuts,
)
def test_terminated_regex_matches_do_not_depend_on_chunking(
    regex: bytes, literal: bytes, data: bytes, cuts: list[int]
) -> None:
    # the literal's bytes never occur inside a regex match, so neither can win early
    patterns: list[bytes | re.Pattern[bytes]] = [re.compile(regex), literal]
    whole = all_matches(PatternMatcher(patterns), [data])
    chunked = all_matches(PatternMatcher(patterns), split_at(data, cuts))
    assert chunked == whole


# -- CommandFraming -------------------------------------------------------------------------------


def stream_for(framing: CommandFraming, output: bytes, code: int, tail: bytes = b"capsa:/# ") -> bytes:
    """What a terminal would show: the (wrapped) echo, then markers around the output."""
    echo = b"".join(framing.lines()).replace(b"\n", b"\r\n")
    wrapped = b"\r\r\n".join(echo[i : i + 80] for i in range(0, len(echo), 80))
    n = framing.nonce.encode()
    return wrapped + b"B" + n + b"\r\n" + output + b"E" + n + b":" + str(code).encode() + b"\r\n" + tail


def test_framing_simple_command() -> None:
    framing = CommandFraming("echo hi", nonce="abc123")
    lines = framing.lines()
    assert len(lines) == 1 and lines[0].endswith(b"\n")
    assert b"Babc123" not in lines[0] and b"Eabc123" not in lines[0]
    data = stream_for(framing, b"hi\r\n", 0)
    outcome = framing.feed(data)
    assert outcome is not None
    assert outcome.output == b"hi\n"
    assert outcome.exit_code == 0
    assert data[outcome.consumed :] == b"capsa:/# "


def test_framing_output_without_trailing_newline() -> None:
    framing = CommandFraming("printf x", nonce="n1")
    outcome = framing.feed(stream_for(framing, b"no newline", 3))
    assert outcome is not None
    assert (outcome.output, outcome.exit_code) == (b"no newline", 3)


def test_framing_ignores_echo_and_old_output() -> None:
    framing = CommandFraming("echo B; echo E", nonce="zz9")
    # An old end marker of another nonce and the echo must not fool the parser.
    data = b"Ezz8:1\r\n" + stream_for(framing, b"B\r\nE\r\n", 0)
    outcome = framing.feed(data)
    assert outcome is not None and outcome.output == b"B\nE\n"


@settings(max_examples=200, deadline=None)
@given(output=st.binary(max_size=400), code=st.integers(0, 255), cuts=_cuts)
def test_framing_chunking_independent(output: bytes, code: int, cuts: list[int]) -> None:
    framing = CommandFraming("some command", nonce="q7")
    # the output of a real program never contains our nonce's markers
    output = output.replace(b"Bq7", b"").replace(b"Eq7", b"")
    data = stream_for(framing, output, code)
    outcome = None
    for chunk in split_at(data, [c * 3 for c in cuts]):
        outcome = framing.feed(chunk) or outcome
    assert outcome is not None
    assert outcome.output == output.replace(b"\r\n", b"\n")
    assert outcome.exit_code == code
    assert data[outcome.consumed :] == b"capsa:/# "


def test_framing_incomplete_end_line_waits() -> None:
    framing = CommandFraming("true", nonce="k")
    assert framing.feed(b"Bk\r\nout\r\nEk:1") is None
    assert framing.started
    outcome = framing.feed(b"2\r\n")
    assert outcome is not None and outcome.exit_code == 12
    assert framing.feed(b"more") is outcome


def test_framing_malformed_end_marker() -> None:
    framing = CommandFraming("true", nonce="k")
    with pytest.raises(ConsoleError):
        framing.feed(b"Bk\r\nEk:oops\r\n")


def test_framing_limits_output_and_counts_drops() -> None:
    framing = CommandFraming("yes", nonce="m", max_output=100)
    framing.feed(b"Bm\r\n")
    for _ in range(50):
        assert framing.feed(b"y\r\n" * 10) is None
    outcome = framing.feed(b"tailEm:0\r\n")
    assert outcome is not None
    assert outcome.output.endswith(b"tail")
    assert len(outcome.output) <= 110
    assert outcome.dropped > 1000
    assert outcome.consumed == 4 + 1500 + 10


def test_framing_skip_counts_lost_output() -> None:
    framing = CommandFraming("x", nonce="g")
    framing.feed(b"Bg\r\nab")
    framing.skip(5)
    outcome = framing.feed(b"cdEg:0\n")
    assert outcome is not None
    assert outcome.output == b"abcd" and outcome.dropped == 5
    assert outcome.consumed == 6 + 5 + 7


@pytest.mark.parametrize(
    "command",
    [
        "echo 'it''s' \"q\" $HOME # comment",
        "a\nb\n",
        "tab\there",
        "x" * 2000,
        "héllo ünïcode",
        "100% \\n back\\slash",
    ],
)
def test_lines_never_type_control_bytes_or_long_lines(command: str) -> None:
    framing = CommandFraming(command, nonce="abc")
    for line in framing.lines():
        assert line.endswith(b"\n")
        assert len(line) <= 700
        assert all(0x20 <= b < 0x7F for b in line[:-1]), line


def _sh(script: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([BUSYBOX, "sh", "-c", script], capture_output=True, timeout=10)


@pytest.mark.parametrize(
    "command",
    [
        "echo 'single' \"double\" | tr a-z A-Z # comment",
        "echo one; echo two && echo three",
        "printf 'line1\\nline2\\n'\necho \"multi\tline\"\n",
        "echo " + "y" * 1500 + " | wc -c",
        "echo 100% \\\\ done; echo héllo",
        "exit_with() { return $1; }; exit_with 42",
    ],
)
def test_generated_lines_run_in_a_real_shell(command: str, tmp_path: object) -> None:
    """The lines, fed to busybox sh non-interactively, give the command's own output."""
    framing = CommandFraming(command, nonce="t1", tmpdir=str(tmp_path))
    expected = _sh(command)
    ran = _sh(b"".join(framing.lines()).decode())
    outcome = framing.feed(ran.stdout)
    assert outcome is not None, ran
    assert outcome.output == expected.stdout
    assert outcome.exit_code == expected.returncode
    assert list(tmp_path.iterdir()) == []  # type: ignore[attr-defined]


def test_shell_quote() -> None:
    assert shell_quote("it's") == "'it'\\''s'"
    text = 'a $b `c` \\ "d" it\'s'
    assert _sh("printf %s " + shell_quote(text)).stdout == text.encode()


# -- EchoSkipper ----------------------------------------------------------------------------------


def test_echo_skipper_handles_wrapping() -> None:
    # busybox ash, 80 columns, 9-column prompt: wrap sequences mid-line and at an exact fit
    line = "echo " + "x" * 150
    echo = ("echo " + "x" * 66).encode() + b"\r\r\n" + b"x" * 80 + b"\r\r\n" + b"x" * 4 + b"\r\n"
    skipper = EchoSkipper(line)
    assert skipper.feed(echo[:50]) is None
    used = skipper.feed(echo[50:] + b"output\r\n")
    assert used == len(echo) - 50
    assert skipper.done
    exact = EchoSkipper("echo " + "x" * 66)
    data = ("echo " + "x" * 66).encode() + b"\r\r\n" + b"x" * 66 + b"\r\n"
    assert exact.feed(data) == len(data) - 68


def test_echo_skipper_ignores_escape_sequences() -> None:
    skipper = EchoSkipper("ls -l")
    data = b"\x1b[6nl\x1b[Ks -\r l\r\nfile\r\n"
    assert skipper.feed(data) == data.index(b"\r\nfile") + 2
